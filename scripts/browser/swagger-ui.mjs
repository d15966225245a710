// Drives the browsable API page of a running Gophermart in headless Chromium: the page lists
// the eight customer operations (GET /api/user/events among them), "Try it out" on register
// registers a customer against the service and shows its 200, and a screenshot of that is
// saved. Then, in the same page with that customer signed in, the live updates of
// GET /api/user/events (./events.mjs): an EventSource sees an order go to PROCESSED through our
// accrual system, and, across a restart of the service, reconnects by itself and receives the
// event it missed while the service was down, once.
//
// Environment: GOPHERMART_URL (e.g. http://127.0.0.1:40123), SCREENSHOT (a .png path),
// ACCRUAL_URL (the accrual system gophermart uses), GOPHERMART_PID (the process to stop for the
// restart), RESTART_REQUEST (the file that tells scripts/test-browser.sh which order to insert
// while the service is down), CHROMIUM (the browser executable, default /usr/bin/chromium).
// The browser's profile is a new folder in TMPDIR, removed at the end.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import { checkLiveUpdates } from './events.mjs';

const base = process.env.GOPHERMART_URL;
const screenshot = process.env.SCREENSHOT;
const accrualUrl = process.env.ACCRUAL_URL;
const gophermartPid = Number(process.env.GOPHERMART_PID);
const restartRequest = process.env.RESTART_REQUEST;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!base || !screenshot || !accrualUrl || !gophermartPid || !restartRequest) {
  console.error('GOPHERMART_URL, SCREENSHOT, ACCRUAL_URL, GOPHERMART_PID and RESTART_REQUEST must be set');
  process.exit(2);
}

const expected = [
  'POST /api/user/register',
  'POST /api/user/login',
  'POST /api/user/orders',
  'GET /api/user/orders',
  'GET /api/user/balance',
  'POST /api/user/balance/withdraw',
  'GET /api/user/withdrawals',
  'GET /api/user/events',
];
const timeout = 20_000;

function fail(message) {
  throw new Error(message);
}

// Playwright adds --headless and --no-sandbox itself (headless, no chromiumSandbox) and takes
// the profile folder as an argument: a fresh one, removed at the end.
const profile = mkdtempSync(join(tmpdir(), 'gophermart-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  chromiumSandbox: false,
  viewport: { width: 1280, height: 900 },
  deviceScaleFactor: 1,
  args: [
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);
  const external = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(base) && !request.url().startsWith('data:')) {
      external.push(request.url());
    }
  });

  await page.goto(`${base}/swagger-ui/`, { waitUntil: 'load' });
  await page.locator('.opblock').first().waitFor();
  const listed = await page.locator('.opblock').evaluateAll((blocks) =>
    blocks.map((block) => {
      const method = block.querySelector('.opblock-summary-method')?.textContent?.trim();
      const path = block.querySelector('.opblock-summary-path')?.getAttribute('data-path');
      return `${method} ${path}`;
    }),
  );
  const missing = expected.filter((operation) => !listed.includes(operation));
  if (missing.length > 0) {
    fail(`the page does not list ${missing.join(', ')}; it lists ${listed.join(', ')}`);
  }
  console.log(`listed ${listed.length} operations, the eight customer ones among them`);

  const register = page.locator('#operations-accounts-register');
  await register.locator('.opblock-summary').click();
  await register.locator('.try-out__btn').click();
  const login = `browser-${Date.now()}`;
  const password = 'correct horse battery staple';
  await register
    .locator('textarea.body-param__text')
    .fill(JSON.stringify({ login, password }, null, 2));
  await register.locator('button.execute').click();
  const status = register.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor();
  const answered = (await status.textContent())?.trim();
  if (!answered?.startsWith('200')) {
    fail(`register answered ${answered} in the page`);
  }
  console.log(`"Try it out" on register: ${answered} shown in the page`);

  const signIn = await page.evaluate(
    async ([login, password]) => {
      const response = await fetch('/api/user/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ login, password }),
      });
      return response.status;
    },
    [login, password],
  );
  if (signIn !== 200) {
    fail(`the customer registered from the page cannot sign in: ${signIn}`);
  }
  console.log(`the customer ${login} exists in the service: login answers ${signIn}`);

  if (external.length > 0) {
    fail(`the page fetched from outside the service: ${external.join(', ')}`);
  }

  // The register operation from its summary down to the live answer, not the whole page.
  const top = await register.boundingBox();
  const answer = await register.locator('.live-responses-table').first().boundingBox();
  if (!top || !answer) {
    fail('the register operation is not on the page');
  }
  // Bounding boxes are relative to the viewport, a full-page clip to the page.
  const scroll = await page.evaluate(() => ({ x: window.scrollX, y: window.scrollY }));
  await page.screenshot({
    path: screenshot,
    fullPage: true,
    clip: {
      x: top.x + scroll.x,
      y: top.y + scroll.y,
      width: top.width,
      height: answer.y + answer.height - top.y + 8,
    },
  });
  console.log(`screenshot: ${screenshot}`);

  await checkLiveUpdates({ page, base, login, accrualUrl, gophermartPid, restartRequest });
  if (external.length > 0) {
    fail(`the page fetched from outside the service: ${external.join(', ')}`);
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

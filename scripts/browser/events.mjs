// Live updates in a page of the service (same origin, so the `token` cookie set by
// POST /api/user/login goes with the request): the page opens
// `new EventSource('/api/user/events')` once and records every message (type, id, data).
//
// 1. The stream starts with `ready`.
// 2. An order registered with the accrual system (a goods rule and the purchase) and then
//    uploaded from the page (POST /api/user/orders, text/plain) arrives as `order` events up to
//    PROCESSED, as GET /api/user/orders lists it, and the credit as a `balance` event.
// 3. The service restarts: this sends SIGTERM to it (GOPHERMART_PID) after writing
//    "LOGIN NUMBER" to RESTART_REQUEST; scripts/test-browser.sh, which waits for it to exit,
//    inserts order NUMBER for LOGIN straight into the database (its trigger writes the event,
//    as another instance's upload would), and starts the service again on the same port and
//    database. The page's EventSource, never reopened by page code, must reconnect by itself
//    with Last-Event-ID, receive that missed `order` event with an id after the last one it
//    had, no second `ready`, and no event twice.
//
// What is seen at each step is printed.

import { writeFileSync } from 'node:fs';

const connecting = 0;
const closed = 2;

/// `digits` followed by its Luhn check digit.
export function luhn(digits) {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let digit = Number(digits[digits.length - 1 - i]);
    if (i % 2 === 0) {
      digit *= 2;
      if (digit > 9) {
        digit -= 9;
      }
    }
    sum += digit;
  }
  return digits + String((10 - (sum % 10)) % 10);
}

/// An event id as the positions it names: what the stream delivered through ("tx-n"), then,
/// dot-separated, the later transactions it delivered ahead of an older one still running.
function cursor(id) {
  if (!/^\d+-\d+(\.\d+-\d+)*$/.test(id ?? '')) {
    throw new Error(`the id ${JSON.stringify(id)} is not a cursor (tx-n, then .tx-n for each ahead)`);
  }
  return id.split('.').map((part) => part.split('-').map(BigInt));
}

/// Whether the stream had delivered more at id `b` than at id `a`: all that `a` covers, and more.
function before(a, b) {
  const [earlier, later] = [cursor(a), cursor(b)];
  const [tx, n] = later[0];
  const covered = ([t, m]) =>
    t < tx || (t === tx && m <= n) || later.slice(1).some(([u, k]) => u === t && m <= k);
  return a !== b && earlier.every(covered);
}

function describe(message) {
  if (message.type === 'order') {
    const order = JSON.parse(message.data);
    const accrual = order.accrual === undefined ? '' : ` accrual ${order.accrual}`;
    return `order ${order.number} ${order.status}${accrual} (id ${message.id})`;
  }
  return `${message.type} ${message.data} (id ${message.id})`;
}

async function post(url, body) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    throw new Error(`${url} answered ${response.status}: ${await response.text()}`);
  }
}

/// The messages the page recorded.
function recorded(page) {
  return page.evaluate(() => window.gophermartEvents.messages);
}

/// Waits until `predicate(messages)` holds for the page's messages; fails early when the
/// page's EventSource gave up (CLOSED) or after `timeout` ms.
async function until(page, what, predicate, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const state = await page.evaluate(() => ({
      messages: window.gophermartEvents.messages,
      readyState: window.gophermartEvents.source.readyState,
    }));
    const found = predicate(state.messages);
    if (found) {
      return found;
    }
    if (state.readyState === closed) {
      const seen = state.messages.map(describe).join('; ');
      throw new Error(`the page's EventSource closed before ${what}; it saw: ${seen}`);
    }
    if (Date.now() > deadline) {
      const seen = state.messages.map(describe).join('; ');
      throw new Error(`no ${what} within ${timeout / 1000} s; the page saw: ${seen}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/// Runs the three steps on `page` (at the service, its customer `login` signed in).
export async function checkLiveUpdates({ page, base, login, accrualUrl, gophermartPid, restartRequest }) {
  // The Last-Event-ID of each request that opened the stream, and how many attempts found no
  // server.
  const opened = [];
  let refused = 0;
  page.on('response', async (response) => {
    if (response.url() === `${base}/api/user/events`) {
      const headers = await response.request().allHeaders();
      opened.push(`${headers['last-event-id'] ?? '(none)'} -> ${response.status()}`);
    }
  });
  page.on('requestfailed', (request) => {
    if (request.url() === `${base}/api/user/events`) {
      refused += 1;
    }
  });

  // 1. The page opens the stream once; nothing in the page ever opens it again.
  await page.evaluate(() => {
    const record = { messages: [], opens: 0, errors: [] };
    const source = new EventSource('/api/user/events');
    record.source = source;
    for (const type of ['ready', 'order', 'balance', 'reset', 'error', 'message']) {
      source.addEventListener(type, (event) => {
        if (event instanceof MessageEvent) {
          record.messages.push({ type: event.type, id: event.lastEventId, data: event.data });
        }
      });
    }
    source.addEventListener('open', () => {
      record.opens += 1;
    });
    source.addEventListener('error', (event) => {
      if (!(event instanceof MessageEvent)) {
        record.errors.push(source.readyState);
      }
    });
    window.gophermartEvents = record;
  });
  const [ready] = await until(page, 'ready', (messages) => messages.length > 0 && messages, 10_000);
  if (ready.type !== 'ready') {
    throw new Error(`the stream began with ${describe(ready)}, not ready`);
  }
  console.log(`EventSource('/api/user/events') opened in the page: ${describe(ready)}`);

  // 2. An order the accrual system knows, uploaded from the page, up to PROCESSED.
  const stamp = String(Date.now());
  const number = luhn(`${stamp}1`);
  await post(`${accrualUrl}/api/goods`, { match: 'Lantern', reward: 100, reward_type: 'pt' });
  await post(`${accrualUrl}/api/orders`, {
    order: number,
    goods: [{ description: 'Camping Lantern', price: 5000 }],
  });
  const uploaded = await page.evaluate(async (number) => {
    const response = await fetch('/api/user/orders', {
      method: 'POST',
      headers: { 'Content-Type': 'text/plain' },
      body: number,
    });
    return response.status;
  }, number);
  if (uploaded !== 202) {
    throw new Error(`uploading ${number} from the page answered ${uploaded}`);
  }
  console.log(`accrual: rule "Lantern" 100 pt and purchase ${number}; uploaded from the page: ${uploaded}`);
  const isOrder = (message, status) => {
    if (message.type !== 'order') {
      return false;
    }
    const order = JSON.parse(message.data);
    return order.number === number && (!status || order.status === status);
  };
  await until(
    page,
    `PROCESSED order ${number} and the credit`,
    (messages) =>
      messages.some((message) => isOrder(message, 'PROCESSED')) &&
      messages.some((message) => message.type === 'balance'),
    60_000,
  );
  let messages = await recorded(page);
  for (const message of messages.slice(1)) {
    console.log(`  seen live: ${describe(message)}`);
  }
  const orderEvents = messages.filter((message) => isOrder(message));
  if (JSON.parse(orderEvents[0].data).status !== 'NEW') {
    throw new Error(`the first event of ${number} is ${describe(orderEvents[0])}, not NEW`);
  }
  const processed = JSON.parse(orderEvents.find((message) => isOrder(message, 'PROCESSED')).data);
  const listed = await page.evaluate(async () => (await fetch('/api/user/orders')).json());
  const inList = listed.find((order) => order.number === number);
  if (JSON.stringify(processed) !== JSON.stringify(inList)) {
    throw new Error(
      `the PROCESSED event ${JSON.stringify(processed)} is not what the list shows: ${JSON.stringify(inList)}`,
    );
  }
  const balance = JSON.parse(messages.filter((message) => message.type === 'balance').at(-1).data);
  if (balance.current !== 100 || balance.withdrawn !== 0) {
    throw new Error(`the balance event says ${JSON.stringify(balance)}, not 100 credited`);
  }
  console.log(`the PROCESSED event is the order as GET /api/user/orders lists it: ${JSON.stringify(inList)}`);

  // 3. A restart, and a change made while the service is down.
  messages = await recorded(page);
  const lastSeen = messages.at(-1).id;
  const missed = luhn(`${stamp}2`);
  writeFileSync(restartRequest, `${login} ${missed}\n`);
  process.kill(gophermartPid, 'SIGTERM');
  console.log(
    `SIGTERM to gophermart (pid ${gophermartPid}); the page's last id: ${lastSeen}; ` +
      `order ${missed} is to be inserted into the database while the service is down`,
  );
  const down = Date.now();
  await page.waitForFunction(() => window.gophermartEvents.errors.length > 0, null, { timeout: 30_000 });
  const afterEnd = await page.evaluate(() => window.gophermartEvents.errors[0]);
  if (afterEnd !== connecting) {
    throw new Error(`after its stream ended the EventSource is in readyState ${afterEnd}, not CONNECTING`);
  }
  console.log(`the stream ended after ${Date.now() - down} ms; the EventSource is CONNECTING (reconnects by itself)`);

  const [resumedWith] = await until(
    page,
    `the missed order ${missed}`,
    (messages) => {
      const found = messages.filter(
        (message) => message.type === 'order' && JSON.parse(message.data).number === missed,
      );
      return found.length > 0 && found;
    },
    90_000,
  );
  const state = await page.evaluate(() => ({
    opens: window.gophermartEvents.opens,
    errors: window.gophermartEvents.errors,
    readyState: window.gophermartEvents.source.readyState,
  }));
  console.log(`after ${Date.now() - down} ms, reconnected by itself: ${describe(resumedWith)}; ` +
    `open events ${state.opens}, error events ${state.errors.length} ` +
    `(readyStates ${state.errors.join(',')}), readyState now ${state.readyState}`);
  console.log(
    `streams opened (Last-Event-ID -> status): ${opened.join(', ')}; ` +
      `attempts that found no server: ${refused}`,
  );

  messages = await recorded(page);
  const missedOrder = JSON.parse(resumedWith.data);
  if (missedOrder.status !== 'NEW') {
    throw new Error(`the missed order arrived as ${describe(resumedWith)}, not NEW`);
  }
  if (!before(lastSeen, resumedWith.id)) {
    throw new Error(`the missed event's id ${resumedWith.id} is not after the last one seen, ${lastSeen}`);
  }
  const ids = messages.map((message) => message.id);
  const repeated = ids.filter((id, index) => ids.indexOf(id) !== index);
  if (repeated.length > 0) {
    throw new Error(`ids seen twice: ${repeated.join(', ')}`);
  }
  for (let i = 1; i < ids.length; i++) {
    if (!before(ids[i - 1], ids[i])) {
      throw new Error(`an id does not cover more than the one before: ${ids[i - 1]} then ${ids[i]}`);
    }
  }
  const payloads = messages.map((message) => `${message.type} ${message.data}`);
  const twice = payloads.filter((payload, index) => payloads.indexOf(payload) !== index);
  if (twice.length > 0) {
    throw new Error(`events delivered twice: ${twice.join('; ')}`);
  }
  const readies = messages.filter((message) => message.type === 'ready').length;
  if (readies !== 1) {
    throw new Error(`${readies} ready events: the reconnected stream started afresh instead of resuming`);
  }
  if (!opened.includes(`${lastSeen} -> 200`)) {
    throw new Error(`no reconnection sent Last-Event-ID ${lastSeen}: ${opened.join(', ')}`);
  }
  if (state.readyState === closed) {
    throw new Error('the EventSource is closed');
  }
  console.log(
    `all ${messages.length} messages each once, each id covering more than the one before, one ready; ` +
      `the missed one's id ${resumedWith.id} is after ${lastSeen}`,
  );
}

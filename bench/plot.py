#!/usr/bin/env python3
"""Draws throughput against concurrency, Gophermart beside its pgbench ceiling, one panel per
endpoint, as a dependency-free SVG.

Usage: bench/plot.py RESULTS.json OUT.svg
"""

import json
import sys
from xml.sax.saxutils import escape

TITLES = {
    "upload": "POST /api/user/orders",
    "balance": "GET /api/user/balance",
    "orders": "GET /api/user/orders",
    "withdraw": "POST /api/user/balance/withdraw",
}
ORDER = ["upload", "balance", "orders", "withdraw"]
PANEL_W, PANEL_H = 420, 270
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 20, 40, 45
COLORS = {"gophermart": "#1f77b4", "ceiling": "#7f7f7f"}


def nice_max(value):
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def panel(name, grid, ceiling, ox, oy):
    parts = []
    levels = sorted({r["clients"] for r in grid} | {r["clients"] for r in ceiling})
    if not levels:
        return parts
    top = nice_max(max([r["rps"] for r in grid] + [r["rps"] for r in ceiling]) * 1.05)
    plot_w = PANEL_W - MARGIN_L - MARGIN_R
    plot_h = PANEL_H - MARGIN_T - MARGIN_B

    def x(clients):
        i = levels.index(clients)
        return ox + MARGIN_L + (plot_w * (i + 0.5) / len(levels))

    def y(value):
        return oy + MARGIN_T + plot_h * (1 - value / top)

    parts.append(f'<text x="{ox + PANEL_W / 2}" y="{oy + 22}" text-anchor="middle" font-weight="bold">{escape(TITLES[name])}</text>')
    for i in range(6):
        value = top * i / 5
        yy = y(value)
        parts.append(f'<line x1="{ox + MARGIN_L}" y1="{yy:.1f}" x2="{ox + PANEL_W - MARGIN_R}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{ox + MARGIN_L - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="11">{value:,.0f}</text>')
    for clients in levels:
        parts.append(f'<text x="{x(clients):.1f}" y="{oy + PANEL_H - MARGIN_B + 16}" text-anchor="middle" font-size="11">{clients}</text>')
    parts.append(f'<text x="{ox + MARGIN_L + plot_w / 2}" y="{oy + PANEL_H - 8}" text-anchor="middle" font-size="11">concurrent clients</text>')
    parts.append(f'<text transform="translate({ox + 14},{oy + MARGIN_T + plot_h / 2}) rotate(-90)" text-anchor="middle" font-size="11">requests / s</text>')
    for series, rows, dash in (("ceiling", ceiling, "6,4"), ("gophermart", grid, "")):
        rows = sorted(rows, key=lambda r: r["clients"])
        if not rows:
            continue
        points = " ".join(f"{x(r['clients']):.1f},{y(r['rps']):.1f}" for r in rows)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{points}" fill="none" stroke="{COLORS[series]}" stroke-width="2"{dash_attr}/>')
        for r in rows:
            parts.append(f'<circle cx="{x(r["clients"]):.1f}" cy="{y(r["rps"]):.1f}" r="3" fill="{COLORS[series]}"/>')
    by_clients = {r["clients"]: r for r in ceiling}
    for r in grid:
        c = by_clients.get(r["clients"])
        if c and c["rps"] > 0:
            parts.append(f'<text x="{x(r["clients"]):.1f}" y="{y(r["rps"]) - 8:.1f}" text-anchor="middle" font-size="10" fill="{COLORS["gophermart"]}">{r["rps"] / c["rps"]:.2f}</text>')
    return parts


def main():
    with open(sys.argv[1]) as f:
        results = json.load(f)
    width, height = PANEL_W * 2, PANEL_H * 2 + 80
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    m = results.get("machine", {})
    parts.append(f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="13">Throughput against concurrency: Gophermart beside the pgbench ceiling ({escape(str(m.get("cores", "?")))} cores, {escape(m.get("date", ""))})</text>')
    for i, name in enumerate(ORDER):
        ox = (i % 2) * PANEL_W
        oy = 30 + (i // 2) * PANEL_H
        parts += panel(name, results.get("grid", {}).get(name, []), results.get("ceiling", {}).get(name, []), ox, oy)
    ly = height - 38
    parts.append(f'<line x1="40" y1="{ly}" x2="70" y2="{ly}" stroke="{COLORS["gophermart"]}" stroke-width="2"/>')
    parts.append(f'<text x="76" y="{ly + 4}">Gophermart over HTTP (wrk); the figure above each point is the ratio to the ceiling</text>')
    parts.append(f'<line x1="40" y1="{ly + 20}" x2="70" y2="{ly + 20}" stroke="{COLORS["ceiling"]}" stroke-width="2" stroke-dasharray="6,4"/>')
    parts.append(f'<text x="76" y="{ly + 24}">pgbench running the endpoint\'s SQL at the same concurrency (the ceiling)</text>')
    parts.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Bar chart of benches/run's main ratios as a hand-written SVG (stdlib only).

  chart.py DATA.tsv OUT.svg TITLE

DATA.tsv: one line per bar, `scenario<TAB>server<TAB>ratio<TAB>target`,
in display order; ratio is the server's rate over nginx's in the same run
("n/a" draws no bar), target is wakegate's goal for that scenario or "".
nginx is the dashed line at 1.0.
"""
import sys
from html import escape

COLORS = {"direct": "#9e9e9e", "haproxy": "#4e79a7", "caddy": "#59a14f", "pingora": "#b07aa1", "wakegate": "#e15759"}
WIDTH, LEFT, RIGHT, TOP = 820, 170, 70, 58
BAR, GAP, GROUP_GAP = 16, 3, 18


def main():
    data, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
    groups = []   # [(scenario, [(server, ratio or None)], target or None)]
    for line in open(data):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3:
            continue
        scen, server, ratio = parts[0], parts[1], parts[2]
        target = parts[3] if len(parts) > 3 and parts[3] else None
        if not groups or groups[-1][0] != scen:
            groups.append((scen, [], None))
        value = None if ratio in ("", "n/a") else float(ratio)
        groups[-1][1].append((server, value))
        if target:
            groups[-1] = (groups[-1][0], groups[-1][1], float(target))
    if not groups:
        return 1
    values = [v for _, bars, _ in groups for _, v in bars if v is not None]
    values += [t for _, _, t in groups if t is not None]
    xmax = max([1.3] + values) * 1.08
    plot_w = WIDTH - LEFT - RIGHT

    def x(v):
        return LEFT + plot_w * v / xmax

    height = TOP + sum(len(b) * (BAR + GAP) + GROUP_GAP for _, b, _ in groups) + 40
    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    # Legend.
    lx = LEFT
    servers = []
    for _, bars, _ in groups:
        for s, _ in bars:
            if s not in servers:
                servers.append(s)
    for s in servers:
        o.append(f'<rect x="{lx}" y="32" width="12" height="12" fill="{COLORS.get(s, "#888")}"/>')
        o.append(f'<text x="{lx + 16}" y="42">{escape(s)}</text>')
        lx += 30 + 7 * len(s)
    o.append(f'<line x1="{lx}" y1="38" x2="{lx + 20}" y2="38" stroke="black" stroke-dasharray="4,3"/>')
    o.append(f'<text x="{lx + 24}" y="42">nginx = 1.0</text>')
    lx += 110
    o.append(f'<line x1="{lx}" y1="32" x2="{lx}" y2="44" stroke="#b00" stroke-width="2"/>')
    o.append(f'<text x="{lx + 5}" y="42">wakegate target</text>')
    # Grid.
    bottom = height - 30
    step = 0.25 if xmax <= 2.5 else 0.5
    v = 0.0
    while v <= xmax:
        o.append(f'<line x1="{x(v):.1f}" y1="{TOP - 6}" x2="{x(v):.1f}" y2="{bottom}" stroke="#eee"/>')
        o.append(f'<text x="{x(v):.1f}" y="{bottom + 14}" text-anchor="middle" fill="#555">{v:g}×</text>')
        v += step
    o.append(f'<line x1="{x(1.0):.1f}" y1="{TOP - 6}" x2="{x(1.0):.1f}" y2="{bottom}" stroke="black" stroke-dasharray="4,3"/>')
    # Bars.
    y = TOP
    for scen, bars, target in groups:
        gh = len(bars) * (BAR + GAP)
        words, lines, cur = scen.split(), [], ""
        for w in words:
            if len(cur) + len(w) > 24 and cur:
                lines.append(cur)
                cur = w
            else:
                cur = f"{cur} {w}".strip()
        lines.append(cur)
        ty = y + gh / 2 - (len(lines) - 1) * 7 + 4
        for i, ln in enumerate(lines):
            o.append(f'<text x="{LEFT - 8}" y="{ty + i * 14:.1f}" text-anchor="end">{escape(ln)}</text>')
        for s, val in bars:
            if s == "wakegate" and target is not None:   # under the value label
                o.append(f'<line x1="{x(target):.1f}" y1="{y - 2}" x2="{x(target):.1f}" y2="{y + BAR + 2}" '
                         f'stroke="#b00" stroke-width="2"><title>target {target:g}×</title></line>')
            if val is None:
                o.append(f'<text x="{LEFT + 4}" y="{y + BAR - 4}" fill="#555">{escape(s)}: n/a</text>')
            else:
                o.append(f'<rect x="{LEFT}" y="{y}" width="{max(1.0, x(val) - LEFT):.1f}" height="{BAR}" '
                         f'fill="{COLORS.get(s, "#888")}"><title>{escape(s)}: {val:.2f}× nginx</title></rect>')
                o.append(f'<text x="{x(val) + 4:.1f}" y="{y + BAR - 4}" stroke="white" stroke-width="3" '
                         f'paint-order="stroke">{val:.2f}</text>')
            y += BAR + GAP
        y += GROUP_GAP
    o.append(f'<line x1="{LEFT}" y1="{TOP - 6}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>')
    o.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(o) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

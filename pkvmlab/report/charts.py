"""Inline SVG line charts for the trend view: no JavaScript, no external assets.

A lab page is mailed, archived and opened from CI artefacts offline, so the
charts are plain SVG inside the HTML; each point carries a ``<title>`` that a
browser shows on hover (run, value).
"""

from html import escape

PALETTE = ("#1f6fb2", "#d9534f", "#2e8b57", "#8e44ad", "#e67e22", "#16a085", "#7f8c8d", "#c0392b")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 560, 190, 48, 40, 14, 24


def line_chart(title, series, y_label, y_max=None, y_format="{:.2f}"):
    """An SVG chart of ``series``: {name: [(x_label, y or None, hover text)]}, x = position in time order.

    All series share the x positions of the union of their x labels (sorted), so
    two kernels on the same board line up by run.
    """
    xs = sorted({x for points in series.values() for x, _, _ in points})
    values = [y for points in series.values() for _, y, _ in points if y is not None]
    if not xs or not values:
        return f'<p class="empty">{escape(title)}: no data yet</p>'
    top = y_max if y_max is not None else max(values) * 1.15 or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x):
        return LEFT + (xs.index(x) * plot_w / (len(xs) - 1) if len(xs) > 1 else plot_w / 2)

    def py(y):
        return TOP + plot_h - (y / top) * plot_h

    parts = [f'<svg class="plot" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#888"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#888"/>']
    for fraction in (0, 0.5, 1):
        y = top * fraction
        parts.append(f'<text x="{LEFT - 4}" y="{py(y) + 4:.1f}" text-anchor="end" class="tick">'
                     f"{escape(y_format.format(y))}</text>")
    parts.append(f'<text x="4" y="{TOP + 4}" class="tick">{escape(y_label)}</text>')
    for x in (xs[0], xs[-1]) if len(xs) > 1 else (xs[0],):
        parts.append(f'<text x="{px(x):.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">'
                     f"{escape(_short(x))}</text>")
    legend = []
    for number, (name, points) in enumerate(sorted(series.items())):
        colour = PALETTE[number % len(PALETTE)]
        coords = [(px(x), py(y), text) for x, y, text in sorted(points, key=lambda p: p[0]) if y is not None]
        if len(coords) > 1:
            path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _ in coords)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for cx, cy, text in coords:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{colour}" '
                         f'data-series="{escape(name)}">'
                         f"<title>{escape(text)}</title></circle>")
        legend.append(f'<li><span style="color:{colour}">&#9632;</span> {escape(name)}</li>')
    parts.append("</svg>")
    return (f'<figure class="chart" data-chart="{escape(title)}">{"".join(parts)}'
            f'<ul class="legend">{"".join(legend)}</ul></figure>')



def _short(x):
    """``2026-11-20T08:00:00Z`` as ``11-20 08:00``: enough to place a run, short enough to fit."""
    return x[5:16].replace("T", " ") if len(x) >= 16 and x[4] == "-" else x[:16]

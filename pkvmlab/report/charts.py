"""Line charts for the trend view, as geometry: the SVG itself is written by ``templates/chart.svg.j2``.

A lab page is mailed, archived and opened from CI artefacts offline, so the charts are plain inline
SVG (no JavaScript); each point carries a hover text (run, value).  Here only the numbers are worked
out, so a chart can be tested without parsing SVG.
"""

from dataclasses import dataclass, field

PALETTE = ("#1f6fb2", "#d9534f", "#2e8b57", "#8e44ad", "#e67e22", "#16a085", "#7f8c8d", "#c0392b")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 560, 190, 48, 40, 14, 24


@dataclass
class Series:
    name: str
    colour: str
    points: list            # [(x px, y px, hover text)]

    @property
    def polyline(self):
        return " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in self.points) if len(self.points) > 1 else ""


@dataclass
class Chart:
    title: str
    y_label: str
    ticks: list = field(default_factory=list)     # [(y px, text)]
    x_ticks: list = field(default_factory=list)   # [(x px, text)]
    series: list = field(default_factory=list)    # [Series]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    bottom_y: int = HEIGHT - BOTTOM
    right_x: int = WIDTH - RIGHT

    @property
    def empty(self):
        return not self.series


def line_chart(title, series, y_label, y_max=None, y_format="{:.2f}"):
    """A ``Chart`` of ``series``: {name: [(x_label, y or None, hover text)]}, x = position in time order.

    All series share the x positions of the union of their x labels (sorted), so two kernels on the
    same board line up by run.  A chart without values is ``empty``.
    """
    chart = Chart(title=title, y_label=y_label)
    xs = sorted({x for points in series.values() for x, _, _ in points})
    values = [y for points in series.values() for _, y, _ in points if y is not None]
    if not xs or not values:
        return chart
    top = y_max if y_max is not None else max(values) * 1.15 or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x):
        return LEFT + (xs.index(x) * plot_w / (len(xs) - 1) if len(xs) > 1 else plot_w / 2)

    def py(y):
        return TOP + plot_h - (y / top) * plot_h

    chart.ticks = [(py(top * f) + 4, y_format.format(top * f)) for f in (0, 0.5, 1)]
    chart.x_ticks = [(px(x), _short(x)) for x in ((xs[0], xs[-1]) if len(xs) > 1 else (xs[0],))]
    for number, (name, points) in enumerate(sorted(series.items())):
        coords = [(px(x), py(y), text) for x, y, text in sorted(points, key=lambda p: p[0]) if y is not None]
        chart.series.append(Series(name=name, colour=PALETTE[number % len(PALETTE)], points=coords))
    return chart


def _short(x):
    """``2026-11-20T08:00:00Z`` as ``11-20 08:00``: enough to place a run, short enough to fit."""
    return x[5:16].replace("T", " ") if len(x) >= 16 and x[4] == "-" else x[:16]

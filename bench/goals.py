"""The targets the benchmark is held to, checked against one run's results, as a table and an SVG chart.

Each goal is a same-run figure (mostly a ratio: serialmuxd ÷ a baseline, or one serialmuxd path ÷
another) and a limit.  ``score`` puts them on one scale: the measured figure as a fraction of what the
goal allows (``value ÷ limit`` for "at most", ``limit ÷ value`` for "at least"), so 1.0 is the line and
anything at or below it meets the goal.  The chart is hand-written SVG (no plotting dependency): one bar per
goal, green when met, red when not, the measured figure and the limit written beside it.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Results = Mapping[str, Mapping[str, Mapping[str, Any]]]


def _get(results: Results, scenario: str, target: str, key: str) -> float | None:
    entry = results.get(scenario, {}).get(target)
    if not entry or entry.get("status") != "ok":
        return None
    value = entry.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


@dataclass(frozen=True, slots=True)
class Goal:
    label: str
    measure: Callable[[Results], float | None]
    limit: float
    at_least: bool  # True: the figure must be >= limit; False: <= limit
    unit: str = "x"  # "x" for a ratio, else the figure's unit

    def value(self, results: Results) -> float | None:
        return self.measure(results)

    def score(self, value: float) -> float:
        """The figure as a fraction of what the goal allows: <= 1 meets it."""
        if self.at_least:
            return self.limit / value if value > 0 else float("inf")
        if self.limit == 0:
            return 0.0 if value == 0 else float("inf")
        return value / self.limit

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit

    def text(self, value: float | None) -> str:
        sign = "≥" if self.at_least else "≤"
        shown = "not measured" if value is None else _fmt(value, self.unit)
        return f"{shown} (goal {sign} {_fmt(self.limit, self.unit)})"


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:.2f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def _smd(scenario: str, key: str) -> Callable[[Results], float | None]:
    return lambda r: _get(r, scenario, "serialmuxd", key)


def _vs(
    scenario: str, key: str, base: str, base_scenario: str | None = None
) -> Callable[[Results], float | None]:
    return lambda r: _ratio(
        _get(r, scenario, "serialmuxd", key), _get(r, base_scenario or scenario, base, key)
    )


def _slow_ok(r: Results) -> float | None:
    got, slow = (
        _get(r, "fanout_ws_100", "serialmuxd", "slow_resynced_exactly"),
        _get(r, "fanout_ws_100", "serialmuxd", "slow_viewers"),
    )
    entry = r.get("fanout_ws_100", {}).get("serialmuxd", {})
    if got is None or not slow:
        return None
    return got / slow if entry.get("exact") else 0.0


GOALS = (
    Goal("Keystroke RTT p50, raw TCP ÷ socat", _vs("rtt", "p50_us", "socat"), 1.0, False),
    Goal("Keystroke RTT p99, raw TCP ÷ socat", _vs("rtt", "p99_us", "socat"), 1.0, False),
    Goal("Keystroke RTT p50, telnet ÷ socat (raw)", _vs("rtt_telnet", "p50_us", "socat", "rtt"), 1.0, False),
    Goal("Keystroke RTT p99, telnet ÷ socat (raw)", _vs("rtt_telnet", "p99_us", "socat", "rtt"), 1.0, False),
    Goal(
        "WebSocket throughput ÷ raw TCP (serialmuxd)",
        lambda r: _ratio(
            _get(r, "throughput_ws", "serialmuxd", "mib_s"), _get(r, "throughput", "serialmuxd", "mib_s")
        ),
        0.8,
        True,
    ),
    Goal(
        "WebSocket RTT p50 ÷ raw TCP (serialmuxd)",
        lambda r: _ratio(_get(r, "rtt_ws", "serialmuxd", "p50_us"), _get(r, "rtt", "serialmuxd", "p50_us")),
        1.5,
        False,
    ),
    Goal(
        "WebSocket RTT p99 ÷ raw TCP (serialmuxd)",
        lambda r: _ratio(_get(r, "rtt_ws", "serialmuxd", "p99_us"), _get(r, "rtt", "serialmuxd", "p99_us")),
        1.5,
        False,
    ),
    Goal("100 WebSocket viewers: slow ones resynced exactly (share)", _slow_ok, 1.0, True),
    Goal("Throughput ÷ ser2net tuned", _vs("throughput", "mib_s", "ser2net"), 1.3, True),
    Goal("Relay CPU per MiB ÷ ser2net tuned", _vs("throughput", "cpu_s_per_mib", "ser2net"), 1.0, False),
    Goal("Consoles: start → READY", _smd("consoles", "ready_s"), 5.0, False, "s"),
    Goal("Consoles: RSS", _smd("consoles", "rss_mib"), 400.0, False, "MiB"),
    Goal(
        "Consoles: idle CPU (resolution: one clock tick)", _smd("consoles", "idle_cpu_pct"), 0.0, False, "%"
    ),
)


def markdown(results: Results) -> str:
    lines = ["| goal | measured (same run) | met |", "|---|---:|:---:|"]
    for goal in GOALS:
        value = goal.value(results)
        met = "" if value is None else ("yes" if goal.met(value) else "**no**")
        lines.append(f"| {goal.label} | {goal.text(value)} | {met} |")
    return "\n".join(lines) + "\n"


def svg(results: Results, title: str) -> str:
    """One horizontal bar per goal on the common scale (the goal's limit at 1.0; clipped at 2.0)."""
    label_w, bar_w, row_h, top, scale_max = 430, 420, 26, 58, 2.0
    rows = [(goal, goal.value(results)) for goal in GOALS]
    height = top + row_h * len(rows) + 40
    width = label_w + bar_w + 250
    x0 = label_w

    def x(score: float) -> float:
        return x0 + bar_w * min(score, scale_max) / scale_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        '<text x="10" y="38" fill="#555">Each bar: the measured figure as a share of what its goal allows '
        "(at 1.0 = exactly the goal; shorter is better; clipped at 2.0)</text>",
    ]
    for tick in (0.0, 0.5, 1.0, 1.5, 2.0):
        out.append(
            f'<line x1="{x(tick):.1f}" y1="{top - 6}" x2="{x(tick):.1f}" y2="{top + row_h * len(rows)}" '
            f'stroke="{"#222" if tick == 1.0 else "#ddd"}" stroke-width="{2 if tick == 1.0 else 1}"/>'
        )
        out.append(
            f'<text x="{x(tick):.1f}" y="{top + row_h * len(rows) + 16}" text-anchor="middle" '
            f'fill="#555">{tick:g}</text>'
        )
    out.append(f'<text x="{x(1.0):.1f}" y="{top + row_h * len(rows) + 32}" text-anchor="middle">goal</text>')
    for i, (goal, value) in enumerate(rows):
        y = top + i * row_h
        out.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{html.escape(goal.label)}</text>')
        if value is None:
            out.append(f'<text x="{x0 + 4}" y="{y + 16}" fill="#888">not measured in this run</text>')
            continue
        score = goal.score(value)
        colour = "#2e7d32" if goal.met(value) else "#c62828"
        end = x(score)
        bar = max(end - x0, 1.5)
        out.append(f'<rect x="{x0}" y="{y + 4}" width="{bar:.1f}" height="{row_h - 8}" fill="{colour}"/>')
        if score > scale_max:
            out.append(f'<text x="{end - 4:.1f}" y="{y + 16}" text-anchor="end" fill="white">»</text>')
        out.append(
            f'<text x="{x0 + bar_w + 8}" y="{y + 16}" fill="{colour}">{html.escape(goal.text(value))}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"

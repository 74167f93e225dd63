"""A self-contained HTML page picturing a check result, after Porcupine's visualizer.

For a violation it draws the shortest failing prefix of the failing part:
one lane per client, one bar per operation from its call to its return (an
operation that never returned runs to the right edge, hatched). Bars in the
longest partial linearization the search found are green and numbered in
that order; the culprit, the operation whose return leaves no valid order,
is red, and a red line marks that moment. Hovering a bar shows its details.
The time axis is by rank, not by clock: each distinct call or return time
gets one column, so bursts and gaps are equally readable. No scripts, no
external files: the SVG is inline.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from html import escape
from typing import Any

from ..history import Operation
from ._result import Outcome, Violation

__all__ = ["render"]

_LANE_HEIGHT = 26
_BAR_HEIGHT = 18
_LEFT = 120
_TOP = 34
_CHAR_WIDTH = 6.6
_MARGIN_RIGHT = 260  # room for the culprit's label
_BARS_MAX = 2_000  # beyond this the page would be unreadable anyway

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 8px; }
.verdict-ok { color: #176f2c; } .verdict-bad { color: #b3261e; }
.verdict-unknown { color: #8a5a00; }
table { border-collapse: collapse; margin-top: 12px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-size: 13px; }
th { background: #f4f4f4; }
svg text { font: 11px ui-monospace, monospace; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 8px; border-radius: 3px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _rank_axis(ops: Sequence[Operation]) -> tuple[dict[float, int], int]:
    times = sorted(
        {op.call_time for op in ops} | {op.return_time for op in ops if op.return_time is not None}
    )
    return {t: i for i, t in enumerate(times)}, len(times)


def _rows(ops: Sequence[Operation], end: int, rank: dict[float, int]) -> dict[int, tuple[int, int]]:
    """(lane, sub-row) of each op: a client's ops share a lane; a sub-row is
    added only where a never-returned op overlaps the client's next op."""
    lanes: dict[Hashable, list[int]] = {}  # client -> end rank of each sub-row
    order: dict[Hashable, int] = {}
    placed: dict[int, tuple[Hashable, int]] = {}
    for op in sorted(ops, key=lambda o: o.call_time):
        start = rank[op.call_time]
        stop = end if op.return_time is None else rank[op.return_time]
        rows = lanes.setdefault(op.client, [])
        order.setdefault(op.client, len(order))
        for index, busy_until in enumerate(rows):
            if busy_until < start:
                rows[index] = stop
                placed[op.id] = (op.client, index)
                break
        else:
            rows.append(stop)
            placed[op.id] = (op.client, len(rows) - 1)
    # Lanes stack in order of first call; each takes as many rows as it needs.
    offsets: dict[Hashable, int] = {}
    row = 0
    for client in sorted(order, key=order.__getitem__):
        offsets[client] = row
        row += len(lanes[client])
    return {op_id: (offsets[c], sub) for op_id, (c, sub) in placed.items()}


def _svg(violation: Violation, model_text: Any) -> str:
    ops = list(violation.operations)
    if len(ops) > _BARS_MAX:
        # Keep the latest calls (nearest the violation), and the culprit.
        ops = sorted(ops, key=lambda o: o.call_time)[-_BARS_MAX:]
        if violation.culprit not in ops:
            ops.append(violation.culprit)
    rank, columns = _rank_axis(ops)
    end = columns  # never-returned ops run one column past the last event
    unit = max(18.0, min(60.0, 1400.0 / max(columns, 1)))
    rows = _rows(ops, end, rank)
    lane_rows = 1 + max((lane + sub for lane, sub in rows.values()), default=0)
    width = _LEFT + unit * (end + 1) + 20 + _MARGIN_RIGHT
    height = _TOP + lane_rows * _LANE_HEIGHT + 30
    order_of = {violation.operations[i].id: n for n, i in enumerate(violation.longest, 1)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern></defs>',
    ]
    seen_lanes: set[int] = set()
    for op in ops:
        lane, sub = rows[op.id]
        if sub == 0 and lane not in seen_lanes:
            seen_lanes.add(lane)
            y = _TOP + lane * _LANE_HEIGHT + _BAR_HEIGHT - 4
            parts.append(f'<text x="8" y="{y}">client {escape(str(op.client))[:14]}</text>')
    for op in ops:
        lane, sub = rows[op.id]
        x0 = _LEFT + rank[op.call_time] * unit
        x1 = _LEFT + (end if op.return_time is None else rank[op.return_time]) * unit + unit * 0.8
        y = _TOP + (lane + sub) * _LANE_HEIGHT
        text = model_text(op.input, op.output)
        if op.id == violation.culprit.id:
            fill, stroke, label = "#f6c9c5", "#b3261e", f"✗ {text}"
        elif op.id in order_of:
            fill, stroke, label = "#cdebd3", "#176f2c", f"{order_of[op.id]}. {text}"
        elif op.return_time is None:
            fill, stroke, label = "url(#hatch)", "#999", text
        else:
            fill, stroke, label = "#e3e7ee", "#7d8797", text
        fits = max(0, int((x1 - x0 - 6) / _CHAR_WIDTH))
        shown = label if len(label) <= fits else label[: max(0, fits - 1)] + "…"
        if op.id == violation.culprit.id:
            shown = label  # the culprit's text runs past its bar, into the margin
        returned = "never returned" if op.return_time is None else f"returned {op.return_time:g}"
        tip = f"client {op.client}: {text}\ncalled {op.call_time:g}, {returned}"
        if op.id in order_of:
            tip += f"\nlinearized #{order_of[op.id]}"
        parts.append(
            f'<g><title>{escape(tip)}</title><rect x="{x0:.1f}" y="{y}" width="{x1 - x0:.1f}" '
            f'height="{_BAR_HEIGHT}" rx="3" fill="{fill}" stroke="{stroke}"/>'
            f'<text x="{x0 + 3:.1f}" y="{y + 13}">{escape(shown)}</text></g>'
        )
    line_x = _LEFT + rank[violation.time] * unit + unit * 0.8
    parts.append(
        f'<line x1="{line_x:.1f}" y1="{_TOP - 14}" x2="{line_x:.1f}" y2="{height - 8}" '
        'stroke="#b3261e" stroke-width="2" stroke-dasharray="5 3"/>'
        f'<text x="{line_x - 4:.1f}" y="{_TOP - 18}" fill="#b3261e" text-anchor="end">'
        "no linearization from here</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _steps_table(violation: Violation, model_text: Any) -> str:
    if not violation.longest:
        return ""
    rows = []
    for n, (op_index, state) in enumerate(zip(violation.longest, violation.states, strict=True), 1):
        op = violation.operations[op_index]
        rows.append(
            f"<tr><td>{n}</td><td>{escape(str(op.client))}</td>"
            f"<td><code>{escape(model_text(op.input, op.output))}</code></td>"
            f"<td><code>{escape(violation.model.state_text(state))}</code></td></tr>"
        )
    return (
        "<h2>Longest partial linearization found</h2>"
        "<table><tr><th>#</th><th>client</th><th>operation</th><th>state after</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render(result: Outcome, title: str | None = None) -> str:
    """The page for ``result``: summary, and for a violation the picture."""
    source = result.history.source or "history"
    heading = title or f"Linearizability check: {source}"
    css = {"linearizable": "ok", "not linearizable": "bad"}.get(result.verdict.value, "unknown")
    summary = (
        f"<p>{len(result.history):,} operations, model <code>{escape(result.model.name)}</code>, "
        f"{result.partitions:,} partition(s), {result.partitions_checked:,} checked, "
        f"{result.elapsed_s:.3f} s.</p>"
    )
    body = [
        f"<h1>{escape(heading)}</h1>",
        f'<p class="verdict-{css}"><strong>{escape(result.verdict.value)}</strong></p>',
        summary,
        *[f"<p>{escape(note)}</p>" for note in result.notes],
    ]
    violation = result.violation
    if violation is not None:
        model = result.model
        culprit = violation.culprit
        body += [
            "<h2>Shortest failing prefix</h2>",
            f"<p>The failing part has {violation.partition_size:,} operations; its first "
            f"{len(violation.operations):,} (up to time {violation.time:g}) already have no "
            f"valid order. The culprit is client {escape(str(culprit.client))}'s "
            f"<code>{escape(model.operation_text(culprit.input, culprit.output))}</code>: "
            "until it returned, an order existed.</p>",
            '<p class="legend"><span style="background:#cdebd3">linearized (in order)</span>'
            '<span style="background:#f6c9c5">culprit</span>'
            '<span style="background:#e3e7ee">not placed</span>'
            '<span style="background:#eee">never returned (unknown)</span></p>',
            _svg(violation, model.operation_text),
        ]
        if len(violation.operations) > _BARS_MAX:
            body.append(f"<p>(only the {_BARS_MAX:,} latest-called operations are drawn)</p>")
        body.append(_steps_table(violation, model.operation_text))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(heading)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )

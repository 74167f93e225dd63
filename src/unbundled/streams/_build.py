"""Building a task's operators from a flow's nodes."""

from __future__ import annotations

from ._flow import Flow
from ._ops import (
    Ctx,
    FilterOp,
    FlatMapOp,
    KeyByOp,
    LateOp,
    MapOp,
    Op,
    SinkOp,
    StatefulOp,
    StateOp,
)
from ._window_ops import window_op


def build(flow: Flow, ctx: Ctx) -> tuple[Op, list[StatefulOp]]:
    """The operators of ``flow`` for one task: the source operator, and the
    stateful ones in node order (their state is stored under the node id)."""
    kinds: dict[str, type[Op]] = {
        "map": MapOp,
        "filter": FilterOp,
        "flat_map": FlatMapOp,
        "key_by": KeyByOp,
        "sink": SinkOp,
        "state": StateOp,
        "late": LateOp,
        "source": Op,
    }
    ops: dict[int, Op] = {}
    for node in flow.nodes:
        op = window_op(node, ctx) if node.kind == "window" else kinds[node.kind](node, ctx)
        ops[node.id] = op
        if node.parent is not None:
            parent = ops[node.parent]
            (parent.late if node.side else parent.children).append(op)
    source = next(op for op in ops.values() if op.node.kind == "source")
    stateful = [op for op in ops.values() if isinstance(op, StatefulOp)]
    return source, stateful

"""Building a task's operators from a flow's nodes."""

from __future__ import annotations

from ._flow import Flow, Node
from ._join import JoinOp, WindowJoinOp
from ._merge import MergeOp, RepartitionOp
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


def build(flow: Flow, ctx: Ctx, segment: int = 0, sources: int = 1) -> tuple[Op, list[StatefulOp]]:
    """The operators of ``flow``'s ``segment`` for one task: the root
    operator (the source's, or the merge of ``sources`` upstream partitions)
    and the stateful ones in node order (their state is stored under the node id)."""
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
    root: Op | None = None
    if segment:
        root = MergeOp(Node(segment, "merge", None, {}, False, segment), ctx, sources)
    ops: dict[int, Op] = {}
    for node in flow.nodes:
        if node.segment != segment:
            continue
        if node.kind == "window":
            op: Op = window_op(node, ctx)
        elif node.kind == "join":
            op = JoinOp(node, ctx)
        elif node.kind == "wjoin":
            op = WindowJoinOp(node, ctx)
        elif node.kind == "key_by" and node.args["repartition"]:
            op = RepartitionOp(node, ctx, flow.watermark_every_ms)
        else:
            op = kinds[node.kind](node, ctx)
        ops[node.id] = op
        if node.kind == "source":
            root = op
        elif node.parent is not None:
            parent = ops.get(node.parent, root)
            assert parent is not None
            (parent.late if node.side else parent.children).append(op)
    assert root is not None
    for op in (*reversed(ops.values()), root):  # children come after their parents
        op.wm_children = [c for c in (*op.children, *op.late) if c.wm_children or _needs_wm(c)]
    stateful = [op for op in (root, *ops.values()) if isinstance(op, StatefulOp)]
    return root, stateful


def _needs_wm(op: Op) -> bool:
    return op.node.kind in ("window", "join", "wjoin") or isinstance(op, RepartitionOp)

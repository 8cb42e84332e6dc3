"""``--prune RATIO`` (global L2 by default) and its options: the PruneStructured pass."""

from __future__ import annotations

import argparse

ORDER = 10
CRITERIA = ("l2", "l1", "bn", "activation")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--prune", type=float, metavar="RATIO",
                       help="remove this fraction [0, 1) of channels, FFN neurons and attention "
                            "heads, ranked across layers (coupled layers shrink together)")
    group.add_argument("--prune-criterion", choices=CRITERIA[:3], default="l2",
                       help="importance of a channel: weight L2/L1 norm over its whole group, or "
                            "per-channel scale factors (bn); default l2")
    group.add_argument("--prune-exclude", type=_names, default=(), metavar="LAYER,...",
                       help="layers never pruned (names as in the report: conv2d0, matmul3)")
    group.add_argument("--prune-round-to", type=int, default=8, metavar="N",
                       help="round kept channels per layer to a multiple of N (default 8)")


def configs(args: argparse.Namespace) -> list:
    """A PruneConfig when ``--prune`` is given."""
    ratio = getattr(args, "prune", None)
    if ratio is None:
        return []
    from tvmcompress.passes.prune_structured import PruneConfig

    return [PruneConfig(ratio=ratio, criterion=getattr(args, "prune_criterion", "l2"),
                        exclude=getattr(args, "prune_exclude", ()),
                        round_to=getattr(args, "prune_round_to", 8))]

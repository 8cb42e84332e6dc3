"""``--lowrank ENERGY`` and explicit-rank options: the LowRankSplit pass from the CLI."""

from __future__ import annotations

import argparse

ORDER = 20


def _rank(text: str) -> int | dict[str, int]:
    """``64`` (every layer) or ``matmul0=32,conv2d1=16`` (per layer; others stay whole)."""
    try:
        if "=" not in text:
            return int(text)
        pairs = (item.split("=", 1) for item in text.split(","))
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--lowrank-rank {text!r} is not N or LAYER=N,LAYER=N (e.g. matmul0=32)") from err


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--lowrank", type=float, metavar="ENERGY",
                       help="split matmul/conv weights by truncated SVD keeping this fraction "
                            "(0, 1] of each layer's energy, only where the split saves MACs")
    group.add_argument("--lowrank-rank", type=_rank, metavar="N|LAYER=N,...",
                       help="split with an explicit rank, for all layers or per layer name "
                            "(names as in the report: matmul0, conv2d3)")
    group.add_argument("--lowrank-rank-ratio", type=float, metavar="R",
                       help="split with rank = R x each layer's full rank")
    group.add_argument("--lowrank-budget", type=float, metavar="FRACTION",
                       help="choose ranks for the whole model to fit this fraction of its MACs")
    group.add_argument("--lowrank-conv-mode", choices=("auto", "channel", "spatial"),
                       default="auto", help="how convs are split (default: auto, fewer MACs)")


def configs(args: argparse.Namespace) -> list:
    """A LowRankConfig when any rank-selection flag is given (the config rejects two)."""
    chosen = {"energy": getattr(args, "lowrank", None),
              "rank": getattr(args, "lowrank_rank", None),
              "rank_ratio": getattr(args, "lowrank_rank_ratio", None),
              "macs_budget": getattr(args, "lowrank_budget", None)}
    if all(v is None for v in chosen.values()):
        return []
    from tvmcompress.passes.lowrank import LowRankConfig

    return [LowRankConfig(**{k: v for k, v in chosen.items() if v is not None},
                          conv_mode=getattr(args, "lowrank_conv_mode", "auto"))]

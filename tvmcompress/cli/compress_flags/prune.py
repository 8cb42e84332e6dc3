"""``--prune RATIO`` (global L2 by default) and its options: the PruneStructured pass."""

from __future__ import annotations

import argparse

ORDER = 10
CRITERIA = ("l2", "l1", "bn", "activation", "taylor")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--prune", type=float, metavar="RATIO",
                       help="remove this fraction [0, 1) of channels, FFN neurons and attention "
                            "heads, ranked across layers (coupled layers shrink together)")
    group.add_argument("--prune-criterion", choices=CRITERIA, default="l2",
                       help="importance of a channel: weight L2/L1 norm over its whole group, "
                            "per-channel scale factors (bn), mean |activation| or first-order "
                            "Taylor |sum weight x gradient| on --prune-calib data; default l2")
    group.add_argument("--prune-calib", metavar="FILE.npz",
                       help="calibration inputs (arrays keyed by input name, samples on axis 0) "
                            "for --prune-criterion activation or taylor")
    group.add_argument("--prune-exclude", type=_names, default=(), metavar="LAYER,...",
                       help="layers never pruned (names as in the report: conv2d0, matmul3)")
    group.add_argument("--prune-round-to", type=int, default=8, metavar="N",
                       help="round kept channels per layer to a multiple of N (default 8)")


def configs(args: argparse.Namespace) -> list:
    """A PruneConfig when ``--prune`` is given."""
    ratio = getattr(args, "prune", None)
    if ratio is None:
        return []
    from tvmcompress.errors import ConfigError
    from tvmcompress.passes.prune_structured import PruneConfig

    criterion, calib = getattr(args, "prune_criterion", "l2"), getattr(args, "prune_calib", None)
    if (criterion in ("activation", "taylor")) != (calib is not None):
        raise ConfigError(f"--prune-calib is needed by, and only used by, --prune-criterion "
                          f"activation/taylor; got --prune-criterion {criterion} with "
                          f"--prune-calib {calib}")
    return [PruneConfig(ratio=ratio, criterion=criterion, calibration=calib,
                        exclude=getattr(args, "prune_exclude", ()),
                        round_to=getattr(args, "prune_round_to", 8))]

"""``--quantize {int8,int8-dynamic,int4,fp16}`` with ``--calib FILE.npz``: the Quantize pass."""

from __future__ import annotations

import argparse

ORDER = 40
SCHEMES = ("int8", "int8-dynamic", "int4", "fp16")
METHODS = ("minmax", "percentile", "entropy", "mse")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--quantize", choices=SCHEMES,
                       help="quantize matmul/conv layers: int8 (static, needs --calib), "
                            "int8-dynamic (activation scales at run time), int4 (weight-only, "
                            "group-wise), fp16")
    group.add_argument("--calib", metavar="FILE.npz",
                       help="calibration data for --quantize int8: arrays keyed by input name, "
                            "samples on axis 0")
    group.add_argument("--calib-method", choices=METHODS, default="minmax",
                       help="how activation ranges are chosen from --calib (default: minmax)")
    group.add_argument("--quantize-exclude", metavar="NAME,...", default="",
                       help="layers (matmul0, conv2d3 as in the report) or op kinds "
                            "(matmul, nn.conv2d) to keep float")
    group.add_argument("--int4-group-size", type=int, choices=(32, 64, 128), default=32,
                       help="weights per int4 scale (default: 32)")


def configs(args: argparse.Namespace) -> list:
    """A QuantizeConfig when --quantize is given; --calib alone is an error."""
    scheme = getattr(args, "quantize", None)
    if scheme is None:
        if getattr(args, "calib", None):
            from tvmcompress.errors import ConfigError

            raise ConfigError("--calib is only used with --quantize (int8 needs it)")
        return []
    from tvmcompress.passes.quantize import QuantizeConfig

    exclude = tuple(e.strip() for e in getattr(args, "quantize_exclude", "").split(",")
                    if e.strip())
    return [QuantizeConfig(scheme=scheme, calibration=getattr(args, "calib", None),
                           method=getattr(args, "calib_method", "minmax"), exclude=exclude,
                           group_size=getattr(args, "int4_group_size", 32))]

"""Run the passes a ``CompressConfig`` lists, in its order, on a Relax module."""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from tvmcompress.config import PASS_REGISTRY, CompressConfig

logger = logging.getLogger(__name__)


def run_passes(mod: tvm.IRModule, config: CompressConfig) -> tvm.IRModule:
    """Return the compressed module; ``mod`` itself is left untouched."""
    # Phase 0: clean float graph, so patterns see constants and simple ops.
    mod = relax.transform.FoldConstant()(mod)
    # Phase 1: the user's passes, in list order.
    for pass_config in config.passes:
        factory = PASS_REGISTRY[type(pass_config).__name__][1]
        logger.info("Running %s", type(pass_config).__name__)
        mod = factory(pass_config)(mod)
    return mod

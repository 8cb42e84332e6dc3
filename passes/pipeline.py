"""Run the passes a ``CompressConfig`` lists, in its order, on a Relax module."""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import relax

from tvmcompress.config import PASS_REGISTRY, CompressConfig
from tvmcompress.passes.fold_qdq import fold_qdq
from tvmcompress.passes.record import collecting

logger = logging.getLogger(__name__)


def run_passes(
    mod: tvm.IRModule, config: CompressConfig
) -> tuple[tvm.IRModule, list[dict[str, Any]]]:
    """Return the compressed module and the rows the passes recorded; ``mod`` is untouched."""
    with collecting() as log:
        # Phase 0: clean float graph, so patterns see constants and simple ops.
        mod = relax.transform.FoldConstant()(mod)
        # Phase 0b: pre-quantized (QDQ) models: DQ -> conv/matmul -> Q chains become integer ops.
        mod = fold_qdq(mod)
        # Phase 1: the user's passes, in list order.
        for pass_config in config.passes:
            factory = PASS_REGISTRY[type(pass_config).__name__][1]
            logger.info("Running %s", type(pass_config).__name__)
            mod = factory(pass_config)(mod)
        # Phase 2: fold what the passes left constant (e.g. reshaped or transposed weights).
        mod = relax.transform.FoldConstant()(mod)
    return mod, log

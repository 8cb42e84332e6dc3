"""Sparsify beyond the host: kernels for AVX-512 and NEON (block width per target) and CUDA
build without the hardware (compile-only), and the CLI flags map to the config."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import tvm
from tvm import relax

import tvmcompress as tc
from tvmcompress.errors import ConfigError
from tvmcompress.passes.sparsify import SparsifyConfig
from tvmcompress.schedules.cpu.sparse_matmul import SparseShape, bsr_matmul
from tvmcompress.schedules.gpu.sparse_matmul import bsr_matmul_gpu
from tvmcompress.targets import resolve_target

try:
    from tests.passes.test_sparsify import linear
except ImportError:  # run from tests/passes
    from test_sparsify import linear


@pytest.mark.parametrize("preset, block", [("x86-64-avx512", "1x16"), ("aarch64", "1x4"),
                                           ("cuda-sm86", "1x8")])
def test_block_per_target_and_builds(preset, block):
    """The default block fills one vector register of the target; the module builds. Where
    the target cannot run here the cost model's assumed speed-up picks BSR; where it can (an
    AVX-512 host) the decision is measured, which ``test_sparsify`` checks."""
    cfg = SparsifyConfig(sparsity=0.9, decide="auto", min_size=0)
    cm = tc.compile(linear((4, 64), 64), preset, config=tc.CompressConfig(passes=[cfg]))
    (row,) = cm.pass_log
    runs_here = not resolve_target(preset).why_not_runnable_here()
    assert row["block"] == block and row["cost"] == ("measured" if runs_here else "assumed")
    if not runs_here:
        assert row["storage"] == "bsr fp32" and row["break_even"] < 0.9
    forced = SparsifyConfig(sparsity=0.9, decide="sparse", min_size=0)
    cm = tc.compile(linear((4, 64), 64), preset, config=tc.CompressConfig(passes=[forced]))
    assert cm.pass_log[0]["storage"] == "bsr fp32"
    calls = []
    relax.analysis.post_order_visit(cm.ir["main"], lambda e: calls.append(e) if isinstance(
        e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir" else None)
    assert len(calls) == 1


def test_kernels_are_plain_tir():
    """No extern calls: TIR that MetaSchedule and the TIR passes can read (marked scheduled)."""
    shape = SparseShape(3, 16, 16, 1, 8, 5, "int8")
    for func in (bsr_matmul(shape, relu=True, cores=2), bsr_matmul_gpu(shape, relu=True)):
        assert func.attrs["tirx.is_scheduled"]
        text = func.script()
        assert "call_extern" not in text and "call_packed" not in text


def test_cpu_kernel_known_values():
    """Hand-made BSR (panel 0: k = 0 and 7; panel 1: k = 3; all values 1) gives the column
    sums it should: the kernel's index math, independent of the pass and of scipy."""
    shape = SparseShape(2, 8, 16, 1, 8, 3)
    func = bsr_matmul(shape, relu=False, cores=1)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=resolve_target("host").tvm_target)
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    data = np.ones((3, 1, 8), np.float32)
    indices, indptr = np.array([0, 7, 3], np.int32), np.array([0, 2, 3], np.int32)
    out = tvm.runtime.tensor(np.zeros((2, 16), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, data, indices, indptr,
                                                  np.ones(16, np.float32),
                                                  np.zeros(16, np.float32))), out)
    expected = np.concatenate([np.repeat((x[:, 0] + x[:, 7])[:, None], 8, 1),
                               np.repeat(x[:, 3:4], 8, 1)], axis=1)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_cli_flags():
    from tvmcompress.cli.compress_flags import add_compress_arguments, compress_config

    parser = argparse.ArgumentParser()
    add_compress_arguments(parser)
    (cfg,) = compress_config(parser.parse_args(
        ["--sparsity", "0.9", "--sparse-block", "4x4", "--sparse-int8"])).passes
    assert cfg == SparsifyConfig(sparsity=0.9, block=(4, 4), int8=True)
    (cfg,) = compress_config(parser.parse_args(
        ["--sparsity", "0.5", "--sparse-pattern", "n:m", "--sparse-nm", "1:4"])).passes
    assert cfg.pattern == "n:m" and cfg.nm == (1, 4)
    assert compress_config(parser.parse_args([])).passes == ()
    with pytest.raises(ConfigError, match="sparsity"):
        compress_config(parser.parse_args(["--sparsity", "1.2"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--sparsity", "0.5", "--sparse-block", "8"])

"""The CPU rules across targets: zoo models end to end against onnxruntime on this machine,
an aarch64 (NEON) build with every kernel scheduled, and GPU targets left to dlight's rules."""

from __future__ import annotations

import pytest
import tvm
from schedule_helpers import fused

import tvmcompress as tc
from tvmcompress import zoo
from tvmcompress.schedules.build import rules_for
from tvmcompress.schedules.cpu import Conv2d, Elementwise, Matmul, common
from tvmcompress.targets import resolve_target

OURS = (Matmul, Conv2d, Elementwise)


def _load(name: str, batch: int) -> tc.Model:
    return tc.load(zoo.build(name), input_shapes={"x": [batch, *zoo.ZOO[name][1]]})


@pytest.mark.parametrize("name, batch", [("mlp", 3), ("cnn", 2), ("transformer", 2)])
def test_zoo_scheduled_matches_onnxruntime(name, batch, zoo_inputs, assert_matches_ort):
    """Every kernel of the zoo models gets a schedule, and outputs stay onnxruntime's."""
    model = _load(name, batch)
    compiled = tc.compile(model)
    assert compiled.build_info.unscheduled == []
    assert_matches_ort(model.onnx_model, compiled, zoo_inputs(name, batch, seed=5))


def test_rules_cover_the_zoo_cnn(avx2_target):
    """Convs and pools go to Conv2d, the classifier to Matmul, concat/reshape to Elementwise:
    no kernel of the CNN falls through to dlight's generic reduction rule except the mean."""
    mod = fused(_load("cnn", 2).mod, avx2_target)
    taken = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            rule = next(r for r in rules_for(avx2_target) if r.apply(func, avx2_target, False))
            taken[gv.name_hint] = type(rule).__name__
    assert {n: r for n, r in taken.items() if "conv2d" in n or "pool" in n} \
        == {n: "Conv2d" for n in taken if "conv2d" in n or "pool" in n}
    assert [r for n, r in taken.items() if "matmul" in n] == ["Matmul"]
    assert taken["concatenate"] == taken["reshape"] == "Elementwise"


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_arm_build_is_scheduled(name):
    """raspberry-pi-4 (aarch64, NEON): the same rules apply (4-lane vectors, 32 registers) and
    the build succeeds; compile only, it runs on the board or under qemu."""
    compiled = tc.compile(_load(name, 1), target="raspberry-pi-4")
    assert compiled.build_info.unscheduled == []
    target = resolve_target("raspberry-pi-4").tvm_target
    assert (common.lanes(target, "float32"), common.vector_registers(target)) == (4, 32)
    kernels = {gv.name_hint: f for gv, f in fused(compiled.ir, target).functions.items()
               if any(k in gv.name_hint for k in ("conv2d", "pool", "matmul"))}
    assert kernels
    for kernel, func in kernels.items():
        assert any(r().apply(func, target, False) for r in OURS), kernel


def test_cuda_build_does_not_use_cpu_rules():
    """cuda-sm86: our CPU rules answer "not mine" for every kernel; dlight's GPU rules build it."""
    compiled = tc.compile(_load("cnn", 1), target="cuda-sm86")
    target = resolve_target("cuda-sm86").tvm_target
    assert not any(isinstance(r, OURS) for r in rules_for(target))
    funcs = [f for f in fused(compiled.ir, target).functions.values()
             if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and not any(r().apply(f, target, False) for f in funcs for r in OURS)


@pytest.mark.parametrize("target, bits", [
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3"}, 256),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, 512),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, 128),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, 128)])
def test_vector_width_from_features(target, bits):
    """TVM 0.27's llvm_get_vector_width says 512 for every x86 CPU; we read the features."""
    assert common.vector_bits(tvm.target.Target(target)) == bits

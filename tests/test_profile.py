"""``CompiledModel.profile`` / ``tvmcompress profile``: every kernel timed, FLOPs from the build,
unscheduled kernels flagged, the same facts from an exported module."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvmcompress as tc
from tvmcompress.cli import main
from tvmcompress.errors import ConfigError

M, K, N = 8, 64, 32


def _model() -> onnx.ModelProto:
    """MatMul (a scheduled kernel with known FLOPs), then CumSum (no rule schedules it)."""
    weight = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("CumSum", ["h", "axis"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        [helper.make_tensor("w", TensorProto.FLOAT, [K, N], weight.ravel()),
         helper.make_tensor("axis", TensorProto.INT64, [], [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def compiled():
    return tc.compile(_model(), "host")


def test_profile_times_every_kernel_with_its_flops(compiled):
    result = compiled.profile(rounds=3)
    rows = {k.name: k for k in result.kernels}
    matmul = [k for name, k in rows.items() if "matmul" in name]
    assert len(matmul) == 1 and matmul[0].calls == 1
    assert matmul[0].flops == 2 * M * K * N  # TVM's estimate of the scheduled kernel
    assert matmul[0].gflops > 0
    assert "cumsum" in rows and rows["cumsum"].calls == 1
    assert all(k.ms > 0 for k in result.kernels)
    assert result.kernels == sorted(result.kernels, key=lambda k: -k.ms)
    assert result.kernel_ms <= result.run_ms * 1.5  # the kernels run inside the timed runs


def test_unscheduled_kernels_are_flagged(compiled):
    assert compiled.build_info.unscheduled == ["cumsum"]
    result = compiled.profile(rounds=2)
    (cumsum,) = [k for k in result.kernels if k.name == "cumsum"]
    assert cumsum.note.lower() == "unscheduled"
    assert any("cumsum" in note and "no schedule" in note for note in result.notes)
    assert "warning:" in result.table() and "cumsum" in result.table()


def test_an_exported_module_profiles_with_the_build_facts(compiled, tmp_path):
    compiled.export(tmp_path / "out")
    loaded = tc.runtime.load(tmp_path / "out")
    result = loaded.profile(rounds=2)
    names = {k.name for k in result.kernels}
    assert names == {k.name for k in compiled.profile(rounds=2).kernels}
    assert [k.flops for k in result.kernels if "matmul" in k.name] == [2 * M * K * N]
    assert any("cumsum" in n for n in result.notes)


def test_cli_profile_prints_the_table(compiled, tmp_path, capsys):
    compiled.export(tmp_path / "out")
    assert main(["profile", str(tmp_path / "out"), "--rounds", "2", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "(2 more)" in out and "whole run" in out
    with pytest.raises(SystemExit):  # argparse: not an integer
        main(["profile", str(tmp_path / "out"), "--rounds", "x"])
    assert main(["profile", str(tmp_path / "out"), "--rounds", "0"]) == 2
    assert "rounds must be an integer >= 1" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "out"), "--top", "-1"]) == 2
    assert "--top must be >= 0" in capsys.readouterr().err


def test_profile_rejects_bad_rounds(compiled):
    with pytest.raises(ConfigError, match="rounds"):
        compiled.profile(rounds=0)

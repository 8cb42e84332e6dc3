"""TVM's runtime uses one thread per physical core unless the user chose a count.

TVM alone takes half the logical CPUs on x86 (it assumes hyper-threads): on a 2-core machine
without SMT every model ran on one thread. Each case runs in a fresh interpreter, because the
thread pool reads ``TVM_NUM_THREADS`` once, when the first parallel kernel starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tvmcompress.threads import physical_cores

# A GEMM big enough for our rule to run it in parallel; prints the variable TVM saw and how
# many threads the process gained by running it (the pool's workers: threads - 1).
SCRIPT = """
import json, os
import numpy as np
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
import tvmcompress as tc
w = numpy_helper.from_array(np.ones((256, 256), "float32"), "w")
graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])], [w])
compiled = tc.compile(tc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])))
before = len(os.listdir("/proc/self/task"))
compiled.run({"x": np.ones((64, 256), "float32")})
print(json.dumps([os.environ.get("TVM_NUM_THREADS"), len(os.listdir("/proc/self/task")) - before]))
"""


def _run(**env: str) -> tuple[str | None, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


def test_physical_cores_are_within_the_affinity_mask():
    cores = physical_cores()
    assert cores is not None and 1 <= cores <= len(os.sched_getaffinity(0))


def test_pool_gets_one_thread_per_physical_core_by_default():
    cores = physical_cores()
    seen, workers = _run()
    assert seen == str(cores)
    assert workers == cores - 1  # the calling thread is the pool's first


def test_a_chosen_thread_count_is_kept():
    assert _run(TVM_NUM_THREADS="1") == ("1", 0)
    seen, workers = _run(OMP_NUM_THREADS="1")  # TVM reads OMP_NUM_THREADS too
    assert seen is None and workers == 0

"""How many threads TVM's runtime uses when the user did not say.

Without ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``) TVM's thread pool on x86 takes half of
``std::thread::hardware_concurrency()``, assuming two hyper-threads per core. On a machine
without SMT that is half the cores: on our 2-core machines every model ran on ONE thread (a
128x768x3072 GEMM took 7.5 ms instead of 4.5 ms); every benchmark set the variable, so only
users saw it. The right default for compute-bound kernels is one thread per physical core the
process may run on, which Linux reports in sysfs; elsewhere TVM's own guess stands.
"""

from __future__ import annotations

import os

ENV = "TVM_NUM_THREADS"


def physical_cores() -> int | None:
    """Physical cores among the CPUs this process may run on (hyper-threads of one core
    count once), or None where sysfs has no CPU topology."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    cores = set()
    for cpu in cpus:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        try:
            with open(path) as f:
                cores.add(f.read().strip())
        except OSError:
            return None
    return len(cores) or None


def set_default() -> None:
    """Set ``TVM_NUM_THREADS`` to the physical cores unless the user chose a thread count
    (``TVM_NUM_THREADS`` or ``OMP_NUM_THREADS``). Runs at import, before TVM's pool starts
    (it reads the variable once, at the first parallel kernel)."""
    if ENV in os.environ or "OMP_NUM_THREADS" in os.environ:
        return
    cores = physical_cores()
    if cores:
        os.environ[ENV] = str(cores)


set_default()

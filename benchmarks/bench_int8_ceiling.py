"""How close our AVX2 int8 GEMM runs to what this CPU can do at all, side by side with
onnxruntime's int8.

An exact u8 x s8 dot product on AVX2 (no VNNI) costs three vector instructions per 32
multiply-adds: ``vpmaddubsw`` (pairs into int16), ``vpmaddwd`` by ones (into int32) and
``vpaddd``. This script measures that sequence's throughput with everything in registers (no
loads, no loop overhead: inline assembly, one thread per core, all cores at once), which no
GEMM can beat, and two alternatives:

- ``sign trick``: ``vpsignb`` moves the activation's sign onto the weight, so ``vpmaddubsw``
  gets ``|a| <= 128`` and two int16 results can be added before widening (exact for weights in
  [-63, 63]): 3.5 instructions per 32 MACs but fewer multiplies;
- ``s16``: ``vpmaddwd`` on int16 operands (our path for 8-bit weights): 16 MACs per 2
  instructions;
- ``fp32 FMA``: ``vfmadd231ps``, the float peak, for scale.

It then times our int8-dynamic GEMM, onnxruntime's quantize_dynamic GEMM and both fp32 ones
in interleaved rounds, the ceiling measured in each round too (the machine's load moves), and
prints each engine's median and best time, their share of the ceiling and their ratio to
onnxruntime int8; the last row is the time the ceiling allows.

    python benchmarks/bench_int8_ceiling.py [--m 128] [--rounds 5] [--budget 1.0] [--repeat 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

THREADS = 2
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
sys.path.insert(0, str(Path(__file__).parent))

from bench_int8 import engines  # noqa: E402
from bench_schedules import timed  # noqa: E402

# 16 independent products per loop iteration (8 accumulators, two rounds), operands in ymm1-3,
# ones in ymm0; each kernel prints billions of multiply-adds per second over all threads.
_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define N 4000000L
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
#define CLOB "xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13", \
             "xmm14","xmm15"
#define U8(acc, t) "vpmaddubsw %%ymm3,%%ymm1," t "\n vpmaddwd %%ymm0," t "," t \
                   "\n vpaddd " t "," acc "," acc "\n"
#define SIGN(acc, t, u) "vpsignb %%ymm1,%%ymm3," t "\n vpsignb %%ymm1,%%ymm3," u \
    "\n vpmaddubsw " t ",%%ymm2," t "\n vpmaddubsw " u ",%%ymm2," u "\n vpaddw " u "," t \
    "," t "\n vpmaddwd %%ymm0," t "," t "\n vpaddd " t "," acc "," acc "\n"
#define S16(acc, t) "vpmaddwd %%ymm3,%%ymm1," t "\n vpaddd " t "," acc "," acc "\n"
#define FMA(acc) "vfmadd231ps %%ymm3,%%ymm1," acc "\n"
#define EIGHT(M, a, b) M("%%ymm8", a) M("%%ymm9", b) M("%%ymm10", a) M("%%ymm11", b) \
                       M("%%ymm12", a) M("%%ymm13", b) M("%%ymm14", a) M("%%ymm15", b)
#define EIGHT3(M) M("%%ymm8","%%ymm4","%%ymm5") M("%%ymm9","%%ymm6","%%ymm7") \
    M("%%ymm10","%%ymm4","%%ymm5") M("%%ymm11","%%ymm6","%%ymm7") \
    M("%%ymm12","%%ymm4","%%ymm5") M("%%ymm13","%%ymm6","%%ymm7") \
    M("%%ymm14","%%ymm4","%%ymm5") M("%%ymm15","%%ymm6","%%ymm7")
#define FMA1(acc, t) FMA(acc)
static int kind;
static void *work(void *arg) {
  for (long i = 0; i < N; i++) {
    if (kind == 0) __asm__ volatile(EIGHT(U8, "%%ymm4", "%%ymm5") EIGHT(U8, "%%ymm6", "%%ymm7")
                                    ::: CLOB);
    else if (kind == 1) __asm__ volatile(EIGHT3(SIGN) ::: CLOB);
    else if (kind == 2) __asm__ volatile(EIGHT(S16, "%%ymm4", "%%ymm5")
                                         EIGHT(S16, "%%ymm6", "%%ymm7") ::: CLOB);
    else __asm__ volatile(EIGHT(FMA1, "", "") EIGHT(FMA1, "", "") ::: CLOB);
  }
  return arg;
}
int main(int argc, char **argv) {
  int threads = atoi(argv[1]);
  static const double macs[] = {16 * 32, 8 * 2 * 32, 16 * 16, 16 * 8};
  for (kind = 0; kind < 4; kind++) {
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
      pthread_t t[64];
      double t0 = now();
      for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, work, 0);
      for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
      double dt = now() - t0;
      if (dt < best) best = dt;
    }
    printf("%.2f\n", macs[kind] * N * threads / best * 1e-9);
  }
  return 0;
}
"""
KINDS = ("u8 x s8 (vpmaddubsw+vpmaddwd+vpaddd)", "sign trick (vpsignb, int16 pairs)",
         "s16 (vpmaddwd+vpaddd)", "fp32 FMA (vfmadd231ps)")


def ceiling_program(tmp: Path) -> Path:
    """The register-only loops, compiled (x86-64 with AVX2 and a C compiler needed)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        sys.exit(f"bench_int8_ceiling measures AVX2 instructions: needs x86-64, this is "
                 f"{platform.machine()}")
    with open("/proc/cpuinfo") as f:
        if " avx2" not in f.read():
            sys.exit("bench_int8_ceiling needs a CPU with AVX2 (not in /proc/cpuinfo's flags)")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("bench_int8_ceiling needs a C compiler: apt-get install -y gcc")
    src, exe = tmp / "ceiling.c", tmp / "ceiling"
    src.write_text(_C)
    subprocess.run([cc, "-O2", "-pthread", str(src), "-o", str(exe)], check=True)
    return exe


def ceilings(exe: Path, threads: int) -> dict[str, float]:
    """GMAC/s of each instruction sequence over ``threads`` cores (best of 5)."""
    out = subprocess.run([str(exe), str(threads)], check=True, capture_output=True,
                         text=True).stdout.split()
    return dict(zip(KINDS, map(float, out), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", type=int, default=128, help="GEMM rows (m x 768 x 3072)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per engine and round")
    parser.add_argument("--repeat", type=int, default=40, help="timed runs per engine and round")
    args = parser.parse_args()
    macs = args.m * 768 * 3072
    with tempfile.TemporaryDirectory() as tmp:
        exe = ceiling_program(Path(tmp))
        runs = engines(f"gemm{args.m}", Path(tmp))
        runs.pop("ours QDQ", None)
        names = ("ours int8", "ORT int8", "ours fp32", "ORT fp32")
        times = {n: [] for n in names}
        rates = {k: [] for k in KINDS}
        for r in range(args.rounds):  # interleaved: the ceiling too, under the same load
            for kind, rate in ceilings(exe, THREADS).items():
                rates[kind].append(rate)
            for name in names[r % 4:] + names[:r % 4]:
                times[name] += timed(runs[name], args.budget, args.repeat)
    ceiling = {k: max(v) for k, v in rates.items()}  # a bound: the best the cores did
    ms_ceiling = macs / ceiling[KINDS[0]] / 1e6
    print(f"register-only ceilings on {THREADS} cores (GMAC/s, all cores at once, best of "
          f"{args.rounds} rounds x 5):")
    for kind, rate in ceiling.items():
        print(f"  {kind:<40}{rate:>9.1f}   {rate / ceiling[KINDS[0]]:5.2f}x u8 x s8")
    print(f"\nGEMM {args.m}x768x3072, {THREADS} threads, {args.rounds} interleaved rounds x "
          f"{args.repeat} runs:")
    print(f"{'engine':<12}{'median ms':>10}{'best ms':>9}{'% ceiling':>18}"
          f"{'x ORT int8':>16}")
    print(f"{'':<12}{'':>10}{'':>9}{'(median, best)':>18}{'(median, best)':>16}")
    med = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}
    for name in names:
        print(f"{name:<12}{med[name]:>10.3f}{best[name]:>9.3f}"
              f"{ms_ceiling / med[name]:>10.0%}{ms_ceiling / best[name]:>8.0%}"
              f"{med[name] / med['ORT int8']:>10.2f}{best[name] / best['ORT int8']:>6.2f}")
    print(f"{'u8 ceiling':<12}{ms_ceiling:>10.3f}{ms_ceiling:>9.3f}{1:>10.0%}{1:>8.0%}"
          f"{ms_ceiling / med['ORT int8']:>10.2f}{ms_ceiling / best['ORT int8']:>6.2f}"
          f"   (no loads, no loop, no epilogue)")


if __name__ == "__main__":
    main()

"""Prune a tuning database to what is worth shipping: per kernel, the best record, and only
where it beats the default rules' schedule (measured in the same run) by a margin."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from tvmcompress.schedules import _search, tunedb


def _trace(rec_or_sch) -> str:
    return json.dumps(rec_or_sch.trace.as_json(), default=str)


def prune(source: Path, dest: Path, target: tvm.target.Target, margin: float = 0.95,
          max_bytes: int = 150_000) -> int:
    """Write to ``dest`` (replacing it) each workload's best record from ``source`` whose
    mean time is below ``margin`` x its default schedule's, the biggest gains first while the
    workloads fit in ``max_bytes`` (each is its whole kernel, tens of KB); returns how many."""
    records = tunedb.read_records(Path(source))
    db = ms.database.MemoryDatabase()
    tunedb.copy_records(records, db)
    keep, seen = [], set()
    for rec in records:
        mod = rec.workload.mod
        key = tvm_ffi.structural_hash(mod)
        if key in seen:
            continue
        seen.add(key)
        best = tunedb.best_record(db, mod, target)
        task = type("Workload", (), {"mod": mod, "name": "kernel"})()
        default = _search.default_schedule(task, target)
        if best is None or default is None:
            continue
        same = [r for r in db.get_top_k(db.commit_workload(mod), 1 << 16)
                if _trace(r) == _trace(default)]
        if same and _trace(best) != _trace(default) \
                and tunedb.mean_secs(best) < margin * tunedb.mean_secs(same[0]):
            keep.append((tunedb.mean_secs(same[0]) / tunedb.mean_secs(best), best))
    keep = _fit([rec for _, rec in sorted(keep, key=lambda g: -g[0])], max_bytes)
    staging = Path(tempfile.mkdtemp(prefix=".ship-"))
    tunedb.copy_records(keep, ms.database.JSONDatabase(work_dir=str(staging)))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (tunedb.WORKLOADS, tunedb.RECORDS):
        shutil.move(staging / name, dest / name)
    shutil.rmtree(staging, ignore_errors=True)
    return len(keep)


def _fit(records: list, max_bytes: int) -> list:
    kept, size = [], 0
    for rec in records:
        size += len(json.dumps(rec.workload.as_json(), default=str))
        if size > max_bytes:
            break
        kept.append(rec)
    return kept

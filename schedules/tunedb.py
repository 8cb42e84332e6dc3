"""Tuning databases: MetaSchedule JSON directories that every compile reads and tuning merges into.

A database is a directory holding MetaSchedule's two JSON-lines files. Records are keyed by
a canonical workload (the fused PrimFunc renamed ``main``, so the same kernel in two models
matches) and carry the target they were measured on. A compile applies the fastest record
whose target is compatible with its own (:func:`compatible`); other kernels get the default
rules. Writers tune into a private directory and :func:`merge` it in under an exclusive
``fcntl`` lock with ``os.replace``; readers take the shared lock, so nobody sees half a merge.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from tvmcompress.errors import ConfigError
from tvmcompress.schedules.records import (  # re-exported: the database's public face
    apply_database,
    best_record,
    canonical,
    compatible,
    mean_secs,
)

__all__ = ["apply_database", "best_record", "canonical", "compatible", "databases", "load",
           "mean_secs", "merge", "read_records"]

logger = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
LOCK = ".lock"
SHIPPED = Path(__file__).parent / "db"


def default_dir() -> Path:
    """The per-user database: ``$XDG_CACHE_HOME/tvmcompress/tuning`` (``~/.cache/...``)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "tvmcompress" / "tuning"


@contextlib.contextmanager
def locked(directory: Path, exclusive: bool) -> Iterator[None]:
    """Hold ``directory``'s lock file; read-only directories (the shipped one) need none."""
    if directory.resolve() == SHIPPED.resolve():
        yield
        return
    try:
        handle = open(directory / LOCK, "a+")
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        handle.close()


def _check(directory: Path) -> bool:
    """True when ``directory`` holds a database; a clear error naming the file if corrupt."""
    paths = [directory / WORKLOADS, directory / RECORDS]
    if not any(p.exists() for p in paths):
        return False
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"Tuning database {directory} is incomplete: {path.name} is "
                              "missing. Remove the directory or restore the file")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                json.loads(line) if line.strip() else None
            except json.JSONDecodeError as err:
                raise ConfigError(f"Tuning database file {path} is corrupt at line {number}: "
                                  f"{err}. Move it away (tvmcompress will not overwrite it) "
                                  "or pass another database directory") from err
    return True


def read_records(directory: Path) -> list[ms.database.TuningRecord]:
    """Every record in ``directory`` (none if it holds no database)."""
    if not _check(directory):
        return []
    try:
        db = ms.database.JSONDatabase(work_dir=str(directory), allow_missing=False)
        return list(db.get_all_tuning_records())
    except Exception as err:
        raise ConfigError(f"Tuning database {directory} cannot be loaded ({err}); move "
                          f"{directory / RECORDS} away or pass another database") from err


def load(directories: Iterable[Path]) -> ms.database.MemoryDatabase:
    """One in-memory database holding the records of every directory."""
    memory = ms.database.MemoryDatabase()
    for directory in directories:
        with locked(directory, exclusive=False):
            records = read_records(directory)
        copy_records(records, memory)
    return memory


def copy_records(records: Iterable[ms.database.TuningRecord], into: ms.database.Database) -> None:
    for rec in records:
        workload = into.commit_workload(rec.workload.mod)
        into.commit_tuning_record(ms.database.TuningRecord(
            rec.trace, workload, rec.run_secs, rec.target, rec.args_info))


def _key(rec: ms.database.TuningRecord) -> tuple:
    return (tvm_ffi.structural_hash(rec.workload.mod), json.dumps(rec.trace.as_json(), default=str),
            str(rec.target))


def _valid(rec: ms.database.TuningRecord) -> bool:
    """Measured successfully (failed and skipped candidates are not worth keeping)."""
    return bool(rec.run_secs) and max(float(s) for s in rec.run_secs) < 1e9


def merge(source: Path, dest: Path) -> int:
    """Merge the records of ``source`` into ``dest`` atomically; returns the count of records
    added or replaced. A schedule ``dest`` holds already (same workload, trace and target)
    takes the faster time of the two: that is how tuning gives a kernel its default schedule
    back (``_search._keep_default`` re-commits the default's trace, timed below the record
    that lost); dropping it as a duplicate left the losing record the best."""
    dest.mkdir(parents=True, exist_ok=True)
    with locked(dest, exclusive=True):
        kept = {_key(r): r for r in read_records(dest)}
        changed = 0
        for rec in read_records(source):
            key = _key(rec)
            if _valid(rec) and (key not in kept or mean_secs(rec) < mean_secs(kept[key])):
                kept[key] = rec
                changed += 1
        if not changed:
            return 0
        staging = Path(tempfile.mkdtemp(prefix=".merge-", dir=dest))
        try:
            copy_records(list(kept.values()), ms.database.JSONDatabase(work_dir=str(staging)))
            # Readers hold the shared lock, so the two renames look like one change to them.
            os.replace(staging / WORKLOADS, dest / WORKLOADS)
            os.replace(staging / RECORDS, dest / RECORDS)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return changed


def databases(*extra: str | Path | None) -> list[Path]:
    """The databases a compile reads: the shipped one, the per-user one if present, and
    ``extra`` directories (which must exist)."""
    found = [SHIPPED] if (SHIPPED / RECORDS).is_file() else []
    for directory in [default_dir(), *(Path(e).expanduser() for e in extra if e)]:
        if directory in found:
            continue
        if directory != default_dir() and not directory.is_dir():
            raise ConfigError(f"Tuning database directory {directory} does not exist; pass a "
                              "directory written by `tvmcompress tune` (or tc.Tune(database=))")
        if directory.is_dir():
            found.append(directory)
    return found

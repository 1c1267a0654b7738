"""The persistent tuning database: where it lives, what it already covers, and its fingerprint.

One folder per target (``~/.cache/forgeline/tuning/<target-tag>/`` unless told otherwise) holds
MetaSchedule's JSON database and forgeline's ledger, ``forgeline-ledger.json``. The ledger counts
the trials each task (keyed by the structural hash of its TIR workload) has had, and the tuning
requests that ran to the end, so that a second compile of the same model at the same buckets
knows it has nothing left to tune, even where MetaSchedule stopped early because a task's search
space ran out.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forgeline.runtime.errors import ConfigError, error_summary

logger = logging.getLogger(__name__)

CACHE_ENV = "FORGELINE_CACHE_DIR"
LEDGER_FILE = "forgeline-ledger.json"
DB_FILES = ("database_workload.json", "database_tuning_record.json")


def default_database_dir(target_tag: str) -> Path:
    """``$FORGELINE_CACHE_DIR/tuning/<tag>``, else ``~/.cache/forgeline/tuning/<tag>``."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "forgeline"
    return root / "tuning" / target_tag


@dataclass(frozen=True)
class TuningPlan:
    """How many trials a request still needs, given what the database already holds."""

    trials: int  # to run now; 0 means reuse everything
    reused_trials: int  # earlier trials on these exact tasks that count toward the request


class TuningDatabase:
    """A folder with MetaSchedule's JSON database plus the ledger; use as a context manager."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"The tuning database folder {self.folder} cannot be created "
                              f"({exc.strerror}); pass a writable one with --tuning-db.") from exc
        self._ledger_path = self.folder / LEDGER_FILE
        self.ms = None  # MetaSchedule's JSONDatabase, opened on enter (under the lock)

    @contextmanager
    def locked(self) -> Iterator[TuningDatabase]:
        """Hold the folder's lock: two jobs tuning into one database would interleave records."""
        from tvm.s_tir import meta_schedule as ms

        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.ms = self._open_or_start_fresh(ms)
            try:
                yield self
            finally:
                self.ms = None
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_or_start_fresh(self, ms):
        """MetaSchedule's database; an unreadable one (truncated, garbage) is moved aside, not fatal."""
        try:
            return ms.database.JSONDatabase(work_dir=str(self.folder))
        except Exception as exc:  # noqa: BLE001 - TVM reports a bad file as RuntimeError or its own class
            if "KeyboardInterrupt" in f"{type(exc).__name__} {exc}":
                raise KeyboardInterrupt from exc
            aside = self._move_aside()
            logger.warning("The tuning database in %s could not be read (%s); it was moved to %s and tuning starts "
                           "with a fresh one. Delete that folder once you no longer need it.", self.folder,
                           error_summary(exc, last=True), aside)
            return ms.database.JSONDatabase(work_dir=str(self.folder))

    def _move_aside(self) -> Path:
        """Move the database files and the ledger (whose counts describe them) into a dated subfolder."""
        aside = self.folder / f"unreadable-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        aside.mkdir()
        for name in (*DB_FILES, LEDGER_FILE):
            if (self.folder / name).exists():
                os.replace(self.folder / name, aside / name)
        return aside

    def _ledger(self) -> dict:
        if not self._ledger_path.is_file():
            return {"tasks": {}, "requests": {}}
        try:
            return json.loads(self._ledger_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.warning("%s is unreadable; treating every task as untuned.", self._ledger_path)
            return {"tasks": {}, "requests": {}}

    def plan(self, task_keys: list[str], trials: int, per_task: int) -> TuningPlan:
        """Trials still to run so that these tasks have had ``trials`` (at most ``per_task`` each)."""
        ledger = self._ledger()
        wanted = min(trials, per_task * len(task_keys))
        # Earlier trials count up to each task's fair share only: trials spent on the kernels this
        # model shares with another must not stand in for kernels that were never tuned.
        share = min(per_task, -(-wanted // max(len(task_keys), 1)))
        had = sum(min(ledger["tasks"].get(k, {}).get("trials", 0), share) for k in task_keys)
        done = ledger["requests"].get(_request_key(task_keys))
        if done and done["trials"] >= trials and done["per_task"] >= per_task:
            return TuningPlan(trials=0, reused_trials=had)  # ran to the end before
        return TuningPlan(trials=max(wanted - had, 0), reused_trials=min(had, wanted))

    def record(self, task_keys: list[str], task_names: list[str], trials_per_task: list[int],
               *, trials: int, per_task: int) -> None:
        """Add a finished tuning run to the ledger."""
        ledger = self._ledger()
        for key, name, count in zip(task_keys, task_names, trials_per_task):
            entry = ledger["tasks"].setdefault(key, {"name": name, "trials": 0})
            entry["trials"] += int(count)
        previous = ledger["requests"].get(_request_key(task_keys), {"trials": 0, "per_task": 0})
        ledger["requests"][_request_key(task_keys)] = {
            "trials": max(trials, previous["trials"]), "per_task": max(per_task, previous["per_task"])}
        tmp = self._ledger_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
        os.replace(tmp, self._ledger_path)

    def has_record(self, mod) -> bool:
        """Whether the database holds a measured schedule for this task's workload."""
        if not self.ms.has_workload(mod):
            return False
        return bool(self.ms.get_top_k(self.ms.commit_workload(mod), 1))

    def sha256(self) -> str:
        """Fingerprint of MetaSchedule's database files, as they stand now."""
        digest = hashlib.sha256()
        for name in DB_FILES:
            path = self.folder / name
            digest.update(name.encode() + b"\0")
            if path.is_file():
                digest.update(path.read_bytes())
        return digest.hexdigest()


def _request_key(task_keys: list[str]) -> str:
    return hashlib.sha256(",".join(sorted(task_keys)).encode()).hexdigest()[:24]


__all__ = ["CACHE_ENV", "TuningDatabase", "TuningPlan", "default_database_dir"]

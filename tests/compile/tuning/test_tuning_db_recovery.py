"""A truncated or garbage tuning database is moved aside with a warning, and tuning goes on with a fresh one."""

from __future__ import annotations

import json
import logging

import pytest

from forgeline.compile.tuning.database import LEDGER_FILE, TuningDatabase


@pytest.mark.parametrize("damage", [
    {"database_tuning_record.json": b'[["a", [1, 2'},  # truncated mid-record
    {"database_workload.json": b"\x00\xffgarbage\n", "database_tuning_record.json": b""},
])
def test_an_unreadable_database_is_moved_aside_and_replaced(tmp_path, caplog, damage):
    folder = tmp_path / "db"
    folder.mkdir()
    for name, data in damage.items():
        (folder / name).write_bytes(data)
    ledger = json.dumps({"tasks": {"k": {"name": "t", "trials": 64}}, "requests": {}}).encode()
    (folder / LEDGER_FILE).write_bytes(ledger)
    caplog.set_level(logging.WARNING, logger="forgeline")
    with TuningDatabase(folder).locked() as db:
        assert len(db.ms.get_all_tuning_records()) == 0  # a fresh, working database
        assert db.plan(["k"], trials=8, per_task=8).trials == 8  # its ledger went too: nothing counts as tuned
    [aside] = [p for p in folder.iterdir() if p.name.startswith("unreadable-")]
    for name, data in damage.items():
        assert (aside / name).read_bytes() == data  # nothing lost: the old files are kept, moved
    assert (aside / LEDGER_FILE).read_bytes() == ledger
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message.startswith(f"The tuning database in {folder} could not be read (")
    assert message.endswith(f"it was moved to {aside} and tuning starts with a fresh one. Delete that folder once "
                            "you no longer need it.")
    with TuningDatabase(folder).locked():  # the next run opens it without a word
        pass
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

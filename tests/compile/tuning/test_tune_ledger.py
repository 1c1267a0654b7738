"""The tuning ledger's plan: what earlier trials may stand in for, computed by hand."""

import json

from forgeline.compile.tuning.database import LEDGER_FILE, TuningDatabase


def _db(tmp_path, tasks: dict[str, int], requests: dict | None = None) -> TuningDatabase:
    ledger = {"tasks": {k: {"name": k, "trials": n} for k, n in tasks.items()}, "requests": requests or {}}
    (tmp_path / LEDGER_FILE).write_text(json.dumps(ledger))
    return TuningDatabase(tmp_path)


def test_shared_kernels_do_not_stand_in_for_untuned_ones(tmp_path):
    # Another model tuned kernels a and b for 150 trials each; this one also has c and d, never tuned.
    db = _db(tmp_path, {"a": 150, "b": 150})
    plan = db.plan(["a", "b", "c", "d"], trials=200, per_task=200)
    # fair share = ceil(200 / 4) = 50 per kernel: a and b count 50 each, c and d nothing
    assert (plan.reused_trials, plan.trials) == (100, 100)


def test_untuned_request_tunes_everything(tmp_path):
    plan = _db(tmp_path, {}).plan(["a", "b"], trials=64, per_task=64)
    assert (plan.reused_trials, plan.trials) == (0, 64)


def test_per_task_cap_limits_the_request(tmp_path):
    # 3 kernels capped at 10 trials each can use at most 30 of the 64 asked for
    plan = _db(tmp_path, {"a": 4}).plan(["a", "b", "c"], trials=64, per_task=10)
    assert (plan.reused_trials, plan.trials) == (4, 26)

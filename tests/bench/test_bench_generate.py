"""benchmarks/bench_generate.py's precision columns: one TVM column per precision, the fp32 build
first, greedy agreement with it and decode speed relative to it (the script's run is a benchmark,
so only its bookkeeping is tested here)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace


def test_every_precision_is_timed_in_each_round_beside_fp32(bench_script, capsys):
    bench = bench_script("bench_generate")
    calls = []

    def fake(name, ids, seconds):
        def run(prompts):
            calls.append(name)
            return {"prefill": seconds, "decode": seconds}, ids
        return run

    columns = {"tvm": ("fp32", fake("tvm", [[1, 2, 3, 4]], 0.2)),
               "tvm-int8": ("int8", fake("tvm-int8", [[1, 2, 5, 6]], 0.1)),
               "ort": ("fp32", fake("ort", [[1, 2, 3, 4]], 0.4))}
    args = SimpleNamespace(batches="1", repeat=2, prompt=8, new=5)
    rows = bench.run_all(columns, args, vocab_size=16)
    assert calls == ["tvm", "tvm-int8", "ort"] * 2  # interleaved rounds
    by = {r["backend"]: r for r in rows}
    assert by["tvm-int8"]["agree"] == 0.5 and by["ort"]["agree"] == 1.0
    assert by["tvm-int8"]["decode_tok_s"] == 2 * by["tvm"]["decode_tok_s"]
    bench.print_table(rows)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tvm-int8"))
    assert "2.00" in line and "50.0%" in line  # vs fp32, greedy agreement


def test_reduced_builds_are_columns_named_by_precision(bench_script):
    bench = bench_script("bench_generate")
    columns = bench.make_columns(Path("."), {"fp32": "cpu-x", "int8": "cpu-x-int8"}, ["ort"], None, None, 4)
    assert list(columns) == ["tvm", "tvm-int8", "ort"]
    assert [precision for precision, _ in columns.values()] == ["fp32", "int8", "fp32"]

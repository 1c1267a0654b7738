"""What the commands show: one line per stage, progress bars that end full, plain lines off a
terminal, the result alone under -q, logs under -v, and no third-party noise by default.

The bars are driven by a fake source of events (what a 64-trial tuning run and a 200-step
training run report) and read back through rich's own console; one real training run covers
the plain path end to end, and one real build runs on a pseudo-terminal.
"""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from forgeline.cli.app import main
from forgeline.cli.console import PlainReporter, RichReporter
from forgeline.runtime.progress import reporting_to, stage

FORGELINE = str(Path(sys.executable).with_name("forgeline"))
BAR_WIDTH = 40  # rich's default: a full bar is 40 segments "━"


def _fake_run(total: int, unit: str, info, done_at_end: int | None = None) -> None:
    """Report what a tuning or training run reports: a counted stage inside an uncounted one."""
    with stage("tune bucket 1x16"):
        with stage("search 3 kernel(s)", total=total, unit=unit) as bar:
            for done in range(1, (done_at_end or total) + 1):
                bar.advance(done, info=info(done))


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def test_a_64_trial_tuning_run_shows_one_bar_that_ends_full():
    console, out = _terminal()
    reporter = RichReporter(console)
    with reporting_to(reporter):
        _fake_run(64, "trials", lambda d: f"fused_matmul best {1 / d:.4f} ms")
    lines = [line for line in _screen(out.getvalue()) if line.strip()]
    assert len(lines) == 2, lines  # one line per stage once they are done
    search, bucket = lines
    assert search.lstrip().startswith("✓ search 3 kernel(s)") and "64/64 trials" in search
    assert search.count("━") == BAR_WIDTH  # a full bar
    assert "best 0.0156 ms" in search  # the latest figure: 1/64
    assert bucket.startswith("✓ tune bucket 1x16") and "━" not in bucket  # uncounted: no bar
    assert reporter.bars.tasks == [] and not reporter.bars.live.is_started


def test_a_search_that_needs_fewer_trials_still_ends_full_and_says_how_many():
    console, out = _terminal()
    with reporting_to(RichReporter(console)):
        _fake_run(64, "trials", lambda d: "", done_at_end=60)
    search = _screen(out.getvalue())[0]
    assert "60/64 trials" in search and search.count("━") == BAR_WIDTH


def test_a_200_step_training_run_shows_one_bar_with_its_loss_and_time_left():
    console, out = _terminal()
    reporter = RichReporter(console)
    with reporting_to(reporter), stage("train gpt", total=200, unit="steps") as bar:
        for step in range(1, 101):
            bar.advance(step, info=f"loss {5 - step / 100:.4f}")
        console.print(reporter.bars.make_tasks_table(reporter.bars.tasks))  # the live line at step 100
        for step in range(101, 201):
            bar.advance(step, info=f"loss {5 - step / 100:.4f}")
    lines = [line for line in _screen(out.getvalue()) if line.strip()]
    assert "100/200 steps" in lines[0] and "loss 4.0000" in lines[0] and "s left" in lines[0]
    assert lines[0].count("━") == BAR_WIDTH // 2  # half full
    assert lines[-1].startswith("✓ train gpt") and "200/200 steps" in lines[-1] and "loss 3.0000" in lines[-1]
    assert lines[-1].count("━") == BAR_WIDTH and "left" not in lines[-1]


def test_off_a_terminal_the_stages_are_plain_lines():
    out = io.StringIO()
    with reporting_to(PlainReporter(out)):
        _fake_run(64, "trials", lambda d: f"best {1 / d:.4f} ms")
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["search 3 kernel(s)"] * 4 + ["tune bucket 1x16"]
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in lines[:3]] == ["25", "50", "75"]
    assert "64/64 trials, best 0.0156 ms, done in" in lines[3]
    assert "\x1b" not in out.getvalue() and "━" not in out.getvalue()


def test_a_failed_stage_leaves_the_error_sentence_alone():
    plain, (console, rich_out) = io.StringIO(), _terminal()
    for reporter in (PlainReporter(plain), RichReporter(console)):
        try:
            with reporting_to(reporter), stage("compile the decode graph"):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    assert plain.getvalue() == "" and _screen(rich_out.getvalue()) == []


def test_a_real_training_run_reports_its_steps_in_plain_lines(tmp_path, capsys):
    argv = ["train", "gpt", "--steps", "200", "--batch-size", "2", "--seq-len", "8", "--eval-every", "200",
            "--threads", "1", "-o", str(tmp_path / "gpt.safetensors")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert [line for line in err if line.startswith("train gpt: ")][-1].startswith("train gpt: 200/200 steps, loss ")
    assert sum("(50%)" in line for line in err) == 1
    assert "trained gpt to step 200" in captured.out
    assert not any(" forgeline." in line for line in err)  # no log lines by default


def test_the_main_build_on_a_terminal_shows_stages_then_the_table(tmp_path, capsys):
    """The README's command, as a newcomer sees it: at most 15 lines before the check table, no
    warning from torch or TVM, every stage matching eager; then `check` measures it again."""
    out = tmp_path / "gpt-moe"
    screen = _run_on_a_terminal([FORGELINE, "build", "gpt-moe", "--preset", "tiny", "-o", str(out)])
    table = next(i for i, line in enumerate(screen) if line.startswith("stage vs eager"))
    before = [line for line in screen[:table] if line.strip()]
    assert 5 <= len(before) <= 15, before
    assert all(line.startswith("✓ ") for line in before[:-1]) and before[-1].startswith("built gpt-moe/tiny")
    assert not re.search(r"warning|torchvision|segfault", "\n".join(screen), re.IGNORECASE), screen
    rows = "\n".join(screen[table:])
    assert "onnxruntime" in rows and "tvm/cpu-" in rows and "routing.0" in rows
    assert screen[-1] == "all stages match eager PyTorch"
    assert main(["-q", "check", str(out)]) == 0
    checked = capsys.readouterr().out
    assert checked.startswith("stage vs eager")  # -q: the table alone
    # golden and fresh cases were both measured: the table's rows carry max abs errors
    assert checked.count("pass") >= 4 and "FAIL" not in checked


def test_quiet_prints_the_table_alone_and_verbose_prints_the_logs(tmp_path):
    quiet = subprocess.run([FORGELINE, "-q", "build", "gpt", "--no-generation-graphs", "-o", str(tmp_path / "a")],
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == ""  # no stage lines, no exporter or TVM warnings
    assert quiet.stdout.startswith("stage vs eager") and quiet.stdout.rstrip().endswith("match eager PyTorch")
    verbose = subprocess.run([FORGELINE, "-v", "export", "gpt", "--no-generation-graphs", "-o", str(tmp_path / "b")],
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "forgeline.export.onnx_export: exporting GPT to ONNX" in verbose.stderr  # forgeline's INFO logs
    assert "torchvision is not installed" in verbose.stderr  # and the exporter's warnings, shown under -v
    assert "export gpt/tiny to ONNX: done in" in verbose.stderr  # plain stage lines beside the logs


def _run_on_a_terminal(argv: list[str]) -> list[str]:
    """Run argv with stdout and stderr on a pseudo-terminal; the screen's lines once it is done."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=600) == 0, b"".join(chunks)[-3000:]
    return _screen(b"".join(chunks).decode(errors="replace"))


def _screen(text: str) -> list[str]:
    """The lines a terminal shows once ``text`` is written: carriage returns, line feeds, cursor-up
    and erase-line codes applied (what rich's live display uses), other escape codes dropped."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", text):
        if token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token.endswith("K"):
                lines[row] = "" if token == "\x1b[2K" else lines[row][:col]
        elif token:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_work_past_its_plan_raises_the_total():
    out = io.StringIO()
    with reporting_to(PlainReporter(out)), stage("search 3 kernel(s)", total=16, unit="trials") as bar:
        bar.advance(18)
    assert "search 3 kernel(s): 18/18 trials, done in" in out.getvalue()

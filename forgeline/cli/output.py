"""What the commands print: tables, stage results, the parity report, tuned buckets."""

from __future__ import annotations


def print_stages(manifest) -> None:
    from forgeline.runtime.parity import routing_note

    for stage in manifest.stages.values():
        routing = routing_note(stage)
        print(f"  {stage.stage}: {'pass' if stage.passed else 'FAIL'} vs {manifest.reference}"
              + (f" ({routing})" if routing else ""))


def print_report(report) -> int:
    from forgeline.runtime.parity import routing_note, summarize

    rows = []
    for stage in report.stages:
        tol = stage.tolerance
        for output, (max_abs, max_rel, ok) in summarize(stage).items():
            exact = output.startswith("routing")  # routing.* and the flip summary
            rows.append((stage.stage, output, f"{max_abs:.2e}", f"{max_rel:.2e}",
                         "exact" if exact else f"{tol.atol:g}/{tol.rtol:g}", "pass" if ok else "FAIL"))
    reference = report.reference
    print_table((f"stage vs {reference}", "output", "max abs", "max rel", "atol/rtol", "result"), rows)
    for stage in report.stages:  # a reduced-precision MoE build: its routing flips, counted
        if routing_note(stage):
            print(f"{stage.stage}: {routing_note(stage)}")
    for stage, why in report.skipped.items():
        print(f"{stage}: not run on this host ({why})")
    if report.note:
        print(f"reference: {report.note}")
    print(f"all stages match {reference}" if report.passed else f"some stages do NOT match {reference}")
    return 0 if report.passed else 1


def print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())


def print_buckets(manifest) -> None:
    for build in manifest.builds.values():
        for key, bucket in build.buckets.items():
            stage = manifest.stages.get(f"tvm/{build.tag}/{key}")
            check = "pass" if stage and stage.passed else "not checked" if stage is None else "FAIL"
            print(f"bucket {key}: {bucket['lib']}, {bucket['trials']} trials run "
                  f"({bucket.get('reused_trials', 0)} reused), {len(bucket['tasks_tuned'])} kernels tuned, "
                  f"{len(bucket['tasks_default'])} at defaults, {len(bucket.get('gemm_schedule', []))} "
                  f"matmuls on the GEMM schedule, {bucket['tuning_seconds']:.1f} s; "
                  f"vs ONNX Runtime: {check}")

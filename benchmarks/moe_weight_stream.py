"""The int8 grouped expert GEMM alone, with its weights in cache and out of it.

An MoE build at E experts runs each expert's FFN on the rows the expert took
(compile/cpu/int8_moe.py). With expert choice the rows per expert shrink as E grows
(``capacity_factor x tokens / E``), so the multiply-adds stay the same while the weight bytes grow
with E. This script times that kernel, one GEMM of ``--experts`` experts x ``--rows`` rows each,
two ways in one process:

- **hot**: one set of weights called again and again, so they stay in the caches;
- **cold**: ``--copies`` sets cycled through (``--copies`` x the weight bytes, 320 MiB at the
  defaults), so every call streams its weights from memory, as a whole model's call does.

The gap between the two is what streaming the weights costs; the hot time is the kernel's
compute. TVM's thread pool takes every core, as the runtime sets it.

    python benchmarks/moe_weight_stream.py --experts 32 --rows 8 --shape 1024x256
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def build(k: int, n: int):
    """The grouped int8 kernel an int8 build of this host runs, compiled for the host."""
    import tvm

    from forgeline.compile.cpu.int8 import ISAS, VNNI
    from forgeline.compile.cpu.int8_moe import grouped_int8_kernel
    from forgeline.compile.precision import int8_isa
    from forgeline.compile.targets import host_cpu_name
    from forgeline.runtime.host import cpu_core_count, read_cpu_features

    isa = int8_isa(read_cpu_features(), host_cpu_name())
    isa = ISAS.get(isa.name, VNNI)  # as compile/cpu/int8_layers.int8_experts: AMX hosts run VNNI experts
    func = grouped_int8_kernel(k, n, isa).with_attr("global_symbol", "main")
    target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name(), "num-cores": cpu_core_count()})
    return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"], isa


def argument_sets(isa, experts: int, rows: int, k: int, n: int, copies: int):
    """``copies`` argument lists that differ in their weight panels only, and the fp32 weights."""
    import tvm

    from forgeline.compile.cpu.int8_moe import TILE_ROWS, pack_expert_weights

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((experts, k, n)) * 0.05).astype(np.float32)
    panels, scales, comp = pack_expert_weights(weight, isa)
    tiles_per_expert = -(-rows // TILE_ROWS)
    tiles = np.array([(e, min(TILE_ROWS, rows - t * TILE_ROWS)) for e in range(experts)
                      for t in range(tiles_per_expert)], np.int64)
    a = rng.standard_normal((len(tiles) * TILE_ROWS, k)).astype(np.float32)
    shared = [tvm.runtime.tensor(x) for x in (a, scales, comp, np.zeros((experts, 1, n), np.float32), tiles)]
    out = tvm.runtime.tensor(np.zeros((len(tiles) * TILE_ROWS, n), np.float32))
    sets = [[shared[0], tvm.runtime.tensor(panels.copy()), *shared[1:], out] for _ in range(copies)]
    return sets, panels.nbytes


def time_calls(fn, sets, rounds: int, calls: int) -> list[float]:
    """Per-call seconds of each round; call i uses ``sets[i % len(sets)]``."""
    for args in sets:
        fn(*args)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(calls):
            fn(*sets[i % len(sets)])
        samples.append((time.perf_counter() - start) / calls)
    return samples


def main(argv: list[str] | None = None) -> None:
    from forgeline.compile.targets import host_cpu_name
    from forgeline.runtime.backends.environ import allow_tvm_threads
    from forgeline.runtime.host import cpu_core_count

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--rows", type=int, default=8, help="rows (tokens) per expert")
    p.add_argument("--shape", default="1024x256", help="K x N of each expert's weight")
    p.add_argument("--copies", type=int, default=40, help="weight sets the cold calls cycle through")
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    k, n = (int(x) for x in args.shape.split("x"))
    allow_tvm_threads(cpu_core_count())

    fn, isa = build(k, n)
    sets, nbytes = argument_sets(isa, args.experts, args.rows, k, n, args.copies)
    hot, cold = [], []
    for _ in range(args.rounds):  # interleaved, so that both see the same machine
        hot += time_calls(fn, sets[:1], 1, 48)
        cold += time_calls(fn, sets, 1, 2 * args.copies)
    print(f"{host_cpu_name()}, {cpu_core_count()} threads, {isa.name} kernel, TVM_NUM_THREADS="
          f"{os.environ.get('TVM_NUM_THREADS')}: {args.experts} experts x {args.rows} rows, {k}x{n}, "
          f"{nbytes / 2**20:.1f} MiB of int8 weights per call")
    print("| weights | median us | best us | GB/s of weights (median) |\n|---|---|---|---|")
    for label, samples in (("hot (in cache)", hot), (f"cold ({args.copies} sets)", cold)):
        median = float(np.median(samples))
        print(f"| {label} | {median * 1e6:.0f} | {min(samples) * 1e6:.0f} | {nbytes / median / 1e9:.1f} |")


if __name__ == "__main__":
    main()

"""One sweep of 8 recipes on minilm (rank 1 and 0.5 by 2, 3, 4 and 8 bits, the full protocol), in
this process and on a local Ray cluster of 2 workers, side by side, each run in a new interpreter,
alternating, ROUNDS times; medians.

    python benchmarks/cluster.py [--rounds 3] [--workers 2]

Prints, for each: the wall time from the start to the last result, split into starting the
cluster, loading the model (per worker, in parallel) and the sweep itself; the speedup, overall
and of the sweep alone; and the overhead per recipe of the cluster (its start and the loading,
spread over the recipes, and the scheduling: the sweep's wall time on the workers less the
evaluations' own time divided among them).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RANKS, BITS = [1, 0.5], [2, 3, 4, 8]


def one(where: str, workers: int) -> dict:
    """One run in this interpreter: {'start_s', 'load_s', 'sweep_s', 'total_s', 'busy_s'}."""
    t0 = time.perf_counter()
    from engine.studies import sweep
    from engine.studies.runner import Local, gather

    jobs = sweep.jobs(sweep.grid(RANKS, BITS, [0]))
    if where == "local":
        from engine.drivers.explorer import Explorer

        t1 = time.perf_counter()
        runner = Local(Explorer.open("minilm", "cpu"))
        t2 = time.perf_counter()
    else:
        import ray

        from engine.cluster.ray_workers import Cluster

        folder = tempfile.mkdtemp(prefix="bench-ray-")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=folder, log_to_driver=False)
        t1 = time.perf_counter()
        runner = Cluster.start("auto", "minilm", "cpu", workers=workers)
        t2 = time.perf_counter()
    rows = gather(runner, sweep.point_task, jobs)
    t3 = time.perf_counter()
    runner.close()
    if where != "local":
        ray.shutdown()
    busy = sum(r["apply_s"] + r["evaluate_s"] for r in rows.values())
    return {"start_s": t1 - t0, "load_s": t2 - t1, "sweep_s": t3 - t2, "total_s": t3 - t0, "busy_s": busy,
            "recipes": len(rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--one", choices=["local", "cluster"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.workers)))
        return
    from engine.hardware.machine import header

    print(header("cpu"))
    runs = {"local": [], "cluster": []}
    for r in range(args.rounds):
        for where in runs:
            out = subprocess.run([sys.executable, __file__, "--one", where, "--workers", str(args.workers)],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                sys.exit(f"{where} failed: {out.stderr.strip().splitlines()[-1]}")
            runs[where].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {where:<8} " + "  ".join(f"{k} {v:.2f}" for k, v in runs[where][-1].items()
                                                           if k.endswith("_s")), flush=True)
    med = {w: {k: statistics.median(x[k] for x in xs) for k in xs[0]} for w, xs in runs.items()}
    lo, cl, n = med["local"], med["cluster"], int(med["local"]["recipes"])
    print(f"\nmedians of {args.rounds} rounds, {n} recipes (minilm, full protocol):")
    print(f"{'':<22}{'start':>8}{'load':>8}{'sweep':>8}{'total':>8}")
    print(f"{'in this process':<22}{lo['start_s']:>8.2f}{lo['load_s']:>8.2f}{lo['sweep_s']:>8.2f}{lo['total_s']:>8.2f}")
    print(f"{f'{args.workers} Ray workers':<22}{cl['start_s']:>8.2f}{cl['load_s']:>8.2f}{cl['sweep_s']:>8.2f}"
          f"{cl['total_s']:>8.2f}")
    print(f"speedup: {lo['total_s'] / cl['total_s']:.2f}x overall, {lo['sweep_s'] / cl['sweep_s']:.2f}x for the sweep "
          f"alone (goal: 1.6x)")
    sched = cl["sweep_s"] - cl["busy_s"] / args.workers
    print(f"cluster overhead per recipe: {(cl['start_s'] + cl['load_s'] - lo['start_s'] - lo['load_s']) / n:.2f} s of "
          f"start and loading, {sched / n:.3f} s of scheduling; an evaluation took {lo['busy_s'] / n:.2f} s in this "
          f"process and {cl['busy_s'] / n:.2f} s on a worker of {os.cpu_count() // args.workers} thread(s)")


if __name__ == "__main__":
    main()

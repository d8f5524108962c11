"""Wall time of the local `training` pipeline, per phase and in total.

    python bench/bench_training.py --rows 100000 1000000

Each size runs the compiled spec under kfp.local in a fresh CAUCE_HOME (so no
cache or earlier model is reused); generating the demo table is timed apart.
Prints one table per size and a summary (phase share of the total, and the
1M/100k ratio per phase, which says how each phase scales).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

PHASES = ["extract", "validate", "transform", "train", "champion", "evaluate", "register", "deploy"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench(rows: int, workdir: Path) -> dict[str, float]:
    os.environ["CAUCE_HOME"] = str(workdir / f"home-{rows}")
    from cauce import demo, spec
    from cauce.components.deploy.executor import stop_local
    from cauce.local import run_spec
    from cauce.paths import local_database

    started = time.perf_counter()
    demo.ensure_demo_table(local_database(), rows)
    generate = time.perf_counter() - started
    spec_path = spec.compile_pipeline("training", workdir / "specs")
    endpoint = f"bench-{rows}"
    try:
        run = run_spec(spec_path, {"port": free_port(), "endpoint_name": endpoint})
    finally:
        stop_local(endpoint)
    times = {"generate data": generate}
    for phase in PHASES:
        task = run.task(phase)
        times[phase] = run.task_seconds.get(task.name, float("nan")) if task else float("nan")
    times["pipeline total"] = run.seconds
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="cauce-bench-") as tmp:
        for rows in args.rows:
            print(f"running training at {rows:,} rows ...", file=sys.stderr, flush=True)
            results[rows] = bench(rows, Path(tmp))
    names = list(next(iter(results.values())))
    header = f"{'phase':<16}" + "".join(f"{f'{r:,} rows':>16}" for r in results)
    if len(results) >= 2:
        first, last = list(results)[0], list(results)[-1]
        header += f"{f'ratio {last // first}x rows':>18}"
    print(header)
    for name in names:
        line = f"{name:<16}" + "".join(f"{results[r][name]:>14.1f} s" for r in results)
        if len(results) >= 2:
            line += f"{results[last][name] / results[first][name]:>17.1f}x"
        print(line)
    for rows, times in results.items():
        total = times["pipeline total"]
        shares = ", ".join(f"{p} {times[p] / total:.0%}" for p in PHASES if times[p] == times[p])
        print(f"share of the pipeline at {rows:,} rows: {shares}")


if __name__ == "__main__":
    main()

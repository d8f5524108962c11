"""validate's statistics and monitor's drift at scale: the in-process path against the Beam
combiners (components/validate/beam_statistics.py, components/monitor/beam_histograms.py) on
the FnApiRunner, on the same rows.

    .venv/bin/python bench/bench_scale.py [--rows 5000000] [--serving-rows 1000000] [--only validate|monitor|evaluate]

monitor: a baseline split of ``--rows`` rows against ``--serving-rows`` logged instances (JSON
Lines, 20 files, the serving window then drifting); prints each path's time and whether every
drift number is identical. ``fare`` has ~20 k distinct values (exact on both paths);
``fare_fine`` has more distinct values than the combiner counts exactly (EXACT_VALUES), so
its Jensen-Shannon divergence is TFDV-approximate on the Beam path: the difference is printed.

evaluate: a logistic regression bundle scored on ``--rows`` generated taxi trips, by
run_evaluate in process and by components/evaluate/dataflow.py's TFMA pipeline on the
FnApiRunner; prints each time and whether the example counts (overall and per slice), the
ROC points and the calibration buckets agree (mean scores to 1e-12 relative).

Prints the time of each path and whether the statistics are identical (counts, missing,
min/max, zeros, string frequencies, histograms and quantiles exactly; mean and standard
deviation to 1e-12 / 1e-9 relative, as parallel updates round differently). ``fare_fine``
has more distinct values than the quantile summary keeps (SUMMARY_SIZE): its quantiles
are approximate on both paths, and the largest difference between the two is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cauce import data  # noqa: E402
from cauce.components.validate.beam_statistics import compute_statistics_beam  # noqa: E402
from cauce.components.validate.statistics import compute_statistics  # noqa: E402


def make(root: Path, rows: int) -> str:
    rng = np.random.default_rng(1)
    chunk = 1_000_000
    for index, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        fare = rng.gamma(2.0, 6.0, n)
        table = pa.table({
            "fare": np.round(fare, 1),
            "fare_fine": np.round(fare, 4),
            "hour": rng.integers(0, 24, n),
            "payment": rng.choice(["card", "cash", "mobile", "unknown"], n, p=[0.5, 0.3, 0.15, 0.05]),
            "company": pa.array([f"c{i}" for i in rng.integers(0, 300, n)]),
        })
        data.write_split(root / f"part{index}", "train", table)
    out = root / "dataset"
    (out / "train").mkdir(parents=True)
    for index, part_dir in enumerate(sorted(root.glob("part*"))):
        for part in sorted((part_dir / "train").glob("*.parquet")):
            part.rename(out / "train" / f"part-{index:05d}.parquet")
    data.write_schema(out, table.schema, {"train": rows})
    return str(out)


def compare(beam_stats, local_stats) -> tuple[list[str], float]:
    """(features that differ beyond float rounding, largest histogram difference of fare_fine)."""
    differing, fine_gap = [], 0.0
    for got, want in zip(beam_stats.datasets[0].features, local_stats.datasets[0].features):
        name = got.path.step[0]
        if want.HasField("num_stats"):
            g, w = got.num_stats, want.num_stats
            if abs(g.mean - w.mean) > 1e-12 * abs(w.mean) or abs(g.std_dev - w.std_dev) > 1e-9 * abs(w.std_dev):
                differing.append(f"{name} (mean/std)")
            g.mean, g.std_dev = w.mean, w.std_dev
            if name == "fare_fine":
                for gh, wh in zip(g.histograms, w.histograms):
                    for gb, wb in zip(gh.buckets, wh.buckets):
                        fine_gap = max(fine_gap, abs(gb.sample_count - wb.sample_count), abs(gb.low_value - wb.low_value))
                continue
        if got != want:
            differing.append(name)
    return differing, fine_gap


def write_serving_logs(log_dir: Path, rows: int, files: int = 20) -> None:
    """``rows`` instances in the serving process's JSON Lines shape, 10 per request."""
    import json

    rng = np.random.default_rng(2)
    log_dir.mkdir(parents=True)
    per_file = rows // files
    for number in range(files):
        fare = rng.gamma(2.0, 7.0, per_file)  # drifted from the baseline's 6.0
        hour = rng.integers(0, 24, per_file)
        payment = rng.choice(["card", "cash", "mobile", "unknown"], per_file, p=[0.4, 0.4, 0.15, 0.05])
        company = rng.integers(0, 300, per_file)
        with open(log_dir / f"requests-{number:03d}.jsonl", "w") as handle:
            for start in range(0, per_file, 10):
                instances = [
                    json.dumps({"fare": round(float(fare[i]), 1), "fare_fine": round(float(fare[i]), 4),
                                "hour": int(hour[i]), "payment": str(payment[i]), "company": f"c{company[i]}"})
                    for i in range(start, min(start + 10, per_file))
                ]
                handle.write(json.dumps({
                    "endpoint": "local", "deployed_model_id": "m1", "logging_time": "2024-05-01T10:00:00Z",
                    "request_id": start, "request_payload": instances, "response_payload": [],
                }) + "\n")


def bench_monitor(root: Path, dataset: str, serving_rows: int) -> None:
    from cauce.components.monitor.executor import run_monitor

    started = time.perf_counter()
    write_serving_logs(root / "logs", serving_rows)
    print(f"monitor: {serving_rows:,} logged instances (written in {time.perf_counter() - started:.1f} s)")
    reports, seconds = {}, {}
    for runner in ("", "DirectRunner"):
        started = time.perf_counter()
        reports[runner] = run_monitor(
            dataset, "train", str(root / "logs"), str(root / f"monitor-{runner or 'local'}"),
            ["fare", "fare_fine", "hour"], ["payment", "company"], runner=runner,
        )
        seconds[runner] = time.perf_counter() - started
    local, on_beam = reports[""], reports["DirectRunner"]
    print(f"in-process monitor: {seconds['']:.1f} s")
    print(f"Beam combiners (FnApiRunner): {seconds['DirectRunner']:.1f} s "
          f"({seconds['DirectRunner'] / seconds['']:.2f}x the in-process time)")
    differing = [name for name in local["features"] if local["features"][name] != on_beam["features"][name]]
    for name in local["features"]:
        print(f"  {name}: {local['features'][name]['metric']} in-process {local['features'][name]['value']!r}, "
              f"Beam {on_beam['features'][name]['value']!r}")
    print(f"identical features: {'all except ' + str(differing) if differing else 'all'}; "
          f"approximate on Beam: {on_beam.get('approximate_features', [])}; "
          f"verdicts identical: {local['drifted_features'] == on_beam['drifted_features']}")


def bench_evaluate(root: Path, rows: int) -> None:
    import json

    import joblib
    from sklearn.linear_model import LogisticRegression

    from cauce.components.evaluate.dataflow import run_tfma_beam
    from cauce.components.evaluate.executor import run_evaluate
    from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC, generate_taxi_trips
    from cauce.features import FittedTransform
    from cauce.recipe import Recipe

    started = time.perf_counter()
    train = generate_taxi_trips(100_000, seed=1)
    fitted = FittedTransform.fit_table(Recipe.shorthand(DEMO_NUMERIC, DEMO_CATEGORICAL, 100, DEMO_LABEL), train, DEMO_LABEL)
    estimator = LogisticRegression(max_iter=500).fit(fitted.transform_table(train), train.column(DEMO_LABEL).to_numpy())
    model_dir = root / "model"
    model_dir.mkdir()
    joblib.dump(estimator, model_dir / "model.joblib")
    fitted.save(model_dir)
    (model_dir / "cauce_model.json").write_text(json.dumps({
        "framework": "sklearn", "label": DEMO_LABEL, "task": "binary_classification",
        "features": fitted.input_features, "metrics": {},
    }))
    dataset = root / "eval-dataset"
    chunk = 1_000_000
    for index, start in enumerate(range(0, rows, chunk)):
        part = generate_taxi_trips(min(chunk, rows - start), seed=10 + index)
        data.write_split(root / f"eval{index}", "eval", part)
    (dataset / "eval").mkdir(parents=True)
    for index, part_dir in enumerate(sorted(root.glob("eval[0-9]*"))):
        for part in sorted((part_dir / "eval").glob("*.parquet")):
            part.rename(dataset / "eval" / f"part-{index:05d}.parquet")
    data.write_schema(dataset, train.schema, {"eval": rows})
    print(f"evaluate: {rows:,} eval rows (generated in {time.perf_counter() - started:.1f} s)")
    slices = ["payment_type", "company"]
    import tensorflow_model_analysis  # noqa: F401 - imported before either path is timed

    started = time.perf_counter()
    summary = run_evaluate(str(model_dir), str(dataset), root / "evaluation", slice_features=slices, thresholds={"auc": 0.5})
    local_s = time.perf_counter() - started
    started = time.perf_counter()
    on_beam = run_tfma_beam(str(model_dir), str(dataset), "eval", slices, str(root / "evaluation-beam"))
    beam_s = time.perf_counter() - started
    counts = on_beam["example_counts"]
    same_counts = counts[None] == summary["metrics"]["example_count"] and all(
        counts[(entry["feature"], entry["value"])] == entry["metrics"]["example_count"] for entry in summary["slices"]
    )
    calibration_gap = max(
        abs(got["mean_score"] - want["mean_score"]) / abs(want["mean_score"])
        for got, want in zip(on_beam["calibration"], summary["calibration"])
    )
    same_calibration = [(b["count"], b["positive_rate"]) for b in on_beam["calibration"]] == [
        (b["count"], b["positive_rate"]) for b in summary["calibration"]
    ]
    print(f"in-process evaluate (scoring, exact metrics, TFMA): {local_s:.1f} s")
    print(f"TFMA pipeline on the FnApiRunner (scoring, grouping, TFMA, publish): {beam_s:.1f} s "
          f"({beam_s / local_s:.2f}x)")
    print(f"example counts identical (overall + {len(summary['slices'])} slices): {same_counts}; "
          f"ROC identical: {on_beam['roc'] == summary['roc']}; calibration counts and positive rates identical: "
          f"{same_calibration}; largest relative mean-score difference: {calibration_gap:.1e}")
    # The whole component path on Beam: scoring, exact metrics from mergeable per-slice
    # counts and TFMA in one job, published with its manifest; its evaluation.json must
    # equal the in-process one (but for where TFMA's output was published).
    started = time.perf_counter()
    run_evaluate(str(model_dir), str(dataset), root / "evaluation-runner", slice_features=slices,
                 thresholds={"auc": 0.5}, runner="DirectRunner")
    runner_s = time.perf_counter() - started
    in_process = json.loads((root / "evaluation" / "evaluation.json").read_text())
    with_runner = json.loads((root / "evaluation-runner" / "evaluation.json").read_text())
    differing = sorted(k for k in in_process if k != "tfma_output" and in_process[k] != with_runner.get(k))
    print(f"evaluate with runner=DirectRunner (exact metrics on Beam + TFMA + publish): {runner_s:.1f} s "
          f"({runner_s / local_s:.2f}x); evaluation.json identical but tfma_output: "
          f"{'yes' if not differing else 'no, differs in ' + str(differing)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--serving-rows", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["validate", "monitor", "evaluate"], default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        if args.only == "evaluate" or not args.only:
            bench_evaluate(root, args.rows)
            if args.only:
                return
        started = time.perf_counter()
        dataset = make(root, args.rows)
        print(f"rows: {args.rows:,}  (generated in {time.perf_counter() - started:.1f} s)")
        if args.only != "validate":
            bench_monitor(root, dataset, args.serving_rows)
        if args.only == "monitor":
            return
        started = time.perf_counter()
        local, _ = compute_statistics(dataset)
        local_s = time.perf_counter() - started
        started = time.perf_counter()
        on_beam = compute_statistics_beam(dataset, str(root / "work"))
        beam_s = time.perf_counter() - started
        differing, fine_gap = compare(on_beam, local)
        print(f"in-process statistics: {local_s:.1f} s")
        print(f"Beam combiner (FnApiRunner): {beam_s:.1f} s  ({beam_s / local_s:.2f}x the in-process time)")
        print(f"identical features: {'all except ' + str(differing) if differing else 'all'}"
              f"; fare_fine (> SUMMARY_SIZE distinct values) largest histogram difference: {fine_gap:g}")


if __name__ == "__main__":
    main()

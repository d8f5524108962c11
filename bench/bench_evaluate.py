"""Evaluate speed: our evaluation versus a plain default TFMA run, in the same
process on the same predictions; our metrics against scikit-learn's and TFMA's,
and our plots against TFMA's on every row.

    python bench/bench_evaluate.py --rows 1000000

The data: ``rows`` generated taxi trips scored by a model trained on 50 000 other
trips (the real transform + trainer); one slice feature (payment_type), the
training pipeline's default. "plain TFMA" is TFMA's documented model-agnostic
path: one example per row, unweighted, TFMA's own scalar metrics (AUC, ...) and
the same plots, run with the same local Beam runner. "cauce" is
components/evaluate/executor.py: exact metrics in numpy, and TFMA (plots) on one
weighted example per group of rows its plots cannot tell apart.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-plain", action="store_true", help="time only cauce's evaluation")
    args = parser.parse_args()

    from cauce import data
    from cauce.components.evaluate import executor
    from cauce.components.train.executor import run_train
    from cauce.components.transform.executor import run_transform
    from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC, generate_taxi_trips
    from cauce.model import load

    with tempfile.TemporaryDirectory(prefix="cauce-bench-eval-") as tmp:
        root = Path(tmp)
        train, evaluation = generate_taxi_trips(50_000, seed=1), generate_taxi_trips(args.rows, seed=2)
        raw = root / "raw"
        for split, table in (("train", train), ("eval", evaluation)):
            data.write_split(raw, split, table)
        data.write_schema(raw, train.schema, {"train": train.num_rows, "eval": evaluation.num_rows})
        run_transform(str(raw), DEMO_LABEL, DEMO_NUMERIC, DEMO_CATEGORICAL, str(root / "tx"), str(root / "fn"))
        run_train(str(root / "tx"), str(root / "fn"), str(root / "model"))
        import tensorflow_model_analysis  # noqa: F401 - import cost outside both timings

        started = time.perf_counter()
        ours = executor.run_evaluate(
            root / "model", raw, root / "ours", slice_features=["payment_type"], thresholds={"auc": 0.6}
        )
        ours_seconds = time.perf_counter() - started
        print(f"cauce evaluate: {args.rows:,} rows in {ours_seconds:.1f} s "
              f"({ours['tfma_examples']:,} weighted TFMA examples), {args.rows / ours_seconds:,.0f} rows/s")
        if args.skip_plain:
            return

        import numpy as np
        import tensorflow_model_analysis as tfma
        from sklearn.metrics import roc_auc_score
        from tensorflow_model_analysis.proto import config_pb2

        scores = load(root / "model").predict_scores(evaluation)
        labels = evaluation.column(DEMO_LABEL).to_numpy()
        plain_table = pa.table({
            DEMO_LABEL: evaluation.column(DEMO_LABEL),
            executor.PREDICTION_KEY: pa.array(scores),
            "payment_type": evaluation.column("payment_type"),
            executor.WEIGHT_KEY: pa.array(np.ones(evaluation.num_rows)),
        })
        config = executor.build_eval_config(DEMO_LABEL, [("payment_type",)], "binary")
        config.metrics_specs[0].metrics.extend(
            config_pb2.MetricConfig(class_name=name) for name in executor.SCALAR_METRICS if name != "ExampleCount"
        )
        executor.build_eval_config = lambda *_args, **_kw: config  # plain: TFMA's own metrics too
        started = time.perf_counter()
        plain = executor._run_tfma(plain_table, DEMO_LABEL, [("payment_type",)], root / "plain")
        plain_seconds = time.perf_counter() - started
        print(f"plain TFMA:     {args.rows:,} rows in {plain_seconds:.1f} s, {args.rows / plain_seconds:,.0f} rows/s")
        print(f"speed-up: {plain_seconds / ours_seconds:.1f}x")

        tfma_auc = next(
            item.value.double_value.value
            for m in tfma.load_metrics(str(root / "plain")) if not m.slice_key.single_slice_keys
            for item in m.metric_keys_and_values if item.key.name == "auc"
        )
        exact_auc = roc_auc_score(labels, scores)
        print(f"AUC: cauce {ours['metrics']['auc']:.9f}, scikit-learn {exact_auc:.9f}, TFMA's histogram {tfma_auc:.9f}")
        same_plots = ours["roc"] == plain["roc"]
        calibration_same = all(
            a["count"] == b["count"] and abs(a["mean_score"] - b["mean_score"]) < 1e-9
            for a, b in zip(ours["calibration"], plain["calibration"], strict=True)
        )
        print(f"ROC points identical: {same_plots}; calibration identical: {calibration_same}")
        print(json.dumps({"rows": args.rows, "cauce_s": round(ours_seconds, 1), "plain_tfma_s": round(plain_seconds, 1),
                          "auc_error_cauce": abs(ours["metrics"]["auc"] - exact_auc), "auc_error_tfma": abs(tfma_auc - exact_auc)}))

if __name__ == "__main__":
    main()

"""Evaluate speed: our TFMA evaluation versus a plain default TFMA run, in the same
process on the same predictions, and a check that both give the same numbers.

    python bench/bench_evaluate.py --rows 1000000

The data: ``rows`` generated taxi trips scored by a model trained on 50 000 other
trips (the real transform + trainer); one slice feature (payment_type), the
training pipeline's default. "plain TFMA" is TFMA's documented model-agnostic
path: one example per row, unweighted, the same EvalConfig metrics, run with the
same local Beam runner. "cauce" is components/evaluate/executor.py, which hands
TFMA one weighted example per group of rows TFMA cannot tell apart.
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

        scores = load(root / "model").predict_scores(evaluation)
        plain_table = pa.table({
            DEMO_LABEL: evaluation.column(DEMO_LABEL),
            executor.PREDICTION_KEY: pa.array(scores),
            "payment_type": evaluation.column("payment_type"),
            executor.WEIGHT_KEY: pa.array([1.0] * evaluation.num_rows),
        })
        started = time.perf_counter()
        plain = executor._run_tfma(plain_table, DEMO_LABEL, ["payment_type"], {"auc": {"lower_bound": 0.6}}, root / "plain")
        plain_seconds = time.perf_counter() - started
        print(f"plain TFMA:     {args.rows:,} rows in {plain_seconds:.1f} s, {args.rows / plain_seconds:,.0f} rows/s")
        print(f"speed-up: {plain_seconds / ours_seconds:.1f}x")

        worst = 0.0
        pairs = [("overall", ours["metrics"], plain["metrics"])]
        plain_slices = {(s["feature"], s["value"]): s["metrics"] for s in plain["slices"]}
        pairs += [(f"{s['feature']}={s['value']}", s["metrics"], plain_slices[(s["feature"], s["value"])]) for s in ours["slices"]]
        for where, a, b in pairs:
            for name in a:
                if a[name] is None and b[name] is None:
                    continue
                relative = abs(a[name] - b[name]) / max(abs(b[name]), 1e-12)
                worst = max(worst, relative)
                if relative > 1e-6:
                    print(f"  DIFFERENT {where} {name}: cauce {a[name]!r} plain {b[name]!r}")
        same_roc = ours["roc"] == plain["roc"] and ours["confusion_matrix"] == plain["confusion_matrix"]
        print(f"largest relative metric difference: {worst:.2e}; ROC and confusion matrix identical: {same_roc}")
        print(json.dumps({"rows": args.rows, "cauce_s": round(ours_seconds, 1), "plain_tfma_s": round(plain_seconds, 1)}))


if __name__ == "__main__":
    main()

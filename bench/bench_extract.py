"""Extract on the bigquery backend: Storage Read API against REST, in one run, through bqemulator.

    .venv/bin/python bench/bench_extract.py [--rows 1000000]

One emulator holds ``--rows`` generated taxi trips (loaded once, as Parquet through a
resumable upload, like the test fixture). The same extract (80/20 split, the result
staged in a table both paths read) runs with ``read_api="rest"`` (the baseline) and
``read_api="storage"`` (Arrow streams over gRPC), alternating, ``--repeats`` times
each. Prints rows/s end to end and for the read phase alone, and storage/REST ratios.

Both paths read the same staged table, so the difference is the read path; the
emulator serves both from DuckDB on this machine, so absolute figures say little
about BigQuery, the ratio more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures, when run as a script

from tests.fixtures.bigquery_emulator import default_home, start_bigquery_emulator  # noqa: E402

TABLE = "bench.taxi_trips"
STAGING_DATASET = "bench_staging"


def extract_once(emulator, read_api: str, output_dir: Path) -> tuple[float, dict]:
    from cauce.components.extract.executor import run_extract
    from cauce.demo import DEMO_KEY

    started = time.perf_counter()
    result = run_extract(
        source=TABLE,
        key_column=DEMO_KEY,
        output_dir=output_dir,
        target="google-cloud",
        project=emulator.project,
        bigquery_location=emulator.location,
        bigquery_api_endpoint=emulator.endpoint,
        storage_api_endpoint=emulator.grpc_endpoint,
        read_api=read_api,
        staging_dataset=STAGING_DATASET,
        api_retry_timeout_s=30.0,
        query_timeout_s=600.0,
    )
    seconds = time.perf_counter() - started
    if result.metadata["read_api"] != read_api:
        raise SystemExit(
            f"asked for read_api={read_api!r}, extract read over {result.metadata['read_api']!r}"
        )
    return seconds, result.metadata


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows in the emulator table (default 1 000 000)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="extracts per read path (default 2)")
    args = parser.parse_args()

    from cauce.data import read_split
    from cauce.demo import generate_taxi_trips

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as workdir:
        work = Path(workdir)
        with start_bigquery_emulator(default_home(), work / "emulator") as emulator:
            started = time.perf_counter()
            trips = generate_taxi_trips(args.rows)
            emulator.load_table(TABLE, trips, timeout_s=1800.0)
            emulator.client().create_dataset(STAGING_DATASET, exists_ok=True, timeout=30)
            print(
                f"{args.rows:,} rows generated and loaded into bqemulator in {time.perf_counter() - started:.1f} s"
            )

            runs: dict[str, list[tuple[float, dict]]] = {"rest": [], "storage": []}
            for repeat in range(args.repeats):
                for read_api in runs:  # alternating, so drift in the machine's load hits both paths
                    output = work / f"{read_api}-{repeat}"
                    runs[read_api].append(extract_once(emulator, read_api, output))
            rows = {api: {run[1]["rows"] for run in api_runs} for api, api_runs in runs.items()}
            if not rows["rest"] == rows["storage"] == {args.rows}:
                raise SystemExit(f"row counts differ: {rows}")
            first = {api: work / f"{api}-0" for api in runs}
            for split in ("train", "eval"):
                rest, storage = (
                    read_split(first[api], split).sort_by("unique_key") for api in ("rest", "storage")
                )
                if not rest.equals(storage):
                    raise SystemExit(f"split {split!r} differs between the REST and Storage Read paths")

    print(f"\nextract of {args.rows:,} rows, median of {args.repeats} (same rows on both paths: checked)")
    print(f"{'read path':<10} {'end to end s':>12} {'rows/s':>12} {'read s':>8} {'read rows/s':>12}")
    medians = {}
    for api, api_runs in runs.items():
        total = statistics.median(run[0] for run in api_runs)
        read = statistics.median(run[1]["read_seconds"] for run in api_runs)
        medians[api] = (total, read)
        print(f"{api:<10} {total:>12.2f} {args.rows / total:>12,.0f} {read:>8.2f} {args.rows / read:>12,.0f}")
    (rest_total, rest_read), (storage_total, storage_read) = medians["rest"], medians["storage"]
    print(
        f"\nstorage / REST speed-up: end to end {rest_total / storage_total:.2f}x, read phase {rest_read / storage_read:.2f}x"
    )


if __name__ == "__main__":
    main()

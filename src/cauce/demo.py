"""The embedded demo data: a seeded, realistic taxi-trip table.

Shaped like the public Chicago taxi trips table people use with Vertex and TFX
samples: numeric and categorical features, missing values, timestamps, and a
binary label (``tipped_well``: tip above 20 % of the fare) that really depends
on the features, so a trained model has something to find.

Only the demo and its pipeline defaults know these column names; the
components are told the source, label and features by parameters.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

DEMO_TABLE = "demo.taxi_trips"
DEMO_KEY = "unique_key"
DEMO_LABEL = "tipped_well"
DEMO_NUMERIC = ["trip_miles", "trip_seconds", "fare", "pickup_hour", "pickup_latitude"]
DEMO_CATEGORICAL = ["payment_type", "company", "pickup_community_area"]
DEMO_MODEL = "taxi-tips"
# The training pipeline's parameters for the demo table (`cauce demo`, and `cauce run
# training` without a source); the pipeline's own defaults name no demo column.
DEMO_PARAMETERS = {
    "source": DEMO_TABLE,
    "key_column": DEMO_KEY,
    "label": DEMO_LABEL,
    "numeric_features": DEMO_NUMERIC,
    "categorical_features": DEMO_CATEGORICAL,
    "slice_features": ["payment_type"],
    "thresholds": {"auc": 0.7},
    "change_thresholds": {"auc": 0.0},
    "model_name": DEMO_MODEL,
    "endpoint_name": DEMO_MODEL,
}

# The monitoring pipeline's parameters for the demo's model (`cauce demo`); its own
# defaults name no demo column either.
DEMO_MONITORING_PARAMETERS = {"numeric_features": DEMO_NUMERIC, "categorical_features": DEMO_CATEGORICAL}

_PAYMENT = np.array(["Credit Card", "Cash", "Mobile", "Prcard", "No Charge", "Unknown"])
_PAYMENT_P = np.array([0.46, 0.38, 0.08, 0.05, 0.02, 0.01])
_PAYMENT_TIP = np.array([1.6, -2.4, 1.2, 0.4, -3.0, -1.0])
_COMPANIES = np.array(
    [
        "Flash Cab", "Taxi Affiliation Services", "Sun Taxi", "City Service",
        "Chicago Carriage Cab Corp", "Medallion Leasin", "Globe Taxi", "Blue Ribbon Taxi",
        "Choice Taxi Association", "Star North Management", "Top Cab Affiliation",
        "5 Star Taxi", "Nova Taxi Affiliation", "Setare Inc", "KOAM Taxi Association",
    ]
)


def generate_taxi_trips(rows: int = 100_000, seed: int = 42) -> pa.Table:
    """Return ``rows`` synthetic trips; the same (rows, seed) always gives the same table."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    offsets = np.sort(rng.integers(0, 365 * 24 * 3600, rows))
    pickup = np.datetime64(start.replace(tzinfo=None), "s") + offsets.astype("timedelta64[s]")
    hour = ((offsets // 3600) % 24).astype(np.int64)

    miles = np.round(rng.gamma(1.6, 2.3, rows), 2)
    seconds = np.maximum(60, (miles * rng.normal(190, 40, rows) + rng.normal(240, 90, rows))).astype(np.int64)
    fare = np.round(3.25 + 2.25 * miles + 0.004 * seconds + rng.normal(0, 1.0, rows).clip(-2, 6), 2)
    latitude = np.round(41.88 + rng.normal(0, 0.06, rows), 6)

    payment = _PAYMENT[rng.choice(len(_PAYMENT), rows, p=_PAYMENT_P)]
    company_p = rng.dirichlet(np.full(len(_COMPANIES), 0.8))
    company_idx = rng.choice(len(_COMPANIES), rows, p=company_p)
    company = _COMPANIES[company_idx]
    area = rng.choice(np.arange(1, 78), rows)

    # The label: mostly payment type, then trip length, late-night rides and company.
    pay_effect = _payment_effect(payment)
    logit = (
        pay_effect
        + 0.08 * np.minimum(miles, 20)
        + np.where((hour >= 22) | (hour <= 3), 0.5, 0.0)
        + (company_idx % 5 - 2) * 0.15
        + rng.normal(0, 1.6, rows)
        - 0.3
    )
    label = (logit > 0).astype(np.int64)

    # Missing values, as in the real table.
    miles_masked = np.where(rng.random(rows) < 0.03, np.nan, miles)
    company_mask = rng.random(rows) < 0.05
    area_mask = rng.random(rows) < 0.08

    return pa.table(
        {
            DEMO_KEY: pa.array([f"trip-{seed}-{i:08d}" for i in range(rows)], pa.string()),
            "trip_start_timestamp": pa.array(pickup, pa.timestamp("us", tz="UTC")),
            "trip_miles": pa.array(miles_masked, pa.float64(), from_pandas=True),
            "trip_seconds": pa.array(seconds, pa.int64()),
            "fare": pa.array(fare, pa.float64()),
            "pickup_hour": pa.array(hour, pa.int64()),
            "pickup_latitude": pa.array(latitude, pa.float64()),
            "payment_type": pa.array(payment, pa.string()),
            "company": pa.array(company, pa.string(), mask=company_mask),
            "pickup_community_area": pa.array(area.astype(str), pa.string(), mask=area_mask),
            DEMO_LABEL: pa.array(label, pa.int64()),
        }
    )


def _payment_effect(payment: np.ndarray) -> np.ndarray:
    effect = np.zeros(len(payment))
    for name, tip in zip(_PAYMENT, _PAYMENT_TIP):
        effect[payment == name] = tip
    return effect


def ensure_demo_table(database: str | Path, rows: int = 100_000, seed: int = 42) -> bool:
    """Load the demo table into the local engine unless it already holds ``rows`` rows.

    Returns True when the table was (re)generated.
    """
    import duckdb

    Path(database).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database))
    try:
        schema, table = DEMO_TABLE.split(".")
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchone()[0]
        if exists:
            current = con.execute(f"SELECT count(*) FROM {DEMO_TABLE}").fetchone()[0]  # noqa: S608 - constant name
            if current == rows:
                return False
        # Registered by name, not found by DuckDB in this frame's variables: a frame's
        # variables read from C stay referenced until the frame ends.
        con.register("generated_trips", generate_taxi_trips(rows, seed))
        try:
            con.execute(f"CREATE OR REPLACE TABLE {DEMO_TABLE} AS SELECT * FROM generated_trips")  # noqa: S608 - constant names
        finally:
            con.unregister("generated_trips")
        return True
    finally:
        con.close()
        # The process that made the table goes on to run the pipeline (`cauce run`):
        # Arrow's allocator would keep the freed table's pages (~80 MB at 1 M rows).
        import pyarrow

        pyarrow.default_memory_pool().release_unused()

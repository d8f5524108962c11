"""The fitted transform: statistics, fitting, and the one apply path shared by
training and serving (no training/serving skew)."""

import numpy as np
import pyarrow as pa
import pytest

from cauce.artifacts import CauceError
from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC, generate_taxi_trips
from cauce.features import FittedTransform, PhaseAccumulator
from cauce.recipe import Recipe

# numeric_features + categorical_features with top_k=10: step 1 z-scores, step 2 one-hots.
SHORTHAND = Recipe.shorthand(DEMO_NUMERIC, DEMO_CATEGORICAL, 10, DEMO_LABEL)


@pytest.fixture(scope="module")
def trips():
    return generate_taxi_trips(3000, seed=3)


@pytest.fixture(scope="module")
def fitted(trips):
    return FittedTransform.fit_table(SHORTHAND, trips, DEMO_LABEL)


def test_statistics_merge_equals_single_pass(trips):
    whole = PhaseAccumulator(SHORTHAND, {}, 0).add_batch(trips)
    parts = PhaseAccumulator(SHORTHAND, {}, 0)
    for batch in trips.to_batches(max_chunksize=700):
        parts.merge(PhaseAccumulator(SHORTHAND, {}, 0).add_batch(batch))
    fitted_whole, fitted_parts = whole.fit(), parts.fit()
    for name in DEMO_NUMERIC:
        assert fitted_parts[1][name] == pytest.approx(fitted_whole[1][name])
    assert fitted_parts[2] == fitted_whole[2]  # the vocabularies, exactly


def test_fit_matches_numpy(trips, fitted):
    miles = trips.column("trip_miles").to_numpy(zero_copy_only=False)
    zscore, vocabulary = fitted.states[1], fitted.states[2]
    assert zscore["trip_miles"]["mean"] == pytest.approx(np.nanmean(miles))
    assert zscore["trip_miles"]["std"] == pytest.approx(np.nanstd(miles))
    assert vocabulary["payment_type"]["vocabulary"][0] == "Credit Card"  # the most frequent value comes first
    assert len(vocabulary["pickup_community_area"]["vocabulary"]) == 10


def test_training_and_serving_encode_identically(trips, fitted, tmp_path):
    """The skew test: the same rows encoded as an Arrow batch (training, batch
    prediction) and as JSON instances (serving) give identical features."""
    fitted.save(tmp_path)
    reloaded = FittedTransform.load(tmp_path)
    rows = trips.slice(0, 500)
    instances = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items() if k in reloaded.input_features}
                 for row in rows.to_pylist()]
    np.testing.assert_array_equal(fitted.transform_table(rows), reloaded.transform_instances(instances))


def test_missing_values_and_unseen_categories(fitted):
    table = pa.table({
        **{name: pa.array([None], pa.float64()) for name in DEMO_NUMERIC},
        **{name: pa.array(["never-seen"], pa.string()) for name in DEMO_CATEGORICAL},
    })
    row = fitted.transform_table(table)[0]
    assert not row[: len(DEMO_NUMERIC)].any()  # missing -> mean -> 0
    oov_columns = [i for i, name in enumerate(fitted.feature_names) if name.endswith("=<OOV>")]
    assert row[oov_columns].tolist() == [1.0] * len(DEMO_CATEGORICAL)
    assert row.sum() == len(DEMO_CATEGORICAL)


def test_request_errors_name_the_field(fitted, trips):
    instance = {k: v for k, v in trips.slice(0, 1).to_pylist()[0].items() if k in fitted.input_features}
    with pytest.raises(CauceError, match="missing field 'fare'"):
        fitted.transform_instances([{k: v for k, v in instance.items() if k != "fare"}])
    with pytest.raises(CauceError, match="'trip_seconds' must be a number, got 'soon'"):
        fitted.transform_instances([dict(instance, trip_seconds="soon")])
    with pytest.raises(CauceError, match="'company' must be a string"):
        fitted.transform_instances([dict(instance, company=["a"])])


def test_non_numeric_value_in_numeric_column_is_named():
    recipe = Recipe.shorthand(["fare"], [], label="label")
    with pytest.raises(CauceError, match="numeric feature 'fare' holds a non-numeric value 'twelve'"):
        FittedTransform.fit_table(recipe, pa.table({"fare": pa.array(["1.5", "twelve"]), "label": [0, 1]}), "label")


def test_all_missing_numeric_feature_cannot_be_fitted():
    recipe = Recipe.shorthand(["fare"], [], label="label")
    with pytest.raises(CauceError, match="'fare' has no values"):
        FittedTransform.fit_table(recipe, pa.table({"fare": pa.array([None, None], pa.float64()), "label": [0, 1]}), "label")


ANALYZERS_ONLY = """
steps:
  - {type: zscore, columns: [fare, miles]}
  - {type: vocabulary, columns: [payment, area], top_k: 3}
  - {type: min_max, columns: [seconds]}
  - {type: vocabulary, columns: [company], encoding: index}
  - {type: bucketize, columns: [fare], buckets: 4, method: exact, suffix: _bucket}
  - {type: bucketize, columns: [miles], buckets: 3, encoding: one_hot}
"""


def _analyzer_rows(n: int) -> pa.Table:
    rng = np.random.default_rng(11)
    return pa.table({
        "fare": pa.array([None if i % 7 == 0 else float(v) for i, v in enumerate(np.round(rng.gamma(2, 6, n), 2))]),
        "miles": pa.array(np.round(rng.gamma(2, 2, n), 3)),
        "seconds": pa.array([None if i % 5 == 0 else int(v) for i, v in enumerate(rng.integers(60, 3000, n))]),
        "payment": pa.array([None if i % 6 == 0 else ["Cash", "Card", "Mobile", "Voucher", "Other"][i % 5] for i in range(n)]),
        "area": pa.array(rng.integers(1, 9, n)),  # an integer column used as categorical
        "company": pa.array([["Flash", "Sun", "City"][i % 3] for i in range(n)]),
    })


def test_request_sizes_encode_like_the_table_for_every_analyzer():
    """Small requests take the scalar path, larger ones the gathered one (all fields of
    all instances at once), and an odd value the per-column path: each must match the
    Arrow table path bit for bit, with nulls, unseen values and integer categories."""
    table = _analyzer_rows(300)
    transform = FittedTransform.fit_table(ANALYZERS_ONLY, table.slice(0, 200))
    rows = table.slice(200)
    instances = rows.to_pylist()
    instances[3]["payment"] = "never-seen"
    instances[40]["miles"] = None
    expected = transform.transform_table(pa.Table.from_pylist(instances, schema=rows.schema))
    for size in (1, 2, 8, 9, 32, len(instances)):
        np.testing.assert_array_equal(transform.transform_instances(instances[:size]), expected[:size])
        np.testing.assert_array_equal(transform._transform_by_column(instances[:size]), expected[:size])
    np.testing.assert_array_equal(transform._transform_many(instances), expected)  # no fallback taken
    # numbers sent as strings take the per-column path and give the same features
    as_strings = [dict(instance, fare=None if instance["fare"] is None else str(instance["fare"])) for instance in instances]
    np.testing.assert_array_equal(transform.transform_instances(as_strings), expected)


def test_request_errors_of_larger_requests_name_instance_and_field():
    table = _analyzer_rows(200)
    transform = FittedTransform.fit_table(ANALYZERS_ONLY, table)
    instances = table.slice(0, 20).to_pylist()
    with pytest.raises(CauceError, match="instance 12 is missing field 'seconds'"):
        transform.transform_instances(instances[:12] + [{k: v for k, v in instances[12].items() if k != "seconds"}])
    with pytest.raises(CauceError, match="instance 15 field 'miles' must be a number, got 'far'"):
        transform.transform_instances([*instances[:15], dict(instances[15], miles="far"), *instances[16:]])
    with pytest.raises(CauceError, match="instance 9 field 'area' must be a string, got true"):
        transform.transform_instances([*instances[:9], dict(instances[9], area=True), *instances[10:]])
    with pytest.raises(CauceError, match=r"instance 10 field 'company' must be a string, got \['Sun'\]"):
        transform.transform_instances([*instances[:10], dict(instances[10], company=["Sun"]), *instances[11:]])
    with pytest.raises(CauceError, match=r"instance 11 field 'fare' must be a number, got \[1.0\]"):
        transform.transform_instances([*instances[:11], dict(instances[11], fare=[1.0]), *instances[12:]])

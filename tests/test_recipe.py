"""Declarative transform recipes: validation, each step and analyzer on small data
(exact values), order-independent accumulators, v1 artifacts, the component under
kfp.local, and the training/serving skew test over every step type."""

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.features import FittedTransform, PhaseAccumulator
from cauce.recipe import RECIPE_SCHEMA, STEP_SCHEMAS, Expression, QuantileSketch, Recipe

# A recipe with every step type; the skew test and the kfp.local test run it.
EVERY_STEP = """
description: every step type once
steps:
  - {type: rename_columns, mapping: {area: community_area}}
  - {type: replace_text, columns: [company], pattern: " Cab$", replacement: ""}
  - {type: replace_text, columns: [company], pattern: "^(\\\\w+) Taxi.*$", replacement: "\\\\1", regex: true}
  - {type: cast, columns: [seconds_text], to: float, on_invalid: null}
  - {type: cast, columns: [started], to: timestamp, format: "%Y-%m-%d %H:%M"}
  - {type: map_values, column: payment, mapping: {Credit: card, Mobile: card}, default: other}
  - {type: fill_missing, columns: [miles], statistic: median}
  - {type: fill_missing, columns: [company], value: unknown}
  - {type: fill_missing, columns: [seconds_text], statistic: mean}
  - {type: fill_missing, columns: [payment_mode], statistic: mode}
  - {type: derive, name: speed, expression: "clip(miles / (seconds_text / 3600), 0, 60)"}
  - {type: derive, name: night, expression: "1 if hour(started) >= 22 or hour(started) < 4 else 0"}
  - {type: derive, name: tag, expression: "concat(lower(company), '-', payment)"}
  - {type: drop_columns, columns: [unused]}
  - {type: zscore, columns: [fare, miles]}
  - {type: min_max, columns: [speed, night]}
  - {type: vocabulary, columns: [payment, company, tag], top_k: 4}
  - {type: vocabulary, columns: [payment_mode, community_area], encoding: index, min_frequency: 2}
  - {type: bucketize, columns: [fare], buckets: 4, method: exact, suffix: _bucket}
  - {type: bucketize, columns: [speed], buckets: 3, encoding: one_hot}
"""


def raw_rows(n: int = 240, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    miles = np.round(rng.gamma(2.0, 2.0, n), 2)
    seconds = (miles * 200 + rng.integers(60, 400, n)).astype(int)
    seconds_text = [("n/a" if i % 17 == 0 else str(s)) for i, s in enumerate(seconds)]
    companies = np.array(["Flash Cab", "Sun Taxi Co", "City Service", "Blue Taxi Inc"])[rng.integers(0, 4, n)]
    return pa.table({
        "key": [f"k{i}" for i in range(n)],
        "fare": np.round(3 + 2.2 * miles + rng.normal(0, 1, n), 2),
        "miles": pa.array(np.where(rng.random(n) < 0.1, np.nan, miles), from_pandas=True),
        "seconds_text": seconds_text,
        "started": [f"2025-03-{1 + i % 28:02d} {i % 24:02d}:{(7 * i) % 60:02d}" for i in range(n)],
        "payment": np.array(["Credit", "Cash", "Mobile", "Voucher"])[rng.integers(0, 4, n)],
        "payment_mode": pa.array([None if i % 9 == 0 else ["a", "b", "b", "c"][i % 4] for i in range(n)]),
        "company": pa.array([None if i % 11 == 0 else c for i, c in enumerate(companies)]),
        "area": rng.integers(1, 8, n),
        "unused": ["x"] * n,
        "label": (rng.random(n) < 0.4).astype(np.int64),
    })


def fitted(recipe, table, **kwargs) -> FittedTransform:
    return FittedTransform.fit_table(recipe, table, label=kwargs.pop("label", "label"), **kwargs)


def features(transform: FittedTransform, table: pa.Table) -> dict[str, list]:
    matrix = transform.transform_table(table)
    return {name: matrix[:, j].tolist() for j, name in enumerate(transform.feature_names)}


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"steps": [{"type": "explode", "columns": ["a"]}]}, r"recipe step 1: unknown step type 'explode'; expected one of \["),
        ({"steps": [{"type": "zscore", "columns": ["a"], "colour": "red"}]}, r"recipe step 1 \(zscore\) has unknown field 'colour'"),
        ({"steps": [{"type": "zscore"}]}, r"recipe step 1 \(zscore\) is missing required field\(s\) \['columns'\]"),
        ({"steps": [{"type": "zscore", "columns": "a"}]}, r"step 1 \(zscore\) field 'columns' must be a list, got 'a'"),
        ({"steps": [{"type": "zscore", "columns": ["x"]}, {"type": "cast", "columns": ["a"], "to": "decimal"}]},
         r"recipe step 2 \(cast\) field 'to' must be one of \['int', 'float', 'string', 'bool', 'timestamp'\], got 'decimal'"),
        ({"steps": [{"type": "vocabulary", "columns": ["a"], "top_k": 0}]}, r"field 'top_k' must be at least 1, got 0"),
        ({"steps": [{"type": "bucketize", "columns": ["a"], "buckets": 2.5}]}, r"field 'buckets' must be integer, got 2.5"),
        ({"steps": [{"type": "fill_missing", "columns": ["a"]}, {"type": "zscore", "columns": ["a"]}]},
         r"recipe step 1 \(fill_missing\) needs exactly one of 'value' or 'statistic'"),
        ({"steps": [{"type": "fill_missing", "columns": ["a"], "value": 0, "statistic": "mean"}]}, "needs exactly one of"),
        ({"steps": [{"type": "derive", "name": "d", "expression": "__import__('os').system('true')"}]},
         r"recipe step 1 \(derive\) field 'expression'.*calls .__import__\('os'\).system.; the functions are \['abs'"),
        ({"steps": [{"type": "derive", "name": "d", "expression": "fare.real"}]}, "unsupported syntax 'Attribute'"),
        ({"steps": [{"type": "derive", "name": "d", "expression": "fare +"}]}, "is not a valid expression"),
        ({"steps": [{"type": "derive", "name": "d", "expression": "[x for x in fare]"}]}, "unsupported syntax 'ListComp'"),
        ({"steps": [{"type": "replace_text", "columns": ["a"], "pattern": "(", "replacement": "", "regex": True}]},
         r"field 'pattern': '\(' is not a valid RE2 regular expression"),
        ({"steps": [{"type": "drop_columns", "columns": ["a"]}, {"type": "zscore", "columns": ["a"]}]},
         r"recipe step 2 \(zscore\) reads column 'a', removed by recipe step 1"),
        ({"steps": [{"type": "derive", "name": "leak", "expression": "label * 2"}, {"type": "zscore", "columns": ["leak"]}]},
         r"recipe step 1 \(derive\) reads the label column 'label'"),
        ({"steps": [{"type": "cast", "columns": ["a"], "to": "float"}]}, "recipe has no analyzer step"),
        ({"steps": [{"type": "zscore", "columns": ["a"]}, {"type": "bucketize", "columns": ["a"], "buckets": 3}]},
         r"feature name\(s\) \['a'\] more than once: give one of the steps a 'suffix'"),
        ({"steps": [{"type": "map_values", "column": "a", "mapping": {"x": 1}}, {"type": "zscore", "columns": ["a"]}]},
         "without a 'default', unmapped values are kept"),
        ({"steps": []}, r"recipe field 'steps' must list at least 1 item"),
        ({"stages": []}, r"recipe has unknown field 'stages'"),
    ],
)
def test_invalid_recipes_name_step_field_and_expectation(recipe, message):
    with pytest.raises(CauceError, match=message):
        Recipe.parse(recipe, label="label")


def test_recipe_from_yaml_text_json_file_and_kfp_floats(tmp_path):
    text = "steps:\n  - {type: vocabulary, columns: [c], top_k: 3}\n  - {type: cast, columns: [n], to: int, on_invalid: null}\n"
    from_yaml = Recipe.parse(text)
    assert from_yaml.steps[1].spec["on_invalid"] == "null"  # YAML's null means the option "null"
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(from_yaml.to_dict()))
    assert Recipe.parse(str(path)).to_dict() == from_yaml.to_dict()
    # KFP hands dict numbers over as floats (protobuf Struct)
    assert Recipe.parse({"steps": [{"type": "vocabulary", "columns": ["c"], "top_k": 3.0}]}).steps[0].spec["top_k"] == 3
    with pytest.raises(CauceError, match="recipe file .*missing.yaml not found"):
        Recipe.parse(str(tmp_path / "missing.yaml"))


def test_schema_lists_every_step_and_rejects_unknown_keys():
    alternatives = RECIPE_SCHEMA["properties"]["steps"]["items"]["oneOf"]
    assert [alt["properties"]["type"]["const"] for alt in alternatives] == list(STEP_SCHEMAS)
    assert all(alt["additionalProperties"] is False for alt in alternatives)


def test_the_documented_schema_is_the_one_recipes_are_checked_against():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(RECIPE_SCHEMA)
    recipe = Recipe.parse({"steps": [
        {"type": "fill_missing", "columns": ["a"], "statistic": "median"},
        {"type": "map_values", "column": "c", "mapping": {"x": "y"}, "default": None},
        {"type": "bucketize", "columns": ["a"], "buckets": 4.0},
    ]})
    assert recipe.steps[2].spec["buckets"] == 4 and isinstance(recipe.steps[2].spec["buckets"], int)
    Draft202012Validator(RECIPE_SCHEMA).validate(recipe.to_dict())  # what parse accepts, the schema accepts
    with pytest.raises(CauceError, match=r"field 'columns'\[1\] must not be empty; .* has unknown fields \['colour', 'x'\]"):
        Recipe.parse({"steps": [{"type": "zscore", "columns": ["a", ""], "colour": 1, "x": 2}]})


def test_columns_are_checked_against_the_data_step_by_step():
    recipe = Recipe.parse({"steps": [
        {"type": "rename_columns", "mapping": {"a": "b"}},
        {"type": "zscore", "columns": ["b", "c"]},
    ]})
    assert recipe.input_columns == ["a", "c"]
    recipe.check_schema(pa.schema([("a", pa.float64()), ("c", pa.float64())]), "split 'train'")
    with pytest.raises(CauceError, match=r"recipe step 1 \(rename_columns\): column\(s\) \['a'\] not found in split 'train'"):
        recipe.check_schema(pa.schema([("b", pa.float64()), ("c", pa.float64())]), "split 'train'")
    recipe = Recipe.parse({"steps": [{"type": "derive", "name": "d", "expression": "a + ghost"}, {"type": "zscore", "columns": ["d"]}]})
    assert recipe.input_columns == ["a", "ghost"]
    with pytest.raises(CauceError, match=r"recipe step 1 \(derive\): column\(s\) \['ghost'\] not found in split 'train'"):
        recipe.check_schema(pa.schema([("a", pa.float64())]), "split 'train'")


# ----------------------------------------------------------------------------- row-level steps
def test_row_steps_exact_values():
    table = pa.table({
        "n": pa.array(["1", " 2 ", "x", None]),
        "f": pa.array([1.0, None, 2.5, float("nan")]),
        "s": pa.array(["Flash Cab", "Sun Cab Co", None, "cab"]),
        "ts": pa.array(["2025-01-02 03:04", "bad", None, "2025-12-31 23:59"]),
        "b": pa.array(["yes", "No", "maybe", None]),
        "drop_me": [1, 2, 3, 4],
    })
    recipe = {"steps": [
        {"type": "cast", "columns": ["n"], "to": "int", "on_invalid": "null"},
        {"type": "cast", "columns": ["ts"], "to": "timestamp", "format": "%Y-%m-%d %H:%M", "on_invalid": "null"},
        {"type": "cast", "columns": ["b"], "to": "bool", "on_invalid": "null"},
        {"type": "replace_text", "columns": ["s"], "pattern": " Cab", "replacement": ""},
        {"type": "replace_text", "columns": ["s"], "pattern": "^(c)ab$", "replacement": "C\\1B", "regex": True},
        {"type": "map_values", "column": "s", "mapping": {"Flash": "F"}},
        {"type": "fill_missing", "columns": ["f"], "value": -1},
        {"type": "fill_missing", "columns": ["s"], "value": "?"},
        {"type": "rename_columns", "mapping": {"f": "g"}},
        {"type": "drop_columns", "columns": ["drop_me"]},
        {"type": "derive", "name": "h", "expression": "hour(ts) * 100 + n if b else -n"},
        {"type": "vocabulary", "columns": ["s"], "encoding": "index"},
    ]}
    recipe = Recipe.parse(recipe)
    columns = {name: table.column(name).combine_chunks() for name in recipe.input_columns}
    out = recipe.run(columns, states={})
    assert out["n"].to_pylist() == [1, 2, None, None]
    assert out["b"].to_pylist() == [True, False, None, None]
    assert [None if v is None else v.isoformat() for v in out["ts"].to_pylist()] == [
        "2025-01-02T03:04:00+00:00", None, None, "2025-12-31T23:59:00+00:00"]
    assert out["s"].to_pylist() == ["F", "Sun Co", "?", "CcB"]
    assert out["g"].to_pylist() == [1.0, -1.0, 2.5, -1.0]  # NaN is missing too
    assert "f" not in out and "drop_me" not in out
    assert out["h"].to_pylist() == [301.0, -2.0, None, None]


def test_cast_on_invalid_error_names_column_row_and_value():
    table = pa.table({"n": ["3", "4.5", "x"], "y": [0, 1, 0]})
    recipe = {"steps": [{"type": "cast", "columns": ["n"], "to": "int", "on_invalid": "error"}, {"type": "zscore", "columns": ["n"]}]}
    with pytest.raises(CauceError, match=r"recipe step 1 \(cast\): column 'n' row 1 holds '4.5', which is not a valid int"):
        fitted(recipe, table, label="y")


def test_map_values_default_and_numbers():
    table = pa.table({"c": ["a", "b", "z", None], "y": [0, 1, 0, 1]})
    recipe = {"steps": [{"type": "map_values", "column": "c", "mapping": {"a": 1, "b": 2.5}, "default": 0}, {"type": "zscore", "columns": ["c"]}]}
    transform = fitted(recipe, table, label="y")
    assert transform.states[2]["c"]["mean"] == pytest.approx((1 + 2.5 + 0) / 3)  # null stays missing, z (unmapped) -> 0


def test_expression_language_vectorized():
    columns = {"a": pa.array([1.0, 4.0, None, -9.0]), "b": pa.array([2, 0, 3, 3]), "s": pa.array(["Ab", "c", None, "D"])}

    def run(text):
        return Expression(text).evaluate(columns).to_pylist()

    assert run("a / b") == [0.5, float("inf"), None, -3.0]
    assert run("a // 2 + a % 2 - 2 ** b") == [-3.0, 1.0, None, -12.0]  # Python semantics
    assert run("sqrt(abs(a)) + log(1) + max(a, b) - min(a, b)") == [2.0, 6.0, None, 15.0]
    assert run("clip(a, 0, 3)") == [1.0, 3.0, None, 0.0]
    assert run("a > 0 and not (b == 0)") == [True, False, None, False]
    assert run("where(a > 0, 'pos', 'neg')") == ["pos", "pos", None, "neg"]
    assert run("coalesce(a, b)") == [1.0, 4.0, 3.0, -9.0]
    assert run("is_null(a) or b >= 3") == [False, False, True, True]
    assert run("concat(lower(s), '_', upper(s), length(s))") == ["ab_AB2", "c_C1", None, "d_D1"]
    assert run('col("a") * 2') == [2.0, 8.0, None, -18.0]
    with pytest.raises(CauceError, match="needs numbers, got string"):
        run("s + 1")


# ----------------------------------------------------------------------------- analyzers
def test_analyzers_exact_values():
    table = pa.table({
        "x": pa.array([1.0, 2.0, 3.0, 4.0, None, 6.0, 7.0, 8.0]),
        "c": ["a", "b", "a", "c", "a", "b", None, "d"],
        "y": [0, 1] * 4,
    })
    recipe = {"steps": [
        {"type": "zscore", "columns": ["x"]},
        {"type": "min_max", "columns": ["x"], "suffix": "_01"},
        {"type": "vocabulary", "columns": ["c"], "top_k": 2},
        {"type": "vocabulary", "columns": ["c"], "min_frequency": 2, "encoding": "index", "suffix": "_i"},
        {"type": "bucketize", "columns": ["x"], "buckets": 4, "method": "exact", "suffix": "_q"},
        {"type": "bucketize", "columns": ["x"], "buckets": 4, "encoding": "one_hot", "suffix": "_b"},
    ]}
    transform = fitted(recipe, table, label="y")
    x = np.array([1, 2, 3, 4, 6, 7, 8], dtype=float)
    assert transform.states[1]["x"]["mean"] == pytest.approx(x.mean())
    assert transform.states[1]["x"]["std"] == pytest.approx(x.std())
    assert transform.states[3]["c"]["vocabulary"] == ["a", "b"]  # by count, then value
    assert transform.states[4]["c"]["vocabulary"] == ["a", "b"]  # c and d appear once
    assert transform.states[5]["x"]["boundaries"] == [2.0, 4.0, 7.0]  # inverted-CDF quartiles of 7 values
    assert np.quantile(x, [0.25, 0.5, 0.75], method="inverted_cdf").tolist() == [2.0, 4.0, 7.0]
    assert transform.states[6]["x"]["boundaries"] == [2.0, 4.0, 7.0]  # the sketch is exact on small integers
    assert transform.feature_names == [
        "x", "x_01", "c=a", "c=b", "c=<OOV>", "c_i",
        "x_q", "x_b=bucket0", "x_b=bucket1", "x_b=bucket2", "x_b=bucket3", "x_b=<MISSING>",
    ]
    got = features(transform, table)
    assert got["x"][4] == 0.0 and got["x"][0] == pytest.approx((1 - x.mean()) / x.std())
    assert got["x_01"] == pytest.approx([0, 1 / 7, 2 / 7, 3 / 7, (x.mean() - 1) / 7, 5 / 7, 6 / 7, 1])
    assert got["c=<OOV>"] == [0, 0, 0, 1, 0, 0, 1, 1]  # unseen and missing share the OOV column
    assert got["c_i"] == [0, 1, 0, 2, 0, 1, 2, 2]
    assert got["x_q"] == [0, 1, 1, 2, -1, 2, 3, 3]
    assert got["x_b=<MISSING>"] == [0, 0, 0, 0, 1, 0, 0, 0]


def test_approximate_quantiles_are_close_and_values_from_the_data():
    values = np.random.default_rng(0).lognormal(3, 1, 50_000)
    sketch = QuantileSketch()
    sketch.add(values)
    exact = np.quantile(values, [0.1, 0.5, 0.9], method="inverted_cdf")
    approx = sketch.quantiles([0.1, 0.5, 0.9])
    assert np.allclose(approx, exact, rtol=2 ** -11)  # one bucket: 12 mantissa bits of a mantissa in [0.5, 1)
    assert set(approx) <= set(values.tolist())


def test_accumulators_do_not_depend_on_batch_order():
    table = raw_rows(600, seed=9)
    recipe = Recipe.parse(EVERY_STEP, "label")
    batches = table.to_batches(max_chunksize=50)
    results = []
    for seed in (0, 1, 2):
        order = list(batches)
        random.Random(seed).shuffle(order)
        states = {}
        for phase in range(recipe.phases):
            # a tree of partial accumulators merged in a shuffled order, as Beam's combiner lifting does
            parts = [PhaseAccumulator(recipe, states, phase).add_batch(b) for b in order]
            random.Random(seed + 10).shuffle(parts)
            merged = parts[0]
            for part in parts[1:]:
                merged.merge(part)
            states.update(merged.fit())
        results.append(json.dumps({str(k): v for k, v in states.items()}, sort_keys=True))
    assert results[0] == results[1] == results[2]
    assert recipe.phases == 2  # the median fill of 'miles' comes before its z-score


# ----------------------------------------------------------------------------- artifacts
def test_vocabulary_only_columns_fit_and_encode_the_same_as_dictionaries():
    """The Beam transform reads columns that only a vocabulary uses as Arrow dictionary
    arrays: counting and one-hot/index encoding them must give what strings give."""
    recipe = {"steps": [
        {"type": "map_values", "column": "payment", "mapping": {"Credit": "card"}},
        {"type": "derive", "name": "tag", "expression": "concat(company, '-')"},
        {"type": "vocabulary", "columns": ["payment", "company", "area", "tag"], "top_k": 3},
        {"type": "vocabulary", "columns": ["payment_mode"], "encoding": "index", "min_frequency": 30},
    ]}
    assert Recipe.parse(recipe).vocabulary_only_columns() == ["area", "payment_mode"]
    table = raw_rows(300).set_column(8, "area", pa.array([None if i % 13 == 0 else f"a{i % 7}" for i in range(300)]))
    as_dictionaries = table
    for name in ("area", "payment_mode"):
        index = as_dictionaries.schema.get_field_index(name)
        as_dictionaries = as_dictionaries.set_column(index, name, as_dictionaries.column(name).dictionary_encode())
    plain, encoded = fitted(recipe, table), fitted(recipe, as_dictionaries, batch_rows=64)
    assert encoded.states == plain.states
    np.testing.assert_array_equal(plain.transform_table(as_dictionaries), plain.transform_table(table))


def test_v1_transform_json_still_loads(tmp_path):
    v1 = {
        "format": "cauce.transform/v1", "label": "y", "rows_analyzed": 10,
        "numeric": [{"name": "x", "mean": 2.0, "std": 4.0, "min": 0.0, "max": 9.0}],
        "categorical": [{"name": "c", "vocabulary": ["a", "b"]}],
        "feature_names": ["x", "c=a", "c=b", "c=<OOV>"],
    }
    (tmp_path / "transform.json").write_text(json.dumps(v1))
    transform = FittedTransform.load(tmp_path)
    assert transform.feature_names == v1["feature_names"] and transform.input_features == ["x", "c"]
    table = pa.table({"x": [6.0, None], "c": ["b", "zzz"]})
    assert transform.transform_table(table).tolist() == [[1.0, 0, 1, 0], [0.0, 0, 0, 1]]
    (tmp_path / "v2").mkdir()
    transform.save(tmp_path / "v2")
    saved = json.loads((tmp_path / "v2" / "transform.json").read_text())
    assert saved["format"] == "cauce.transform/v2" and saved["input_features"] == ["x", "c"]
    assert FittedTransform.load(tmp_path / "v2").transform_table(table).tolist() == [[1.0, 0, 1, 0], [0.0, 0, 0, 1]]


def test_request_errors_name_instance_and_field():
    transform = fitted(EVERY_STEP, raw_rows())
    instance = {k: v for k, v in raw_rows(1).to_pylist()[0].items() if k in transform.input_features}
    with pytest.raises(CauceError, match="instance 1 is missing field 'fare'"):
        transform.transform_instances([instance, {k: v for k, v in instance.items() if k != "fare"}])
    with pytest.raises(CauceError, match="instance 0 field 'fare' must be a number, got 'cheap'"):
        transform.transform_instances([dict(instance, fare="cheap")])
    with pytest.raises(CauceError, match="instance 1 field 'area' must be an integer, got 2.5"):
        transform.transform_instances([instance, dict(instance, area=2.5)])
    with pytest.raises(CauceError, match=r"instance 0 field 'payment' must be a string, got \['x'\]"):
        transform.transform_instances([dict(instance, payment=["x"])])


# ----------------------------------------------------------------------------- Beam + serving
def _write_dataset(directory, tables: dict) -> str:
    with atomic_dir(directory) as out:
        rows = {split: data.write_split(out, split, table) for split, table in tables.items()}
        data.write_schema(out, next(iter(tables.values())).schema, rows)
    return str(directory)


def test_training_beam_encode_and_serving_give_identical_features(tmp_path):
    """The skew test: raw rows encoded by the Beam transform at training time and the
    same rows sent as JSON request instances through the model bundle's serving path
    give bit-identical feature vectors, for a recipe using every step type."""
    from cauce.components.transform.executor import run_transform

    table = raw_rows(400)
    raw = _write_dataset(tmp_path / "raw", {"train": table.slice(0, 300), "eval": table.slice(300)})
    result = run_transform(raw, "label", [], [], str(tmp_path / "encoded"), str(tmp_path / "fn"),
                           passthrough_columns=["key"], recipe=EVERY_STEP)
    transform = FittedTransform.load(tmp_path / "fn")
    assert result.feature_names == transform.feature_names and transform.rows_analyzed == 300
    for split, source in (("train", table.slice(0, 300)), ("eval", table.slice(300))):
        encoded = data.read_split(tmp_path / "encoded", split)
        by_key = dict(zip(encoded.column("key").to_pylist(), range(encoded.num_rows)))
        order = [by_key[k] for k in source.column("key").to_pylist()]
        beam_features = np.column_stack([encoded.column(n).to_numpy()[order] for n in transform.feature_names])
        instances = json.loads(json.dumps([
            {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items() if k in transform.input_features}
            for row in source.to_pylist()
        ]))
        for rows in (1, 32, len(instances)):
            np.testing.assert_array_equal(transform.transform_instances(instances[:rows]), beam_features[:rows])

    # and through the model bundle, as the serving process loads it
    from sklearn.linear_model import LogisticRegression

    from cauce import model

    bundle = tmp_path / "model"
    bundle.mkdir()
    train = data.read_split(tmp_path / "encoded", "train")
    x = np.column_stack([train.column(n).to_numpy() for n in transform.feature_names])
    import joblib

    joblib.dump(LogisticRegression(max_iter=300).fit(x, train.column("label").to_numpy()), bundle / "model.joblib")
    transform.save(bundle)
    (bundle / "cauce_model.json").write_text(json.dumps({"framework": "sklearn", "label": "label", "task": "binary",
                                                        "features": transform.input_features}))
    loaded = model.load(bundle)
    eval_rows = table.slice(300)
    served = loaded.predict_instances(json.loads(json.dumps([
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items() if k in transform.input_features}
        for row in eval_rows.to_pylist()
    ])))
    assert [p["score"] for p in served] == [round(float(s), 6) for s in loaded.predict_scores(eval_rows)]


def test_component_runs_a_recipe_under_kfp_local(kfp_local, tmp_path):
    from kfp import dsl

    from cauce.components.transform.component import transform as transform_component

    raw = _write_dataset(tmp_path / "raw", {"train": raw_rows(200), "eval": raw_rows(60, seed=6)})
    recipe = Recipe.parse(EVERY_STEP).to_dict()

    @dsl.pipeline(name="recipe-transform")
    def pipeline(dataset_uri: str):
        dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset)
        transform_component(dataset=dataset.output, label="label", numeric_features=[], categorical_features=[],
                            recipe=recipe)

    pipeline(dataset_uri=raw)
    (fn_dir,) = kfp_local.glob("recipe-transform-*/transform/fitted_transform")
    transform = FittedTransform.load(fn_dir)
    assert transform.to_dict()["recipe"] == recipe and transform.rows_analyzed == 200
    (encoded,) = kfp_local.glob("recipe-transform-*/transform/transformed")
    assert data.read_schema(encoded)["splits"] == {"train": 200, "eval": 60}
    assert data.read_schema(encoded)["feature_names"] == transform.feature_names

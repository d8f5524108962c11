"""Schema inference and validation with TensorFlow Metadata's ``Schema`` and ``Anomalies``.

Inference follows TFDV's ``infer_schema`` rules on one split's statistics:

* type INT / FLOAT / BYTES from the statistics type;
* a feature with no missing value is required: ``presence {min_fraction: 1 min_count: 1}``
  and ``shape {dim {size: 1}}``; otherwise ``presence {min_count: 1}`` and
  ``value_count {min: 1 max: 1}``;
* a string feature with at most ``max_string_domain_size`` distinct values (TFDV's default
  100) gets a string domain of those values; more distinct values (ids, free text): none.
  Its ``distribution_constraints.min_domain_mass`` records how much of a later split must
  fall inside the domain (1 - ``max_out_of_domain_fraction``).

Validation of a split's statistics against a schema reports, per feature, TFDV's anomaly
kinds with its wording: SCHEMA_MISSING_COLUMN, SCHEMA_NEW_COLUMN, UNEXPECTED_DATA_TYPE,
ENUM_TYPE_UNEXPECTED_STRING_VALUES (with the offending values and their share) and
FEATURE_TYPE_LOW_FRACTION_PRESENT / FEATURE_TYPE_LOW_NUMBER_PRESENT.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from cauce.artifacts import CauceError
from cauce.components.validate.statistics import common_stats, feature_stats_by_name

AnomalyType = anomalies_pb2.AnomalyInfo

_STATS_TO_SCHEMA_TYPE = {
    statistics_pb2.FeatureNameStatistics.INT: schema_pb2.INT,
    statistics_pb2.FeatureNameStatistics.FLOAT: schema_pb2.FLOAT,
    statistics_pb2.FeatureNameStatistics.STRING: schema_pb2.BYTES,
    statistics_pb2.FeatureNameStatistics.BYTES: schema_pb2.BYTES,
}

# How many offending values an out-of-domain description names.
MAX_VALUES_NAMED = 10

# Plain names for the JSON summary and the error message.
KIND_NAMES = {
    AnomalyType.SCHEMA_MISSING_COLUMN: "missing_column",
    AnomalyType.SCHEMA_NEW_COLUMN: "new_column",
    AnomalyType.UNEXPECTED_DATA_TYPE: "wrong_type",
    AnomalyType.ENUM_TYPE_UNEXPECTED_STRING_VALUES: "out_of_domain",
    AnomalyType.FEATURE_TYPE_LOW_FRACTION_PRESENT: "too_many_missing",
    AnomalyType.FEATURE_TYPE_LOW_NUMBER_PRESENT: "too_few_present",
}


# ------------------------------------------------------------------------- inference


def infer_schema(
    statistics: statistics_pb2.DatasetFeatureStatistics,
    max_string_domain_size: int = 100,
    max_out_of_domain_fraction: float = 0.0,
) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    for name, stats in feature_stats_by_name(statistics).items():
        feature = schema.feature.add(name=name, type=_STATS_TO_SCHEMA_TYPE[stats.type])
        common = common_stats(stats)
        if common.num_missing == 0 and common.num_non_missing > 0:
            feature.presence.min_fraction = 1.0
            feature.presence.min_count = 1
            feature.shape.dim.add(size=1)
        else:
            feature.presence.min_count = 1
            feature.value_count.min = 1
            feature.value_count.max = 1
        if stats.type == statistics_pb2.FeatureNameStatistics.STRING:
            values = sorted(bucket.label for bucket in stats.string_stats.rank_histogram.buckets)
            # The rank histogram holds every value when there are at most 1000 of them, so
            # unique (not the histogram's length) decides, as TFDV's GetStringValues does.
            if 0 < stats.string_stats.unique <= max_string_domain_size and len(values) == stats.string_stats.unique:
                schema.string_domain.add(name=name, value=values)
                feature.domain = name
                feature.distribution_constraints.min_domain_mass = 1.0 - max_out_of_domain_fraction
    return schema


def schema_to_text(schema: schema_pb2.Schema) -> str:
    return text_format.MessageToString(schema)


def parse_schema(text: str, where: str) -> schema_pb2.Schema:
    try:
        return text_format.Parse(text, schema_pb2.Schema())
    except text_format.ParseError as error:
        raise CauceError(f"baseline schema {where} is not a tensorflow_metadata Schema text proto: {error}") from None


# ------------------------------------------------------------------------ validation


@dataclass(frozen=True)
class Anomaly:
    feature: str
    kind: int  # AnomalyInfo.Type
    short_description: str
    description: str

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, AnomalyType.Type.Name(self.kind).lower())

    def as_dict(self) -> dict:
        return {
            "feature": self.feature,
            "kind": self.kind_name,
            "type": AnomalyType.Type.Name(self.kind),
            "short_description": self.short_description,
            "detail": self.description,
        }


def _type_name(schema_type: int) -> str:
    return schema_pb2.FeatureType.Name(schema_type)


def _presence_anomalies(name: str, feature: schema_pb2.Feature, stats, num_examples: int) -> list[Anomaly]:
    found = []
    common = common_stats(stats)
    present, missing = common.num_non_missing, common.num_missing
    if feature.presence.HasField("min_count") and present < feature.presence.min_count:
        found.append(Anomaly(
            name, AnomalyType.FEATURE_TYPE_LOW_NUMBER_PRESENT, "Column dropped",
            "The feature was present in fewer examples than expected: "
            f"minimum count = {feature.presence.min_count}, actual = {present}",
        ))
    if feature.presence.HasField("min_fraction") and num_examples:
        fraction = present / num_examples
        if feature.presence.min_fraction >= 1.0 and missing:
            found.append(Anomaly(
                name, AnomalyType.FEATURE_TYPE_LOW_FRACTION_PRESENT, "Column missing in some examples",
                f"The feature was expected everywhere, but was missing in {missing} of {num_examples} "
                f"examples ({missing / num_examples:.2%}).",
            ))
        elif fraction < feature.presence.min_fraction:
            found.append(Anomaly(
                name, AnomalyType.FEATURE_TYPE_LOW_FRACTION_PRESENT, "Column missing in some examples",
                "The feature was present in fewer examples than expected: "
                f"minimum fraction = {feature.presence.min_fraction:.6g}, actual = {fraction:.6g} "
                f"({missing} of {num_examples} examples missing).",
            ))
    return found


def _domain_anomaly(
    name: str, feature: schema_pb2.Feature, domain: set[str], stats, default_min_domain_mass: float
) -> Anomaly | None:
    present = common_stats(stats).num_non_missing
    if not present:
        return None
    outside = [
        (bucket.label, bucket.sample_count)
        for bucket in stats.string_stats.rank_histogram.buckets
        if bucket.label not in domain
    ]
    if not outside:
        return None
    outside_count = sum(count for _, count in outside)
    fraction = outside_count / present
    min_domain_mass = (
        feature.distribution_constraints.min_domain_mass
        if feature.HasField("distribution_constraints")
        else default_min_domain_mass
    )
    allowed = 1.0 - min_domain_mass
    # Strictly greater than the allowed share, as TFDV flags (a 1e-9 slack for float32 storage).
    if fraction <= allowed + 1e-9:
        return None
    named = ", ".join(f"{value!r} ({count:g}, {count / present:.2%})" for value, count in outside[:MAX_VALUES_NAMED])
    more = f" and {len(outside) - MAX_VALUES_NAMED} more" if len(outside) > MAX_VALUES_NAMED else ""
    return Anomaly(
        name, AnomalyType.ENUM_TYPE_UNEXPECTED_STRING_VALUES, "Unexpected string values",
        f"Examples contain values missing from the schema: {named}{more}; "
        f"{fraction:.2%} of present values are outside the domain (allowed: {allowed:.2%}).",
    )


def validate_statistics(
    statistics: statistics_pb2.DatasetFeatureStatistics,
    schema: schema_pb2.Schema,
    max_out_of_domain_fraction: float = 0.0,
) -> list[Anomaly]:
    """Every anomaly of one split against ``schema``, in schema order then new columns."""
    by_name = feature_stats_by_name(statistics)
    domains = {domain.name: set(domain.value) for domain in schema.string_domain}
    found: list[Anomaly] = []
    for feature in schema.feature:
        stats = by_name.get(feature.name)
        if stats is None:
            found.append(Anomaly(
                feature.name, AnomalyType.SCHEMA_MISSING_COLUMN, "Column dropped", "Column is completely missing",
            ))
            continue
        actual_type = _STATS_TO_SCHEMA_TYPE[stats.type]
        if feature.type != schema_pb2.TYPE_UNKNOWN and actual_type != feature.type:
            found.append(Anomaly(
                feature.name, AnomalyType.UNEXPECTED_DATA_TYPE, "Unexpected data type",
                f"Expected data of type: {_type_name(feature.type)} but got {_type_name(actual_type)}",
            ))
            continue  # values of another type say nothing about the domain
        found += _presence_anomalies(feature.name, feature, stats, statistics.num_examples)
        domain = _feature_domain(feature, domains)
        if domain is not None and stats.type == statistics_pb2.FeatureNameStatistics.STRING:
            anomaly = _domain_anomaly(feature.name, feature, domain, stats, 1.0 - max_out_of_domain_fraction)
            if anomaly:
                found.append(anomaly)
    known = {feature.name for feature in schema.feature}
    for name in by_name:
        if name not in known:
            found.append(Anomaly(
                name, AnomalyType.SCHEMA_NEW_COLUMN, "New column", "New column (column in data but not in schema)",
            ))
    return found


def _feature_domain(feature: schema_pb2.Feature, domains: dict[str, set[str]]) -> set[str] | None:
    if feature.HasField("string_domain"):
        return set(feature.string_domain.value)
    if feature.domain:
        if feature.domain not in domains:
            raise CauceError(
                f"schema feature {feature.name!r} names string domain {feature.domain!r}, which the schema "
                f"does not define; defined: {sorted(domains)}"
            )
        return domains[feature.domain]
    return None


def anomalies_proto(
    anomalies: list[Anomaly], schema: schema_pb2.Schema, num_examples: int
) -> anomalies_pb2.Anomalies:
    """TFDV's ``Anomalies`` message: one AnomalyInfo per feature, one reason per anomaly."""
    result = anomalies_pb2.Anomalies(anomaly_name_format=anomalies_pb2.Anomalies.SERIALIZED_PATH)
    result.baseline.CopyFrom(schema)
    result.data_missing = num_examples == 0
    by_feature: dict[str, list[Anomaly]] = {}
    for anomaly in anomalies:
        by_feature.setdefault(anomaly.feature, []).append(anomaly)
    for feature, items in by_feature.items():
        info = result.anomaly_info[feature]
        info.path.step.append(feature)
        info.severity = AnomalyType.ERROR
        if len(items) == 1:
            info.short_description = items[0].short_description
            info.description = items[0].description
        else:
            info.short_description = "Multiple errors"
            info.description = " ".join(item.description for item in items)
        for item in items:
            info.reason.add(type=item.kind, short_description=item.short_description, description=item.description)
    return result

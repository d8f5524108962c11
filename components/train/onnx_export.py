"""The serving form of a trained model: an ONNX graph that ONNX Runtime runs for
every framework, written into the bundle as ``model.onnx`` beside the
framework's own file.

Why one runtime (bench/README.md, "Serving"): one-row predictions through the
frameworks cost ≈ 0.2-14 ms (scikit-learn's and LightGBM's per-call checks and
thread start-up, Keras' predict function, torch's dispatch) against ≈ 12-30 µs
in ONNX Runtime for the same models, and the serving image then needs neither
scikit-learn (with SciPy), LightGBM, torch nor Keras: only ``onnxruntime``.

* scikit-learn estimators through ``skl2onnx``; LightGBM's trees written here from
  the booster's dump, in double precision as LightGBM decides and sums them
  (:func:`export_lightgbm`);
* the Keras and PyTorch MLPs are written here layer by layer (``Gemm`` + ``Relu``,
  then ``Sigmoid`` / ``Softmax``, or for regression the rescaling back to label
  units): the architecture is cauce's own and fully known, so no exporter is needed
  (``torch.onnx`` and ``tf2onnx`` would each pull a stack of their own).

A bundle is accepted only when the graph reproduces the framework's outputs on
the rows it was checked on (the eval split, else the train split, at most
``CHECK_ROWS``) within ``TOLERANCE``: ``|onnx - framework| <= 1e-6 + 1e-6 *
|framework|`` per output. Otherwise training fails, naming the difference.
Bytes are reproducible: the same model gives the same file (graph and producer
fields fixed, no random names).
"""

from __future__ import annotations

import logging

import numpy as np

from cauce.artifacts import CauceError
from cauce.model import LoadedModel, onnx_session

log = logging.getLogger(__name__)

TOLERANCE = 1e-6
CHECK_ROWS = 20_000
INPUT = "features"
GRAPH_NAME = "cauce_model"
# ai.onnx opset and ai.onnx.ml opset; IR version 10 (ONNX Runtime 1.31 reads up to 13).
OPSET, ML_OPSET, IR_VERSION = 17, 3, 10


def _finish(proto) -> bytes:
    """Fix the fields converters fill with random or per-run values; serialize."""
    proto.graph.name = GRAPH_NAME
    proto.ir_version = min(proto.ir_version, IR_VERSION) if proto.ir_version else IR_VERSION
    return proto.SerializeToString(deterministic=True)


def export_sklearn(estimator, width: int, task: str) -> tuple[bytes, dict]:
    """(ONNX bytes, how to read the output) for a scikit-learn or LightGBM estimator."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if type(estimator).__module__.startswith("lightgbm"):
        return export_lightgbm(estimator.booster_, width, task)
    options = {}
    if task != "regression":
        options = {id(estimator): {"zipmap": False}}
    try:
        proto = convert_sklearn(
            estimator,
            initial_types=[(INPUT, FloatTensorType([None, width]))],
            options=options,
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
    except Exception as error:  # an estimator or parameter the converters do not cover
        raise CauceError(f"cannot export {type(estimator).__name__} to ONNX for serving: {type(error).__name__}: {error}") from None
    if task == "regression":
        return _finish(proto), {"output": proto.graph.output[0].name, "column": None}
    return _finish(proto), {"output": "probabilities", "column": 1 if task == "binary" else None}


# LightGBM objective -> the activation of its raw score (LightGBM's own predict).
_LIGHTGBM_ACTIVATION = {
    "binary": "Sigmoid", "cross_entropy": "Sigmoid", "multiclass": "Softmax",
    "regression": None, "regression_l1": None, "huber": None, "fair": None, "quantile": None, "mape": None,
    "poisson": "Exp", "gamma": "Exp", "tweedie": "Exp",
}


def export_lightgbm(booster, width: int, task: str) -> tuple[bytes, dict]:
    """A LightGBM booster as one ``TreeEnsembleRegressor`` over the raw score, in double
    precision, then the objective's activation.

    Written from the booster's own dump rather than by onnxmltools, whose float32
    thresholds and leaf sums do not decide or add up as LightGBM does: LightGBM widens
    the float32 feature to double and compares it with a double threshold (a feature
    equal to the threshold's float32 rounding went the other way: 0.027 apart on a
    probability), and sums the leaves in double (float32 sums of 100 trees are ≈ 1e-6
    of a regression value off). Here the features are cast to double, the thresholds
    and leaf values are LightGBM's doubles (``nodes_values_as_tensor``,
    ``target_weights_as_tensor``), and ONNX Runtime sums in double.
    """
    from onnx import TensorProto, helper, numpy_helper

    dump = booster.dump_model()
    objective = str(dump.get("objective", "")).split()
    name = objective[0] if objective else ""
    if name not in _LIGHTGBM_ACTIVATION or dump.get("average_output"):
        raise CauceError(f"cannot export a LightGBM model with objective {dump.get('objective')!r} to ONNX for serving")
    sigmoid = next((float(part.split(":")[1]) for part in objective[1:] if part.startswith("sigmoid:")), 1.0)
    per_iteration = int(dump["num_tree_per_iteration"])
    nodes: dict[str, list] = {key: [] for key in (
        "treeids", "nodeids", "featureids", "modes", "values", "truenodeids", "falsenodeids", "missing_value_tracks_true")}  # fmt: skip
    targets: dict[str, list] = {"treeids": [], "nodeids": [], "ids": [], "weights": []}
    for tree in dump["tree_info"]:
        tree_id, target = int(tree["tree_index"]), int(tree["tree_index"]) % per_iteration
        counter = iter(range(1 << 30))

        def visit(node: dict, tree_id: int = tree_id, target: int = target, counter=counter) -> int:
            node_id = next(counter)
            slot = len(nodes["nodeids"])
            for key, value in (("treeids", tree_id), ("nodeids", node_id), ("featureids", 0), ("modes", "LEAF"), ("values", 0.0),
                               ("truenodeids", 0), ("falsenodeids", 0), ("missing_value_tracks_true", 0)):  # fmt: skip
                nodes[key].append(value)
            if "split_index" not in node:
                for key, value in (("treeids", tree_id), ("nodeids", node_id), ("ids", target), ("weights", float(node["leaf_value"]))):
                    targets[key].append(value)
                return node_id
            if node.get("decision_type") != "<=" or isinstance(node["threshold"], str):
                raise CauceError("cannot export a LightGBM categorical split to ONNX for serving")
            nodes["featureids"][slot] = int(node["split_feature"])
            nodes["modes"][slot] = "BRANCH_LEQ"
            nodes["values"][slot] = float(node["threshold"])
            nodes["missing_value_tracks_true"][slot] = int(bool(node.get("default_left")) and node.get("missing_type") == "NaN")
            nodes["truenodeids"][slot] = visit(node["left_child"])
            nodes["falsenodeids"][slot] = visit(node["right_child"])
            return node_id

        visit(tree["tree_structure"])
    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        ["features_double"],
        ["raw"],
        domain="ai.onnx.ml",
        n_targets=per_iteration,
        aggregate_function="SUM",
        post_transform="NONE",
        nodes_treeids=nodes["treeids"],
        nodes_nodeids=nodes["nodeids"],
        nodes_featureids=nodes["featureids"],
        nodes_modes=nodes["modes"],
        nodes_values_as_tensor=numpy_helper.from_array(np.array(nodes["values"], dtype=np.float64), "nodes_values"),
        nodes_truenodeids=nodes["truenodeids"],
        nodes_falsenodeids=nodes["falsenodeids"],
        nodes_missing_value_tracks_true=nodes["missing_value_tracks_true"],
        target_treeids=targets["treeids"],
        target_nodeids=targets["nodeids"],
        target_ids=targets["ids"],
        target_weights_as_tensor=numpy_helper.from_array(np.array(targets["weights"], dtype=np.float64), "target_weights"),
    )
    graph_nodes = [helper.make_node("Cast", [INPUT], ["features_double"], to=TensorProto.DOUBLE), ensemble]
    initializers = []
    activation = _LIGHTGBM_ACTIVATION[name]
    current = "raw"
    if activation == "Sigmoid" and sigmoid != 1.0:
        initializers.append(numpy_helper.from_array(np.array([sigmoid], dtype=np.float32), "sigmoid_scale"))
        graph_nodes.append(helper.make_node("Mul", [current, "sigmoid_scale"], ["scaled"]))
        current = "scaled"
    if activation:
        graph_nodes.append(helper.make_node(activation, [current], ["outputs"], **({"axis": 1} if activation == "Softmax" else {})))
    else:
        graph_nodes.append(helper.make_node("Identity", [current], ["outputs"]))
    graph = helper.make_graph(
        graph_nodes,
        GRAPH_NAME,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, None)],
        initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="cauce", ir_version=IR_VERSION,
    )  # fmt: skip
    return _finish(proto), {"output": "outputs", "column": None if task == "multiclass" else 0}


def export_mlp(layers: list[tuple[np.ndarray, np.ndarray]], task: str, rescale: tuple[float, float] | None) -> tuple[bytes, dict]:
    """An MLP as ONNX: ``layers`` are (weight (in, out), bias (out,)) with ReLU between
    them; then the task's activation, or for regression ``value * scale + offset``."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, current = [], [], INPUT
    for index, (weight, bias) in enumerate(layers):
        initializers += [
            numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), f"w{index}"),
            numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32), f"b{index}"),
        ]
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [f"dense{index}"]))
        current = f"dense{index}"
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"relu{index}"]))
            current = f"relu{index}"
    if task == "binary":
        nodes.append(helper.make_node("Sigmoid", [current], ["outputs"]))
    elif task == "multiclass":
        nodes.append(helper.make_node("Softmax", [current], ["outputs"], axis=1))
    else:
        scale, offset = rescale or (1.0, 0.0)
        initializers += [
            numpy_helper.from_array(np.array([scale], dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array([offset], dtype=np.float32), "offset"),
        ]
        nodes += [helper.make_node("Mul", [current, "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "offset"], ["outputs"])]
    width = int(layers[0][0].shape[0])
    graph = helper.make_graph(
        nodes,
        GRAPH_NAME,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, None)],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cauce", ir_version=IR_VERSION)
    return _finish(proto), {"output": "outputs", "column": 0 if task != "multiclass" else None}


def torch_layers(module, task: str) -> tuple[list, tuple[float, float] | None]:
    """(weight (in, out), bias) of each Linear of :func:`cauce.model.build_torch_mlp`'s
    module (Dropout is the identity when serving), and the regression rescaling."""
    import torch

    linear = [layer for layer in module if isinstance(layer, torch.nn.Linear)]
    rescale = None
    if task == "regression":  # the frozen Linear(1, 1) back to label units
        last = linear.pop()
        rescale = (float(last.weight.detach().reshape(())), float(last.bias.detach().reshape(())))
    return [(layer.weight.detach().cpu().numpy().T, layer.bias.detach().cpu().numpy()) for layer in linear], rescale


def keras_layers(model, task: str) -> tuple[list, tuple[float, float] | None]:
    """(kernel, bias) of each Dense layer of the Keras trainer's model and the regression rescaling."""
    import keras

    layers, rescale = [], None
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            layers.append((kernel, bias))
        elif isinstance(layer, keras.layers.Rescaling):
            rescale = (float(np.asarray(layer.scale)), float(np.asarray(layer.offset)))
        elif not isinstance(layer, (keras.layers.Dropout, keras.layers.InputLayer)):
            raise CauceError(f"cannot export Keras layer {type(layer).__name__} to ONNX for serving")
    return layers, rescale


def export(framework: str, model: LoadedModel, width: int, task: str) -> tuple[bytes, dict]:
    if framework == "sklearn":
        return export_sklearn(model.estimator, width, task)
    layers, rescale = (torch_layers if framework == "torch" else keras_layers)(model.estimator, task)
    return export_mlp(layers, task, rescale)


def check(onnx_bytes: bytes, how: dict, model: LoadedModel, features: np.ndarray) -> dict:
    """Run the graph on ``features`` and compare with the framework's outputs;
    raise if any output differs by more than the tolerance."""
    rows = features[:CHECK_ROWS]
    expected = np.asarray(model.scores_from_features(rows), dtype=np.float64)
    session = onnx_session(onnx_bytes)
    got = session.run([how["output"]], {INPUT: np.ascontiguousarray(rows, dtype=np.float32)})[0]
    got = np.asarray(got, dtype=np.float64)
    got = got[:, how["column"]] if how["column"] is not None else (got.reshape(-1) if expected.ndim == 1 else got)
    difference = np.abs(got - expected)
    limit = TOLERANCE + TOLERANCE * np.abs(expected)
    if got.shape != expected.shape or not (difference <= limit).all():
        worst = float(difference.max()) if got.shape == expected.shape else float("nan")
        raise CauceError(
            f"the ONNX export of the model does not reproduce its outputs: largest difference {worst:.3g} on "
            f"{len(rows)} rows (tolerance {TOLERANCE:g} + {TOLERANCE:g} x |output|); the bundle is not written"
        )
    import onnx
    import onnxruntime

    return {
        "checked_rows": int(len(rows)),
        "max_abs_difference": float(difference.max()),
        "tolerance": TOLERANCE,
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }


def export_linear(framework: str, model: LoadedModel, task: str, features: np.ndarray) -> dict | None:
    """The fused linear scorer's coefficients (``cauce.model.LINEAR_FILE``) for a linear
    scikit-learn model, with the check that accepted them (``checked_rows``,
    ``max_abs_difference``), or None for any other model. Accepted only when the scorer
    reproduces the framework's outputs on ``features`` within the tolerance model.onnx
    must meet; otherwise the bundle is written without them (served by model.onnx)."""
    from cauce.model import linear_coefficients, linear_difference

    if framework != "sklearn":
        return None
    spec = linear_coefficients(model.estimator, task, model.transform.width)
    if spec is None:
        return None
    rows = features[:CHECK_ROWS]
    scorer = model.transform.linear_scorer(spec["coefficients"], spec["intercept"], spec["link"])
    difference = linear_difference(model.scores_from_features(rows), scorer.score_features(rows))
    if difference is None:
        log.warning("linear scorer does not reproduce the %s model to %g: serving it through model.onnx", type(model.estimator).__name__, TOLERANCE)
        return None
    return {**spec, "checked_rows": int(len(rows)), "max_abs_difference": difference, "tolerance": TOLERANCE}

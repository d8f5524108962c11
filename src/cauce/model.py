"""The servable model bundle: one directory that serving, evaluation and batch
prediction load the same way, whatever framework trained it.

    <model>/
        cauce_model.json   framework, versions, label, features, task, metrics, seed, data hashes
        transform.json     the fitted transform (cauce.features)
        model.joblib       scikit-learn estimator           (framework "sklearn")
        model.keras        Keras 3 model, built-in layers    (framework "keras")
        model.pt           PyTorch state dict of the MLP     (framework "torch")
                           that :func:`build_torch_mlp` defines
        model.onnx         the same model as an ONNX graph (every framework):
                           what serving and batch prediction run, in ONNX
                           Runtime (``load(..., serving=True)``)
        linear.json        a linear model's coefficients (binary logistic, linear
                           and ridge regression), which every load scores it with
                           (the fused scorer: the section at the end of this module)

Only the framework the bundle names is imported, so loading a scikit-learn
model never imports TensorFlow or torch; loading it for serving imports only
ONNX Runtime (the serving image holds no training framework). Train writes
``model.onnx`` only after it reproduced the framework's outputs to 1e-6
(``cauce.components.train.onnx_export``); ``metadata["serving"]`` records the
check.

Outputs per task (``scores_from_features`` / ``predict_scores``):

* ``binary``: probability of class 1, shape ``(n,)``; a served prediction is
  ``{"label": 0|1, "score": p}``.
* ``multiclass``: class probabilities, shape ``(n, k)`` in the order of
  ``metadata["classes"]``; served as ``{"label": class, "scores": [p_0, ...]}``.
* ``regression``: the predicted value, shape ``(n,)``; served as ``{"value": x}``.

Why a state dict for PyTorch (and not TorchScript): ``torch.jit.script``/``save``
/``load`` are deprecated in torch 2.13 (each call warns), and a state dict is
read back with ``torch.load(weights_only=True)``, which cannot execute code from
a model file fetched out of a bucket, and which stays readable across torch
releases (it is only named tensors). The architecture is a plain
``torch.nn.Sequential`` fully described by ``metadata["architecture"]``, so the
module definition lives here, in the loader, and serving never needs the
training code (``cauce.components.train``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from cauce.artifacts import CauceError
from cauce.features import FittedTransform
from cauce.tasks import TASKS

METADATA_FILE = "cauce_model.json"
SKLEARN_FILE = "model.joblib"
KERAS_FILE = "model.keras"
TORCH_FILE = "model.pt"
ONNX_FILE = "model.onnx"
FRAMEWORK_FILES = {"sklearn": SKLEARN_FILE, "keras": KERAS_FILE, "torch": TORCH_FILE}
# Bundles written before the task names were shortened.
_TASK_ALIASES = {"binary_classification": "binary", "multiclass_classification": "multiclass"}
_CHUNK_ROWS = 65_536  # rows per forward pass of the neural models (bounded memory at 1M rows)


def passive_openmp_waits() -> None:
    """Have OpenMP threads sleep, not spin, while they wait at a barrier.

    Call before LightGBM or scikit-learn is imported (libgomp reads the setting
    when it loads); a value the user set wins. Spinning pays off only on cores
    nobody else wants: on the shared 2-core machine, LightGBM's fit of the 1 M-row
    taxi model took 16-20 s (18-20 s of CPU) with two spinning threads against
    5.4-6 s (5.4 s of CPU) with passive waits, and on an idle machine passive
    waits cost nothing measurable. Batch steps (train, evaluate) call this; the
    serving process, which answers one small request at a time, does not.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def normalize_task(task: str | None, where: str = "task") -> str:
    """``binary`` | ``multiclass`` | ``regression`` (old bundles: ``binary_classification``)."""
    name = _TASK_ALIASES.get(task or "binary", task or "binary")
    if name not in TASKS:
        raise CauceError(f"{where} {task!r} is not supported; expected one of {list(TASKS)}")
    return name


@dataclass
class LoadedModel:
    """A loaded bundle. ``estimator`` is the framework's own object (a scikit-learn
    estimator, a Keras model, or a ``torch.nn.Module``)."""

    metadata: dict
    transform: FittedTransform
    estimator: object

    @property
    def label(self) -> str:
        return self.metadata["label"]

    @property
    def framework(self) -> str:
        return self.metadata.get("framework", "sklearn")

    @property
    def task(self) -> str:
        return normalize_task(self.metadata.get("task"))

    @property
    def classes(self) -> list:
        """Class values in output order (binary: ``[0, 1]``; regression: ``[]``)."""
        if self.task == "binary":
            return list(self.metadata.get("classes") or [0, 1])
        return list(self.metadata.get("classes") or [])

    def _outputs(self, features: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def scores_from_features(self, features: np.ndarray) -> np.ndarray:
        """Model outputs for an encoded matrix: binary -> p(class 1) ``(n,)``;
        multiclass -> probabilities ``(n, k)``; regression -> values ``(n,)``."""
        features = np.asarray(features, dtype=np.float32)
        width = self.transform.width  # not len(feature_names), which builds every one-hot name
        if features.ndim != 2 or features.shape[1] != width:
            raise CauceError(f"encoded features have shape {features.shape}; this model expects (rows, {width})")
        return self._outputs(features)

    def predict_scores(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Outputs for raw rows (Arrow), through the fitted transform."""
        return self.scores_from_features(self.transform.transform_table(table))

    def predict_instances(self, instances: list[dict], may_hold_booleans: bool = True) -> list[dict]:
        """Serving: raw request instances in, one prediction dict per instance out.

        Non-finite features (a value whose scaling overflows, such as 1e308) and
        non-finite outputs are a CauceError naming the instance (and the field), never
        a prediction of null: the serving input rules in docs/serving.md.
        """
        features = self.transform.transform_instances(instances, may_hold_booleans)
        # A sum is the cheapest test (about 1 us); an overflowing sum of finite values
        # only costs the exact check.
        if not math.isfinite(features.sum()) and not np.isfinite(features).all():
            i, j = (int(k) for k in np.argwhere(~np.isfinite(features))[0])
            name = self.transform.field_of_feature(j)
            if isinstance(instances[i].get(name), str):  # "inf" spelled as a string
                raise CauceError(f"instance {i} field {name!r} must be a finite number, got {instances[i][name]!r}")
            raise CauceError(
                f"instance {i} field {name!r}: value {instances[i].get(name)!r} is outside what the model can encode "
                f"(feature {self.transform.feature_names[j]!r} would be {features[i, j]}); send a finite value in "
                "the range seen in training"
            )
        outputs = self.scores_from_features(features)
        if not math.isfinite(outputs.sum()) and not np.isfinite(outputs).all():
            i = int(np.argwhere(~np.isfinite(np.asarray(outputs, dtype=np.float64).reshape(len(instances), -1)))[0][0])
            row = np.abs(features[i])
            j = int(row.argmax())
            raise CauceError(
                f"instance {i}: the model's output is not a finite number; its largest encoded feature is "
                f"{self.transform.feature_names[j]!r} = {features[i, j]:g} (field "
                f"{self.transform.field_of_feature(j)!r}): send values in the range seen in training"
            )
        task = self.task
        if task == "binary":
            threshold = float(self.metadata.get("decision_threshold", 0.5))
            # tolist() converts once to Python floats; per-element float() on numpy
            # scalars costs more than the model at serving's batch sizes (and a
            # conditional expression less than int() of the comparison).
            return [{"label": 1 if score >= threshold else 0, "score": round(score, 6)} for score in outputs.tolist()]
        if task == "multiclass":
            classes = self.classes
            return [
                {"label": classes[max(range(len(row)), key=row.__getitem__)], "scores": [round(p, 6) for p in row]}
                for row in outputs.tolist()
            ]
        return [{"value": value} for value in np.asarray(outputs, dtype=np.float64).ravel().tolist()]


class SklearnModel(LoadedModel):
    def _outputs(self, features: np.ndarray) -> np.ndarray:
        task = self.task
        if task == "regression":
            return np.asarray(self.estimator.predict(features), dtype=np.float64)
        probabilities = self.estimator.predict_proba(features)
        return probabilities[:, 1] if task == "binary" else probabilities


class KerasModel(LoadedModel):
    def _outputs(self, features: np.ndarray) -> np.ndarray:
        return keras_outputs(self.estimator, features, self.task)


class TorchModel(LoadedModel):
    def _outputs(self, features: np.ndarray) -> np.ndarray:
        return torch_outputs(self.estimator, features, self.task)


@dataclass
class OnnxModel(LoadedModel):
    """A bundle's ``model.onnx`` in ONNX Runtime: the served form of every framework's
    model. ``estimator`` is the ``InferenceSession``; ``metadata["serving"]`` says which
    output holds the task's outputs."""

    def __post_init__(self):
        serving = self.metadata.get("serving") or {}
        self._output_names = [serving.get("output", "outputs")]
        self._column = serving.get("column")
        self._run = self.estimator.run

    def _outputs(self, features: np.ndarray) -> np.ndarray:
        out = self._run(self._output_names, {"features": features})[0]
        if self._column is not None:
            out = out[:, self._column]
        elif self.task == "regression":
            out = out.reshape(-1)
        return out.astype(np.float64)


def onnx_session(model: bytes | str | os.PathLike, threads: int = 1):
    """An ONNX Runtime session on the CPU, ``threads`` intra-op threads (1: a serving
    request is a few rows, and a thread pool only adds wake-ups), no spinning."""
    onnxruntime = _require("onnxruntime", "onnx", Path(str(model)) if not isinstance(model, bytes) else Path(ONNX_FILE))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def keras_outputs(model, features: np.ndarray, task: str) -> np.ndarray:
    """Forward pass of a Keras model whose last layer already applies the output
    activation (sigmoid, softmax, or the regression rescaling).

    ``predict_on_batch`` per chunk: it runs the compiled predict function
    (0.6 ms for one instance, against 4 ms for an eager ``model(x)`` call and
    more for ``model.predict``, which builds a data pipeline per call).
    """
    chunks = [
        np.asarray(model.predict_on_batch(features[start : start + _CHUNK_ROWS]))
        for start in range(0, max(len(features), 1), _CHUNK_ROWS)
    ]
    out = np.concatenate(chunks).astype(np.float64)
    return out if task == "multiclass" else out[:, 0]


def torch_outputs(module, features: np.ndarray, task: str) -> np.ndarray:
    """Forward pass of :func:`build_torch_mlp`'s module (logits out) plus the
    task's output activation, on the device the module's parameters live on."""
    import torch

    device = next(module.parameters()).device
    module.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, max(len(features), 1), _CHUNK_ROWS):
            out = module(torch.from_numpy(np.ascontiguousarray(features[start : start + _CHUNK_ROWS])).to(device))
            if task == "binary":
                out = torch.sigmoid(out)
            elif task == "multiclass":
                out = torch.softmax(out, dim=1)
            chunks.append(out.double().cpu().numpy())
    out = np.concatenate(chunks)
    return out if task == "multiclass" else out[:, 0]


def build_torch_mlp(architecture: dict):
    """The PyTorch model of a cauce bundle, from ``metadata["architecture"]``:
    ``{"inputs": n, "hidden_units": [...], "outputs": k, "dropout": p, "task": ...}``.

    ``Linear -> ReLU -> Dropout`` per hidden layer, then a ``Linear`` to the
    logits. A regression model ends with a frozen ``Linear(1, 1)`` that maps the
    standardized prediction back to label units (its weight and bias, the
    label's std and mean, are in the state dict).
    """
    import torch

    layers: list = []
    width = int(architecture["inputs"])
    for units in architecture["hidden_units"]:
        layers += [torch.nn.Linear(width, int(units)), torch.nn.ReLU(), torch.nn.Dropout(float(architecture["dropout"]))]
        width = int(units)
    layers.append(torch.nn.Linear(width, int(architecture["outputs"])))
    if architecture.get("task") == "regression":
        rescale = torch.nn.Linear(1, 1)
        rescale.requires_grad_(False)
        layers.append(rescale)
    return torch.nn.Sequential(*layers)


def _require(module: str, framework: str, path: Path):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = {"keras": "tf", "torch": "torch", "onnx": "serving"}.get(framework, framework)
        raise CauceError(
            f"{path} is a {framework} model but {module!r} is not installed here; install cauce[{extra}] "
            f"(or use an image of the {framework} family)"
        ) from None


def _load_sklearn(path: Path, metadata: dict):
    joblib = _require("joblib", "sklearn", path)
    return joblib.load(path)


def _load_keras(path: Path, metadata: dict):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    keras = _require("keras", "keras", path)
    return keras.saving.load_model(path, compile=False)


def _load_torch(path: Path, metadata: dict):
    torch = _require("torch", "torch", path)
    architecture = metadata.get("architecture")
    if not isinstance(architecture, dict):
        raise CauceError(f"{path.parent / METADATA_FILE} has no 'architecture': cannot rebuild the PyTorch model")
    module = build_torch_mlp(architecture)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise CauceError(f"{path} does not match the architecture in {METADATA_FILE}: {error}") from None
    return module.eval()


_LOADERS = {
    "sklearn": (SklearnModel, _load_sklearn),
    "keras": (KerasModel, _load_keras),
    "torch": (TorchModel, _load_torch),
}


def fetch_model_dir(uri: str) -> str:
    """A local directory holding the bundle at ``uri``: a path as it is, or a ``gs://``
    folder downloaded to a temporary directory (serving's AIP_STORAGE_URI, a Vertex
    champion for evaluate, batch prediction workers)."""
    if not uri.startswith("gs://"):
        return uri
    import shutil
    import tempfile

    from google.api_core.exceptions import NotFound
    from google.cloud import storage

    bucket_name, _, prefix = uri[len("gs://") :].partition("/")
    prefix = prefix.strip("/")
    # A bundle at the bucket's root lists with no prefix at all ("/" would match nothing).
    listed = prefix + "/" if prefix else ""
    target = Path(tempfile.mkdtemp(prefix="cauce-model-"))
    client = storage.Client()
    downloaded = 0
    try:
        for blob in client.list_blobs(bucket_name, prefix=listed):
            relative = blob.name[len(listed) :]
            if relative and not relative.endswith("/"):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(str(target / relative))
                downloaded += 1
    except NotFound as error:  # the bucket itself is absent
        shutil.rmtree(target, ignore_errors=True)
        raise CauceError(f"no model bundle at {uri}: {error.message}") from error
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    if not downloaded:
        # Without this the caller only learns that a temporary folder it never named
        # lacks cauce_model.json, not which gs:// folder was empty or absent.
        shutil.rmtree(target, ignore_errors=True)
        raise CauceError(f"no model bundle at {uri}: no objects under that Cloud Storage folder")
    return str(target)


def load(model_dir: str | os.PathLike, serving: bool = False) -> LoadedModel:
    """The bundle in ``model_dir``. ``serving``: its ``model.onnx`` in ONNX Runtime,
    importing no training framework (the prediction server and batch prediction);
    a bundle without one (written before cauce exported ONNX) loads its framework."""
    root = Path(model_dir)
    meta_path = root / METADATA_FILE
    if not meta_path.exists():
        raise CauceError(f"{meta_path} not found: {root} is not a cauce model directory")
    metadata = json.loads(meta_path.read_text())
    framework = metadata.get("framework")
    if framework not in _LOADERS:
        raise CauceError(
            f"model framework {framework!r} in {meta_path} is not supported; expected one of {sorted(_LOADERS)}"
        )
    normalize_task(metadata.get("task"), where=f"task in {meta_path}")
    model_file = root / FRAMEWORK_FILES[framework]
    if not model_file.exists():
        raise CauceError(f"{model_file} not found: a {framework} bundle keeps its model there")
    transform = FittedTransform.load(root)
    if serving and (root / ONNX_FILE).exists():
        return with_linear_scorer(OnnxModel(metadata=metadata, transform=transform, estimator=onnx_session(root / ONNX_FILE)), root)
    model_cls, loader = _LOADERS[framework]
    return with_linear_scorer(model_cls(metadata=metadata, transform=transform, estimator=loader(model_file, metadata)), root)


# ---- Linear models: the fused scorer ------------------------------------------------
# A linear model (binary logistic regression; linear or ridge regression) is served,
# batch-predicted and evaluated by its coefficients folded into the fitted transform
# (cauce.features.LinearScorer): per request in plain Python, no numpy and no ONNX
# Runtime call, a few microseconds for one instance (bench/README.md, "Serving"). Train
# writes the coefficients as LINEAR_FILE beside model.onnx, only when the scorer
# reproduces the framework's outputs to 1e-6, as model.onnx must
# (cauce.components.train.onnx_export.export_linear); a bundle written before that
# takes them from its scikit-learn estimator when it loads with its framework.
# Loading checks the scorer once more against the model it loaded (ONNX Runtime or the
# framework) on probe instances, and that its per-instance and vectorized ways agree
# bit for bit; otherwise the model serves as before and the reason is logged.

LINEAR_FILE = "linear.json"
LINEAR_FORMAT = "cauce.linear/v1"
LINEAR_TOLERANCE = 1e-6  # |scorer - model| <= 1e-6 + 1e-6 x |model|, as for model.onnx
_LINEAR_ESTIMATORS = {"binary": ("LogisticRegression",), "regression": ("LinearRegression", "Ridge")}


def linear_coefficients(estimator, task: str, width: int) -> dict | None:
    """``{"format", "link", "intercept", "coefficients"}`` of a fitted scikit-learn linear
    model of ``task`` over ``width`` features, or None for any other model."""
    if type(estimator).__name__ not in _LINEAR_ESTIMATORS.get(task, ()):
        return None
    if not type(estimator).__module__.startswith("sklearn."):
        return None
    coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
    if coef is None or intercept is None:
        return None
    coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64).reshape(-1)
    if coef.size != width or intercept.size != 1 or coef.ndim > 2 or (coef.ndim == 2 and coef.shape[0] != 1):
        return None  # several outputs (multiclass, multi-target)
    if task == "binary" and len(getattr(estimator, "classes_", ())) != 2:
        return None
    return {
        "format": LINEAR_FORMAT,
        "link": "logistic" if task == "binary" else "identity",
        "intercept": float(intercept[0]),
        "coefficients": coef.reshape(-1).tolist(),
    }


def linear_difference(expected: np.ndarray, got: np.ndarray) -> float | None:
    """The largest ``|got - expected|`` when every output is within LINEAR_TOLERANCE, else None."""
    expected, got = np.asarray(expected, dtype=np.float64).reshape(-1), np.asarray(got, dtype=np.float64).reshape(-1)
    if expected.shape != got.shape or not np.isfinite(got).all():
        return None
    difference = np.abs(got - expected)
    if not (difference <= LINEAR_TOLERANCE + LINEAR_TOLERANCE * np.abs(expected)).all():
        return None
    return float(difference.max()) if len(difference) else 0.0


def _linear_probe(transform: FittedTransform, rows: int = 64) -> tuple[list[dict] | None, np.ndarray]:
    """Probe rows for the load-time check: instances drawn from the transform's own
    fitted state (values around each number's center, vocabulary values, unseen and
    missing ones) and their features; a recipe serving cannot encode per instance
    without Arrow gets a random matrix of features instead."""
    import random

    generator = random.Random(0)
    if not transform._direct:
        matrix = np.random.default_rng(0).normal(size=(rows, transform.width)).astype(np.float32)
        matrix[np.random.default_rng(1).random(size=matrix.shape) < 0.5] = 0.0
        return None, matrix
    instances = []
    for row in range(rows):
        instance = {}
        for kind, name, _, constants in transform._scalar_plan:
            if row % 7 == 3:
                instance[name] = None
            elif kind in ("one_hot", "index"):
                vocabulary = list(constants)
                instance[name] = generator.choice(vocabulary) if vocabulary and row % 5 else f"unseen-{row}"
            elif kind == "scale":
                center, scale, _ = constants
                instance[name] = center + scale * generator.gauss(0.0, 1.5)
            else:
                boundaries = constants or [0.0]
                instance[name] = generator.uniform(boundaries[0] - 1.0, boundaries[-1] + 1.0)
        instances.append(instance)
    return instances, transform.transform_instances(instances)


def with_linear_scorer(model: LoadedModel, root: Path) -> LoadedModel:
    """``model``, scored by the fused linear scorer when it is a linear model that has
    one (see the section's comment); returns the same object. The scorer becomes the
    instance's ``scores_from_features`` (so ``predict_scores``: batch prediction,
    evaluation) and its ``predict_instances`` (serving); ``model.linear`` holds it."""
    import logging

    log = logging.getLogger(__name__)
    path = root / LINEAR_FILE
    width = model.transform.width
    try:
        if path.exists():
            spec = json.loads(path.read_text())
            if spec.get("format") != LINEAR_FORMAT:
                raise CauceError(f"format {spec.get('format')!r}, expected {LINEAR_FORMAT!r}")
        elif type(model) is SklearnModel:
            spec = linear_coefficients(model.estimator, model.task, width)
        else:
            spec = None
        if spec is None:
            return model
        if spec["link"] != ("logistic" if model.task == "binary" else "identity"):
            raise CauceError(f"link {spec['link']!r} does not fit a {model.task} model")
        scorer = model.transform.linear_scorer(spec["coefficients"], spec["intercept"], spec["link"])
        instances, features = _linear_probe(model.transform)
        got = scorer.score_features(features)
        if linear_difference(model._outputs(features), got) is None:
            raise CauceError("it does not reproduce the model's outputs to 1e-6 on the probe")
        if instances is not None and scorer.score_instances(instances) != got.tolist():
            raise CauceError("its per-instance and vectorized outputs differ")
    except Exception as error:  # noqa: BLE001 - any doubt: the model's own outputs, as before
        log.warning("model %s: linear scorer not used (%s: %s); scoring with %s", root, type(error).__name__, error, type(model).__name__)
        return model
    _use_linear_scorer(model, scorer, width)
    return model


def round6(x: float) -> float:
    """``round(x, 6)`` bit for bit, at a third of its cost for 0 <= x <= 1 (a probability):
    ``x * 1e6`` is within 2^-33 of the exact product there, so away from a tie its nearest
    integer N is the exact one, and ``N / 1e6`` (one correctly rounded division) is the
    double nearest N x 10^-6, which is what ``round`` returns (it formats the decimal and
    reads it back). Near a tie, and outside [0, 1], ``round`` itself."""
    if 0.0 <= x <= 1.0:
        y = x * 1e6
        n = math.floor(y)
        r = y - n  # exact
        if not 0.4999 < r < 0.5001:
            return (n + 1 if r > 0.5 else n) / 1e6
    return round(x, 6)


def _use_linear_scorer(model: LoadedModel, scorer, width: int) -> None:
    general = model.predict_instances  # the transform, then scores_from_features: this scorer's vectorized way
    binary = model.task == "binary"
    threshold = float(model.metadata.get("decision_threshold", 0.5))
    score_instances, score_features = scorer.score_instances, scorer.score_features

    def scores_from_features(features: np.ndarray) -> np.ndarray:  # LoadedModel.scores_from_features
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != width:
            raise CauceError(f"encoded features have shape {features.shape}; this model expects (rows, {width})")
        return score_features(features)

    def predict_instances(instances: list[dict], may_hold_booleans: bool = True) -> list[dict]:  # LoadedModel.predict_instances
        scores = score_instances(instances)
        if scores is None:  # a value the per-instance way leaves to the transform (or an error to name)
            return general(instances, may_hold_booleans)
        if binary:
            return [{"label": 1 if score >= threshold else 0, "score": round6(score)} for score in scores]
        return [{"value": score} for score in scores]

    def predict_scores(table: pa.Table | pa.RecordBatch) -> np.ndarray:  # LoadedModel.predict_scores
        return scorer.score_columns(model.transform.transform_columns(table))  # feature-major: no transposed copy

    model.linear = scorer
    model.scores_from_features = scores_from_features
    model.predict_scores = predict_scores
    model.predict_instances = predict_instances

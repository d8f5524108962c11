"""What the Keras and PyTorch trainers share: hyperparameters, the validation
hold-out, early stopping and the per-epoch curve metrics.

Both trainers fit the same model (an MLP: ``hidden_units`` Dense/Linear layers
with ReLU and dropout) with AdamW, and measure each epoch with the numpy code
below, so their curves and metrics compare one to one.

Early stopping watches the loss on a *validation* hold-out carved from the
training split (``validation_fraction``, rows picked with the seed), not the
eval split: the eval split is what evaluate and the champion/challenger
comparison judge the model on, and choosing the stopping epoch on it would
leak that choice into the evaluation. After training the weights of the best
epoch (lowest validation loss) are restored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cauce.artifacts import CauceError
from cauce.components.train.common import TrainingData, as_float, as_int

DEFAULT_HYPERPARAMETERS = {
    "hidden_units": [64, 32],
    "dropout": 0.1,
    "learning_rate": 0.001,
    "weight_decay": 0.0,
    "epochs": 20,
    "batch_size": 256,
    "patience": 3,  # epochs without a validation-loss improvement before stopping; 0 = never stop early
    "min_delta": 0.0,  # smallest decrease of the validation loss that counts as an improvement
    "validation_fraction": 0.1,
}
MODEL_TYPE = "mlp"


@dataclass(frozen=True)
class NeuralPlan:
    hidden_units: list[int]
    dropout: float
    learning_rate: float
    weight_decay: float
    epochs: int
    batch_size: int
    patience: int
    min_delta: float
    validation_fraction: float

    def as_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, **{k: getattr(self, k) for k in DEFAULT_HYPERPARAMETERS}}


def plan(hyperparameters: dict, framework: str) -> NeuralPlan:
    """Validate ``hyperparameters`` (missing keys take the defaults)."""
    params = dict(hyperparameters or {})
    model_type = params.pop("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise CauceError(
            f"hyperparameters.model_type {model_type!r} is not a {framework} model; the {framework} trainer "
            f"trains an {MODEL_TYPE!r} (leave model_type out, or pass a {framework} hyperparameter set such as "
            f"{DEFAULT_HYPERPARAMETERS})"
        )
    unknown = sorted(set(params) - set(DEFAULT_HYPERPARAMETERS))
    if unknown:
        raise CauceError(
            f"unknown hyperparameter(s) {unknown} for framework {framework!r}; valid: {sorted(DEFAULT_HYPERPARAMETERS)}"
        )
    merged = {**DEFAULT_HYPERPARAMETERS, **params}
    units = merged["hidden_units"]
    if isinstance(units, (int, float)) and not isinstance(units, bool):
        units = [units]
    if not isinstance(units, (list, tuple)):
        raise CauceError(f"hyperparameter 'hidden_units' must be a list of layer widths, got {units!r}")
    return NeuralPlan(
        hidden_units=[as_int(u, "hidden_units", 1) for u in units],
        dropout=as_float(merged["dropout"], "dropout", 0.0, 1.0, high_open=True),
        learning_rate=as_float(merged["learning_rate"], "learning_rate", 0.0, 10.0, low_open=True),
        weight_decay=as_float(merged["weight_decay"], "weight_decay", 0.0, 1.0),
        epochs=as_int(merged["epochs"], "epochs", 1),
        batch_size=as_int(merged["batch_size"], "batch_size", 1),
        patience=as_int(merged["patience"], "patience", 0),
        min_delta=as_float(merged["min_delta"], "min_delta", 0.0, float("inf")),
        validation_fraction=as_float(merged["validation_fraction"], "validation_fraction", 0.0, 0.5, low_open=True),
    )


@dataclass
class Split:
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    target_mean: float = 0.0  # regression: the network learns (y - mean) / std
    target_std: float = 1.0


def split_validation(data: TrainingData, fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` of the training rows (picked with ``seed``) for early stopping."""
    n = len(data.y_train)
    n_val = int(round(n * fraction))
    if n_val < 1 or n - n_val < 1:
        raise CauceError(
            f"validation_fraction {fraction} of {n} training rows leaves no validation or no training rows; "
            "use more data or another fraction"
        )
    order = np.random.default_rng(seed).permutation(n)
    val, fit = np.sort(order[:n_val]), np.sort(order[n_val:])
    split = Split(data.x_train[fit], data.y_train[fit], data.x_train[val], data.y_train[val])
    if data.task == "regression":
        split.target_mean = float(split.y_fit.mean())
        split.target_std = float(split.y_fit.std()) or 1.0
        split.y_fit = ((split.y_fit - split.target_mean) / split.target_std).astype(np.float32)
        split.y_val = ((split.y_val - split.target_mean) / split.target_std).astype(np.float32)
    return split


def epoch_metrics(task: str, y_val: np.ndarray, outputs: np.ndarray, target_std: float = 1.0) -> dict[str, float]:
    """Validation loss (the training loss's formula) and AUC (classification) or
    RMSE in label units (regression), from the model's activated outputs."""
    from sklearn.metrics import roc_auc_score

    if task == "binary":
        p = np.clip(outputs, 1e-7, 1 - 1e-7)
        metrics = {"val_loss": float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p)))}
        metrics["val_auc"] = float(roc_auc_score(y_val, outputs)) if len(np.unique(y_val)) == 2 else None
        return metrics
    if task == "multiclass":
        p = np.clip(outputs[np.arange(len(y_val)), y_val], 1e-7, 1.0)
        metrics = {"val_loss": float(-np.mean(np.log(p)))}
        n_classes = outputs.shape[1]
        if len(np.unique(y_val)) == n_classes:
            probabilities = np.clip(outputs, 1e-7, 1.0)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            metrics["val_auc"] = float(roc_auc_score(y_val, probabilities, multi_class="ovr", labels=list(range(n_classes))))
        else:
            metrics["val_auc"] = None
        return metrics
    mse = float(np.mean((outputs - y_val) ** 2))
    return {"val_loss": mse, "val_rmse": float(np.sqrt(mse) * target_std)}


class EarlyStopping:
    """Patience on the validation loss; remembers the best epoch."""

    def __init__(self, patience: int, min_delta: float):
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.wait = 0

    def update(self, epoch: int, val_loss: float) -> tuple[bool, bool]:
        """Record ``epoch``'s loss; return (improved, stop)."""
        if not np.isfinite(val_loss):
            raise CauceError(
                f"validation loss is {val_loss} at epoch {epoch}: training diverged; lower learning_rate"
            )
        improved = val_loss < self.best_loss - self.min_delta
        if improved:
            self.best_loss, self.best_epoch, self.wait = val_loss, epoch, 0
        else:
            self.wait += 1
        return improved, self.patience > 0 and self.wait >= self.patience


class Curves:
    """Per-epoch training curves, stored in cauce_model.json and logged as KFP Metrics."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, epoch: int, train_loss: float, metrics: dict) -> None:
        self.rows.append({"epoch": epoch, "train_loss": float(train_loss), **metrics})

    def as_dict(self) -> dict:
        names = list(self.rows[0]) if self.rows else ["epoch"]
        return {name: [row.get(name) for row in self.rows] for name in names}


def summary(stopper: EarlyStopping, curves: Curves, plan: NeuralPlan) -> dict:
    epochs_run = len(curves.rows)
    return {
        "epochs_run": epochs_run,
        "best_epoch": stopper.best_epoch,
        "best_val_loss": stopper.best_loss,
        "stopped_early": float(epochs_run < plan.epochs),
    }

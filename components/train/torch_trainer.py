"""PyTorch trainer: the MLP of ``cauce.model.build_torch_mlp``, trained with
AdamW on CUDA when the machine has a GPU and on the CPU otherwise; saved as a
state dict (``model.pt``) plus the architecture in ``cauce_model.json``
(``cauce.model`` explains why not TorchScript).

Reproducible: the seed drives the weight initialisation, dropout and the batch
order (a CPU ``torch.Generator``, so the order does not depend on the device),
and deterministic algorithms are on while training (on CUDA this needs
``CUBLAS_WORKSPACE_CONFIG``, set here before the first CUDA call). Same data,
seed and device type -> same metrics.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import numpy as np

from cauce.artifacts import CauceError
from cauce.components.train import neural
from cauce.components.train.common import Trained, TrainingData
from cauce.features import FittedTransform
from cauce.model import TORCH_FILE, TorchModel, build_torch_mlp, torch_outputs


def plan(hyperparameters: dict, task: str, seed: int) -> neural.NeuralPlan:
    return neural.plan(hyperparameters, "torch")


def load_framework():
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read at CUDA init
    try:
        import torch
    except ImportError:
        raise CauceError(
            "framework 'torch' needs PyTorch, which is not installed here: install cauce[torch] "
            "(on Vertex, build the pipeline with train_component('torch'), which runs in the torch image)"
        ) from None
    return torch


@contextlib.contextmanager
def _deterministic(torch):
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def fit(plan: neural.NeuralPlan, data: TrainingData, transform: FittedTransform, seed: int) -> Trained:
    torch = load_framework()
    split = neural.split_validation(data, plan.validation_fraction, seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = data.task
    architecture = {
        "inputs": int(data.x_train.shape[1]),
        "hidden_units": list(plan.hidden_units),
        "outputs": data.n_outputs,
        "dropout": plan.dropout,
        "task": task,
    }

    with _deterministic(torch):
        torch.manual_seed(seed)
        model = build_torch_mlp(architecture)
        if task == "regression":  # the frozen last layer maps standardized predictions to label units
            with torch.no_grad():
                model[-1].weight.fill_(split.target_std)
                model[-1].bias.fill_(split.target_mean)
        model = model.to(device)
        network = model[:-1] if task == "regression" else model  # what the loss sees (logits / standardized)
        optimizer = torch.optim.AdamW(network.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay)
        if task == "binary":
            loss_fn = torch.nn.BCEWithLogitsLoss()
            y_fit = torch.from_numpy(split.y_fit.astype(np.float32)).reshape(-1, 1)
        elif task == "multiclass":
            loss_fn = torch.nn.CrossEntropyLoss()
            y_fit = torch.from_numpy(split.y_fit.astype(np.int64))
        else:
            loss_fn = torch.nn.MSELoss()
            y_fit = torch.from_numpy(split.y_fit.astype(np.float32)).reshape(-1, 1)
        x_fit = torch.from_numpy(np.ascontiguousarray(split.x_fit)).to(device)
        y_fit = y_fit.to(device)
        order = torch.Generator().manual_seed(seed)

        stopper, curves = neural.EarlyStopping(plan.patience, plan.min_delta), neural.Curves()
        best_state = copy.deepcopy(model.state_dict())
        n = len(x_fit)
        for epoch in range(1, plan.epochs + 1):
            network.train()
            permutation = torch.randperm(n, generator=order).to(device)
            total = torch.zeros((), device=device)
            for start in range(0, n, plan.batch_size):
                index = permutation[start : start + plan.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(network(x_fit[index]), y_fit[index])
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(index)
            val_outputs = torch_outputs(network, split.x_val, task)
            metrics = neural.epoch_metrics(task, split.y_val, val_outputs, split.target_std)
            curves.add(epoch, float(total) / n, metrics)
            improved, stop = stopper.update(epoch, metrics["val_loss"])
            if improved:
                best_state = copy.deepcopy(model.state_dict())
            if stop:
                break
        model.load_state_dict(best_state)
    model = model.cpu().eval()  # bundles load on the CPU; predictions below match a loaded bundle

    def save(directory: Path) -> None:
        torch.save(model.state_dict(), directory / TORCH_FILE)

    provisional = {"task": task, "label": transform.label, "classes": data.classes}
    versions = {"torch": torch.__version__}
    if device.type == "cuda":
        versions["cuda"] = torch.version.cuda
    return Trained(
        model=TorchModel(metadata=provisional, transform=transform, estimator=model),
        save=save,
        framework_version=torch.__version__,
        model_type=neural.MODEL_TYPE,
        hyperparameters=plan.as_dict(),
        versions=versions,
        curves=curves.as_dict(),
        summary=neural.summary(stopper, curves, plan),
        details={
            "architecture": architecture,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
    )

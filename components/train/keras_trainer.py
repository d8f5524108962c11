"""Keras trainer (Keras 3 on TensorFlow): the same MLP and training schedule as
the PyTorch trainer, saved as a native ``.keras`` file made of built-in layers
only (the last layer applies the output activation, or for regression a
``Rescaling`` back to label units), so it loads anywhere without cauce code.

Reproducible: ``keras.utils.set_random_seed`` seeds Python, numpy and
TensorFlow (weights, dropout, batch shuffling) and TensorFlow op determinism is
enabled. Op determinism is process-wide and TensorFlow has no public way to
turn it off again: a training process is expected to train.
"""

from __future__ import annotations

import os
from pathlib import Path

from cauce.artifacts import CauceError
from cauce.components.train import neural
from cauce.components.train.common import Trained, TrainingData
from cauce.features import FittedTransform
from cauce.model import KERAS_FILE, KerasModel, keras_outputs


def plan(hyperparameters: dict, task: str, seed: int) -> neural.NeuralPlan:
    return neural.plan(hyperparameters, "keras")


def load_framework():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        raise CauceError(
            "framework 'keras' needs TensorFlow and Keras, which are not installed here: install cauce[tf] "
            "(on Vertex, build the pipeline with train_component('keras'), which runs in the tf image)"
        ) from None
    return tf, keras


def fit(plan: neural.NeuralPlan, data: TrainingData, transform: FittedTransform, seed: int) -> Trained:
    tf, keras = load_framework()
    split = neural.split_validation(data, plan.validation_fraction, seed)
    task = data.task
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)

    width = int(data.x_train.shape[1])
    layers = []
    for units in plan.hidden_units:
        layers += [keras.layers.Dense(units, activation="relu"), keras.layers.Dropout(plan.dropout)]
    if task == "binary":
        layers.append(keras.layers.Dense(1, activation="sigmoid"))
        loss, y_fit = keras.losses.BinaryCrossentropy(), split.y_fit.reshape(-1, 1)
    elif task == "multiclass":
        layers.append(keras.layers.Dense(data.n_outputs, activation="softmax"))
        loss, y_fit = keras.losses.SparseCategoricalCrossentropy(), split.y_fit
    else:
        layers.append(keras.layers.Dense(1))
        loss, y_fit = keras.losses.MeanSquaredError(), split.y_fit.reshape(-1, 1)
    network = keras.Sequential([keras.Input(shape=(width,), name="features"), *layers], name="cauce_mlp")
    network.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=plan.learning_rate, weight_decay=plan.weight_decay),
        loss=loss,
        jit_compile=False,  # XLA compilation costs more than it saves on a small MLP
    )

    stopper, curves = neural.EarlyStopping(plan.patience, plan.min_delta), neural.Curves()

    class Monitor(keras.callbacks.Callback):
        best_weights = None

        def on_epoch_end(self, epoch, logs=None):
            outputs = keras_outputs(self.model, split.x_val, task)
            metrics = neural.epoch_metrics(task, split.y_val, outputs, split.target_std)
            curves.add(epoch + 1, (logs or {}).get("loss", float("nan")), metrics)
            improved, stop = stopper.update(epoch + 1, metrics["val_loss"])
            if improved:
                self.best_weights = self.model.get_weights()
            if stop:
                self.model.stop_training = True

    monitor = Monitor()
    network.fit(
        split.x_fit,
        y_fit,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[monitor],
    )
    if monitor.best_weights is not None:
        network.set_weights(monitor.best_weights)

    # The saved model: the trained layers without optimizer state, plus the
    # regression rescaling, so the file alone maps features to final outputs.
    final_layers = list(network.layers)
    if task == "regression":
        final_layers.append(keras.layers.Rescaling(scale=split.target_std, offset=split.target_mean, name="to_label_units"))
    model = keras.Sequential([keras.Input(shape=(width,), name="features"), *final_layers], name="cauce_model")

    def save(directory: Path) -> None:
        model.save(directory / KERAS_FILE)

    provisional = {"task": task, "label": transform.label, "classes": data.classes}
    devices = tf.config.list_logical_devices("GPU")
    return Trained(
        model=KerasModel(metadata=provisional, transform=transform, estimator=model),
        save=save,
        framework_version=keras.__version__,
        model_type=neural.MODEL_TYPE,
        hyperparameters=plan.as_dict(),
        versions={"keras": keras.__version__, "tensorflow": tf.__version__, "keras_backend": keras.backend.backend()},
        curves=curves.as_dict(),
        summary=neural.summary(stopper, curves, plan),
        details={"device": devices[0].name if devices else "cpu"},
    )

"""Keras 3 metrics used by compile(metrics=...): accuracy (binary / categorical / sparse categorical, chosen by
shapes as Keras does), mae, mse. Each is a mean of per-sample values over an epoch, weighted by the output's
mask when it has one (Keras MeanMetricWrapper)."""
import numpy as np

from .losses import _same_rank


def binary_accuracy(y_true, y_pred, threshold=0.5):
    y_true, y_pred = _same_rank(np.asarray(y_true), np.asarray(y_pred))
    return np.mean(y_true == (y_pred > threshold).astype(y_true.dtype), axis=-1)


def categorical_accuracy(y_true, y_pred):
    return (np.argmax(y_true, axis=-1) == np.argmax(y_pred, axis=-1)).astype(np.float64)


def sparse_categorical_accuracy(y_true, y_pred):
    y_true = np.asarray(y_true)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    return (y_true == np.argmax(y_pred, axis=-1)).astype(np.float64)


def mean_absolute_error(y_true, y_pred):
    y_true, y_pred = _same_rank(np.asarray(y_true), np.asarray(y_pred))
    return np.mean(np.abs(y_pred - y_true), axis=-1)


def mean_squared_error(y_true, y_pred):
    y_true, y_pred = _same_rank(np.asarray(y_true), np.asarray(y_pred))
    return np.mean((y_pred - y_true) ** 2, axis=-1)


_FNS = {
    "binary_accuracy": binary_accuracy, "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "mae": mean_absolute_error, "mean_absolute_error": mean_absolute_error,
    "mse": mean_squared_error, "mean_squared_error": mean_squared_error,
}
_DIRECTION = {"binary_accuracy": "up", "categorical_accuracy": "up", "sparse_categorical_accuracy": "up",
              "mae": "down", "mean_absolute_error": "down", "mse": "down", "mean_squared_error": "down"}


class MeanMetric:
    """Running weighted mean of a per-sample metric function."""

    def __init__(self, fn, name, direction):
        self.fn, self.name, self.direction = fn, name, direction
        self.reset_state()

    def reset_state(self):
        self.total, self.count = 0.0, 0.0

    def update_state(self, y_true, y_pred, mask=None):
        values = np.asarray(self.fn(y_true, y_pred), dtype=np.float64)
        if mask is not None and np.ndim(mask) <= values.ndim and \
                np.shape(mask) == values.shape[:np.ndim(mask)]:
            w = np.asarray(mask, dtype=np.float64)        # per-sample weights apply to every step of the sample
            w = np.broadcast_to(w.reshape(w.shape + (1,) * (values.ndim - w.ndim)), values.shape)
            self.total += float(np.sum(values * w))
            self.count += float(np.sum(w))
        else:
            self.total += float(np.sum(values))
            self.count += values.size

    def result(self):
        return self.total / self.count if self.count else 0.0


def get(identifier, y_true_shape, y_pred_shape):
    """A MeanMetric for a Keras metric name; "accuracy"/"acc" picks binary (one output unit), sparse categorical
    (labels of lower rank, or a trailing 1 against several units) or categorical accuracy, as Keras 3 does."""
    if isinstance(identifier, MeanMetric):
        return identifier
    name = str(identifier)
    key = name.lower()
    if key in ("accuracy", "acc"):
        if y_pred_shape[-1] == 1:
            key = "binary_accuracy"
        elif len(y_true_shape) < len(y_pred_shape) or (y_true_shape[-1] == 1 and y_pred_shape[-1] > 1):
            key = "sparse_categorical_accuracy"
        else:
            key = "categorical_accuracy"
    if key not in _FNS:
        raise ValueError(f"unknown metric {identifier!r}; supported: accuracy, acc, {', '.join(sorted(_FNS))}")
    return MeanMetric(_FNS[key], name, _DIRECTION[key])

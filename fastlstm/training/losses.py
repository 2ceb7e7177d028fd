"""Keras 3 losses with their gradients: binary / categorical / sparse categorical crossentropy (each with
from_logits), mean squared error, mean absolute error.

Keras semantics (keras/src/losses/*.py, TF backend nn.py):
    per-sample value = mean over the last axis (crossentropies: the sum over classes is the value)
    probabilities are clipped to [1e-7, 1 - 1e-7]; categorical crossentropy first renormalizes them to sum 1;
    an output that a sigmoid/softmax layer produced is scored from its logits (the trainer passes them), unclipped
    reduction "sum_over_batch_size": sum(values * w) / values.size, with w = total/valid at unmasked entries of
    the output's mask (0 elsewhere); "sum": sum(values * w); "none": the values.
"""
import numpy as np

EPSILON = 1e-7
_REDUCTIONS = ("sum_over_batch_size", "sum", "none", None, "mean")


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def _log_softmax(z):
    s = z - np.max(z, axis=-1, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=-1, keepdims=True))


def _same_rank(y_true, y_pred):
    """Keras squeeze_or_expand_to_same_rank(y_true, y_pred)."""
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_pred = y_pred[..., None] if y_pred.ndim == 1 else y_pred
        y_true = y_true if y_pred.ndim == y_true.ndim else y_true[..., 0]
    elif y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        if y_true.ndim == 1:
            y_true = y_true[:, None]
        else:
            y_pred = y_pred[..., 0]
    return y_true, y_pred


class Loss:
    """Base class: `loss(y_true, y_pred, sample_weight=None)` returns the reduced loss as a float (Keras API).

    Subclasses implement `values_and_grad(y_true, y_pred, logits)` -> (per-sample values, d values / d input)
    where the input is `logits` when given (the output layer's pre-activation), else `y_pred`.
    """

    uses_logits = False          # crossentropies accept the output layer's logits instead of probabilities

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"Invalid value for argument `reduction`: {reduction!r}; expected one of "
                             f"'sum_over_batch_size', 'sum', 'none'")
        self.name = name or _snake(type(self).__name__)
        self.reduction = "sum_over_batch_size" if reduction == "mean" else reduction
        self.dtype = dtype

    # ---- public Keras-style call --------------------------------------------------------------------------
    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = np.asarray(y_pred)
        y_pred = y_pred if y_pred.dtype.kind == "f" else y_pred.astype(np.float32)
        values, _ = self.values_and_grad(np.asarray(y_true), y_pred, None, need_grad=False)
        if self.reduction in ("none", None):
            return values
        return self.reduce(values, None, sample_weight)[0]

    def reduce(self, values, mask=None, sample_weight=None):
        """(loss, d loss / d values) for this reduction; mask (same shape as values) marks valid entries."""
        w = np.ones(values.shape, values.dtype)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool).reshape(values.shape)
            valid = mask.sum()
            w = np.where(mask, values.dtype.type(values.size / valid) if valid else 0, 0).astype(values.dtype)
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=values.dtype)
            while sw.ndim < values.ndim:
                sw = sw[..., None]
            w = w * sw
        if self.reduction == "sum":
            return float(np.sum(values * w, dtype=np.float64)), w
        n = values.size
        return (float(np.sum(values * w, dtype=np.float64) / n) if n else 0.0), w / values.dtype.type(max(n, 1))

    # ---- what subclasses implement ------------------------------------------------------------------
    def values_and_grad(self, y_true, y_pred, logits=None, need_grad=True):
        raise NotImplementedError

    def check_labels(self, y_true, y_pred_shape):
        """Raise ValueError when labels cannot go with predictions of shape y_pred_shape."""

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


def _snake(name):
    import re
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _shape_error(loss, y_true, y_pred_shape, expected):
    return ValueError(f"{loss.name}: labels of shape {tuple(np.shape(y_true))} do not fit predictions of shape "
                      f"{tuple(y_pred_shape)}; expected labels of shape {expected}")


class BinaryCrossentropy(Loss):
    """-(y log p + (1 - y) log(1 - p)), mean over the last axis. Labels in [0, 1], same shape as predictions
    (or without their trailing 1)."""

    uses_logits = True

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name="binary_crossentropy", dtype=None):
        super().__init__(name, reduction, dtype)
        self.from_logits, self.label_smoothing, self.axis = bool(from_logits), float(label_smoothing), axis

    def check_labels(self, y_true, y_pred_shape):
        yt = np.asarray(y_true)
        if yt.dtype.kind not in "fiub":
            raise TypeError(f"{self.name}: labels must be numeric, got dtype {yt.dtype}")
        a, b = _same_rank(yt, np.empty(y_pred_shape, np.float32))
        if a.shape != b.shape:
            raise _shape_error(self, yt, y_pred_shape, tuple(y_pred_shape))

    def values_and_grad(self, y_true, y_pred, logits=None, need_grad=True):
        x = logits if logits is not None else y_pred
        dt = x.dtype
        y, x = _same_rank(np.asarray(y_true), x)
        y = y.astype(dt, copy=False)
        if self.label_smoothing:
            y = y * dt.type(1 - self.label_smoothing) + dt.type(0.5 * self.label_smoothing)
        n = x.shape[-1]
        if logits is not None or self.from_logits:
            # max(z, 0) - z*y + log(1 + exp(-|z|));  d/dz = sigmoid(z) - y
            e = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
            d = (_sigmoid(x) - y) / dt.type(n) if need_grad else None
        else:
            p = np.clip(x, dt.type(EPSILON), dt.type(1 - EPSILON))
            e = -(y * np.log(p) + (1 - y) * np.log(1 - p))
            d = None
            if need_grad:
                inside = (x >= dt.type(EPSILON)) & (x <= dt.type(1 - EPSILON))
                d = np.where(inside, (p - y) / (p * (1 - p)), 0).astype(dt) / dt.type(n)
        values = np.mean(e, axis=-1)
        if d is not None and d.shape != (logits if logits is not None else y_pred).shape:
            d = d.reshape((logits if logits is not None else y_pred).shape)
        return values, d

    def get_config(self):
        cfg = super().get_config()
        cfg.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing, axis=self.axis)
        return cfg


class CategoricalCrossentropy(Loss):
    """-sum(y * log p) over the last axis; labels one-hot (or distributions), same shape as predictions."""

    uses_logits = True

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name="categorical_crossentropy", dtype=None):
        super().__init__(name, reduction, dtype)
        self.from_logits, self.label_smoothing, self.axis = bool(from_logits), float(label_smoothing), axis

    def check_labels(self, y_true, y_pred_shape):
        yt = np.asarray(y_true)
        if yt.dtype.kind not in "fiub":
            raise TypeError(f"{self.name}: labels must be numeric, got dtype {yt.dtype}")
        if yt.shape != tuple(y_pred_shape):
            hint = " (integer class ids go with sparse_categorical_crossentropy)" if \
                yt.shape == tuple(y_pred_shape[:-1]) or yt.shape == tuple(y_pred_shape[:-1]) + (1,) else ""
            raise _shape_error(self, yt, y_pred_shape, f"{tuple(y_pred_shape)} (one-hot){hint}")

    def values_and_grad(self, y_true, y_pred, logits=None, need_grad=True):
        x = logits if logits is not None else y_pred
        dt = x.dtype
        y = np.asarray(y_true).astype(dt, copy=False)
        if self.label_smoothing:
            y = y * dt.type(1 - self.label_smoothing) + dt.type(self.label_smoothing / x.shape[-1])
        d = None
        if logits is not None or self.from_logits:
            ls = _log_softmax(x)
            values = -np.sum(y * ls, axis=-1)
            if need_grad:
                d = np.exp(ls) * np.sum(y, axis=-1, keepdims=True) - y
        else:
            s = np.sum(x, axis=-1, keepdims=True)
            p = x / s
            pc = np.clip(p, dt.type(EPSILON), dt.type(1 - EPSILON))
            values = -np.sum(y * np.log(pc), axis=-1)
            if need_grad:
                inside = (p >= dt.type(EPSILON)) & (p <= dt.type(1 - EPSILON))
                dp = np.where(inside, -y / pc, 0).astype(dt)
                # p = x / s:  dx = (dp - sum(dp * p)) / s
                d = (dp - np.sum(dp * p, axis=-1, keepdims=True)) / s
        return values, d

    def get_config(self):
        cfg = super().get_config()
        cfg.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing, axis=self.axis)
        return cfg


class SparseCategoricalCrossentropy(Loss):
    """-log p[y] with integer class ids y of shape predictions.shape[:-1] (or with a trailing 1)."""

    uses_logits = True

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(name, reduction, dtype)
        if ignore_class is not None:
            raise NotImplementedError("SparseCategoricalCrossentropy(ignore_class=...) is not supported")
        self.from_logits, self.ignore_class = bool(from_logits), ignore_class

    def _ids(self, y_true, y_pred_shape):
        yt = np.asarray(y_true)
        if yt.ndim == len(y_pred_shape) and yt.shape[-1:] == (1,):
            yt = yt[..., 0]
        if yt.shape != tuple(y_pred_shape[:-1]):
            extra = " (one-hot labels go with categorical_crossentropy)" if yt.shape == tuple(y_pred_shape) else ""
            raise _shape_error(self, y_true, y_pred_shape, f"{tuple(y_pred_shape[:-1])} of class ids{extra}")
        if yt.dtype.kind == "f":
            if not np.all(np.isfinite(yt)) or np.any(yt != np.round(yt)):
                raise ValueError(f"{self.name}: labels must be integer class ids, got non-integer values")
        elif yt.dtype.kind not in "iub":
            raise TypeError(f"{self.name}: labels must be integer class ids, got dtype {yt.dtype}")
        ids = yt.astype(np.intp, copy=False)
        C = y_pred_shape[-1]
        if ids.size and (ids.min() < 0 or ids.max() >= C):
            bad = ids[(ids < 0) | (ids >= C)]
            raise ValueError(f"{self.name}: class ids must be in [0, {C}) for predictions with {C} classes, "
                             f"got {int(bad.flat[0])} ({bad.size} out of range)")
        return ids

    def check_labels(self, y_true, y_pred_shape):
        self._ids(y_true, y_pred_shape)

    def values_and_grad(self, y_true, y_pred, logits=None, need_grad=True):
        x = logits if logits is not None else y_pred
        dt = x.dtype
        ids = self._ids(y_true, x.shape)
        if logits is not None or self.from_logits:
            lz = x
            inside = None
        else:
            # Keras: log(clip(p)) are the logits of a softmax crossentropy
            inside = (x >= dt.type(EPSILON)) & (x <= dt.type(1 - EPSILON))
            pc = np.clip(x, dt.type(EPSILON), dt.type(1 - EPSILON))
            lz = np.log(pc)
        ls = _log_softmax(lz)
        values = -np.take_along_axis(ls, ids[..., None], axis=-1)[..., 0]
        d = None
        if need_grad:
            d = np.exp(ls)
            np.put_along_axis(d, ids[..., None], np.take_along_axis(d, ids[..., None], axis=-1) - 1, axis=-1)
            if inside is not None:
                d = np.where(inside, d / pc, 0).astype(dt)
        return values, d

    def get_config(self):
        cfg = super().get_config()
        cfg.update(from_logits=self.from_logits, ignore_class=self.ignore_class)
        return cfg


class _ResidualLoss(Loss):
    """A loss of the residual r = p - y, averaged over the last axis: labels shaped like the predictions."""

    def check_labels(self, y_true, y_pred_shape):
        BinaryCrossentropy.check_labels(self, y_true, y_pred_shape)

    def residual(self, y_true, y_pred):
        """(r = p - y in y_pred's dtype, with y_pred's rank; the number of values averaged)"""
        y, p = _same_rank(np.asarray(y_true), y_pred)
        return p - y.astype(y_pred.dtype, copy=False), p.shape[-1]


class MeanSquaredError(_ResidualLoss):
    """mean((y - p)^2) over the last axis."""

    def __init__(self, reduction="sum_over_batch_size", name="mean_squared_error", dtype=None):
        super().__init__(name, reduction, dtype)

    def values_and_grad(self, y_true, y_pred, logits=None, need_grad=True):
        r, n = self.residual(y_true, y_pred)
        d = (r * y_pred.dtype.type(2.0 / n)).reshape(y_pred.shape) if need_grad else None
        return np.mean(r * r, axis=-1), d


class MeanAbsoluteError(_ResidualLoss):
    """mean(|y - p|) over the last axis."""

    def __init__(self, reduction="sum_over_batch_size", name="mean_absolute_error", dtype=None):
        super().__init__(name, reduction, dtype)

    def values_and_grad(self, y_true, y_pred, logits=None, need_grad=True):
        r, n = self.residual(y_true, y_pred)
        d = (np.sign(r) / y_pred.dtype.type(n)).reshape(y_pred.shape) if need_grad else None
        return np.mean(np.abs(r), axis=-1), d


# Functional forms (Keras `keras.losses.binary_crossentropy(y_true, y_pred)`): per-sample values.
def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    return BinaryCrossentropy(from_logits, label_smoothing, reduction="none")(y_true, y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    return CategoricalCrossentropy(from_logits, label_smoothing, reduction="none")(y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    return SparseCategoricalCrossentropy(from_logits, reduction="none")(y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    return MeanSquaredError(reduction="none")(y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    return MeanAbsoluteError(reduction="none")(y_true, y_pred)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error

_BY_NAME = {
    "binary_crossentropy": BinaryCrossentropy, "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy, "cce": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
}


def get(identifier):
    """A Loss object from a Loss, a name ("binary_crossentropy", "mse", ...; class names too) or a Keras config
    dict."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        cfg = dict(identifier.get("config") or {})
        name = identifier.get("class_name", "")
        cls = _BY_NAME.get(_snake(name)) or _BY_NAME.get(name)
        if cls is None:
            raise ValueError(f"unknown loss {name!r}; supported: {', '.join(sorted(_BY_NAME))}")
        cfg.pop("fn", None)
        return cls(**cfg)
    if callable(identifier) and getattr(identifier, "__name__", None) in _BY_NAME:
        return _BY_NAME[identifier.__name__]()
    if isinstance(identifier, str):
        key = identifier if identifier in _BY_NAME else _snake(identifier)
        if key in _BY_NAME:
            return _BY_NAME[key]()
    raise ValueError(f"unknown loss {identifier!r}; supported: {', '.join(sorted(_BY_NAME))} or a "
                     f"fastlstm.losses.Loss")

"""Keras-compatible weight initializers (names, arguments and distributions as in Keras 3).

`get(spec)` accepts a name ("glorot_uniform"), a Keras config dict ({"class_name": "Orthogonal", "config": {...}})
or a callable (shape, dtype, rng) -> array.
"""
import numpy as np


def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(scale, mode, distribution):
    def init(shape, dtype, rng):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(1.0, n)
        if distribution == "uniform":
            lim = np.sqrt(3 * var)
            return rng.uniform(-lim, lim, size=shape).astype(dtype)
        std = np.sqrt(var) / 0.87962566103423978  # truncated normal at 2 std, Keras's correction
        out = rng.standard_normal(size=shape)
        bad = np.abs(out) > 2
        while bad.any():
            out[bad] = rng.standard_normal(size=int(bad.sum()))
            bad = np.abs(out) > 2
        return (out * std).astype(dtype)
    return init


def orthogonal(gain=1.0):
    def init(shape, dtype, rng):
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (gain * q[:rows, :cols]).reshape(shape).astype(dtype)
    return init


def constant(value=0.0):
    return lambda shape, dtype, rng: np.full(shape, value, dtype=dtype)


def random_uniform(minval=-0.05, maxval=0.05):
    return lambda shape, dtype, rng: rng.uniform(minval, maxval, size=shape).astype(dtype)


def random_normal(mean=0.0, stddev=0.05):
    return lambda shape, dtype, rng: (mean + stddev * rng.standard_normal(size=shape)).astype(dtype)


_BY_NAME = {
    "glorot_uniform": lambda **k: _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": lambda **k: _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": lambda **k: _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": lambda **k: _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": lambda **k: _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": lambda **k: _variance_scaling(1.0, "fan_in", "normal"),
    "variance_scaling": lambda scale=1.0, mode="fan_in", distribution="truncated_normal", **k:
        _variance_scaling(scale, mode, "uniform" if distribution == "uniform" else "normal"),
    "orthogonal": lambda gain=1.0, **k: orthogonal(gain),
    "zeros": lambda **k: constant(0.0),
    "ones": lambda **k: constant(1.0),
    "constant": lambda value=0.0, **k: constant(value),
    "random_uniform": lambda minval=-0.05, maxval=0.05, **k: random_uniform(minval, maxval),
    "random_normal": lambda mean=0.0, stddev=0.05, **k: random_normal(mean, stddev),
}


def _snake(name):
    import re
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def get(spec):
    """An initializer function (shape, dtype, rng) -> array."""
    if callable(spec):
        return spec
    cfg = {}
    if isinstance(spec, dict):
        cfg = {k: v for k, v in (spec.get("config") or {}).items() if k not in ("seed",)}
        spec = spec.get("class_name", "")
    name = _snake(str(spec)) if str(spec)[:1].isupper() else str(spec)
    name = {"glorot_uniform": "glorot_uniform", "identity": "identity"}.get(name, name)
    if name not in _BY_NAME:
        raise ValueError(f"unknown initializer {spec!r}; supported: {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[name](**cfg)


_global_rng = np.random.default_rng()


def set_random_seed(seed):
    """Seed the generator that layers without their own `seed` draw their initial weights from."""
    global _global_rng
    _global_rng = np.random.default_rng(seed)


def rng_for(seed=None):
    """The generator a layer initializes from: its own seed if given, else the global one."""
    return np.random.default_rng(seed) if seed is not None else _global_rng

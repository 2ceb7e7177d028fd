"""Build complete, random kernel argument sets: used by the tests, the benchmarks and tools/kernel_report.py.

`lstm_args(...)` / `gru_args(...)` return an ordered dict whose values, in order, are the positional
arguments of `lstm_forward` / `gru_forward`; `lstm_backward_args(fwd, ...)` / `gru_backward_args(...)`
extend a forward argument set (after the forward ran) into the backward's arguments.
"""
from collections import OrderedDict

import numpy as np

from . import acts

LSTM_DEFAULT_ACTS = [(acts.SIGMOID, 0.0, 0.0), (acts.TANH, 0.0, 0.0), (acts.TANH, 0.0, 0.0)]
GRU_DEFAULT_ACTS = [(acts.SIGMOID, 0.0, 0.0), (acts.TANH, 0.0, 0.0)]


def _mask(T, B, rng, kind):
    """kind: None (no mask), "random", "post" (right padding, fully masked row included when B > 1)."""
    if kind is None:
        return np.zeros((0, 0), np.uint8)
    if kind == "random":
        m = (rng.random((T, B)) < 0.7).astype(np.uint8)
    else:
        lengths = rng.integers(1, T + 1, size=B)
        m = (np.arange(T)[:, None] < lengths[None, :]).astype(np.uint8)
    if B > 1:
        m[:, -1] = 0      # one fully masked row
    return m


def lstm_args(T, B, I, H, dtype=np.float32, rng=None, *, training=False, mask=None, reverse=False,
              peepholes=False, clip=0.0, input_forget=False, act_specs=None, scale=0.5):
    rng = np.random.default_rng(0) if rng is None else rng
    r = lambda *shape: (scale * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
    codes, ab = acts.pack(act_specs or LSTM_DEFAULT_ACTS)
    G = 4 * H
    n = T if training else 0
    return OrderedDict(
        x=r(T, B, I), w_x=r(I, G), w_h=r(H, G), b=r(G),
        p=r(3, H) if peepholes else np.zeros((0, H), dtype),
        h0=r(B, H), c0=r(B, H), mask=_mask(T, B, rng, mask),
        act_codes=codes, act_ab=ab, clip=float(clip), input_forget=bool(input_forget), reverse=bool(reverse),
        z_ws=np.zeros((T, B, G), dtype), y_out=np.zeros((T, B, H), dtype),
        hT_out=np.zeros((B, H), dtype), cT_out=np.zeros((B, H), dtype),
        gates_out=np.zeros((n, B if n else 0, G if n else 0), dtype),
        cs_out=np.zeros((n, B if n else 0, H if n else 0), dtype),
    )


def lstm_backward_args(fwd, rng=None, dy=None, dhT=None, dcT=None):
    """Backward arguments after `lstm_forward(*fwd.values())` ran with training outputs."""
    rng = np.random.default_rng(1) if rng is None else rng
    x, w_x, w_h, p = fwd["x"], fwd["w_x"], fwd["w_h"], fwd["p"]
    dt = x.dtype
    T, B, _ = x.shape
    H = w_h.shape[0]
    out = OrderedDict((k, fwd[k]) for k in ("x", "w_x", "w_h", "b", "p", "h0", "c0", "mask", "act_codes",
                                           "act_ab", "clip", "input_forget", "reverse", "z_ws"))
    out.update(
        gates=fwd["gates_out"], cs=fwd["cs_out"], y=fwd["y_out"],
        dy=rng.standard_normal((T, B, H)).astype(dt) if dy is None else dy,
        dhT=rng.standard_normal((B, H)).astype(dt) if dhT is None else dhT,
        dcT=rng.standard_normal((B, H)).astype(dt) if dcT is None else dcT,
        dz_ws=np.zeros((T, B, 4 * H), dt), dx_out=np.zeros_like(x), dw_x_out=np.zeros_like(w_x),
        dw_h_out=np.zeros_like(w_h), db_out=np.zeros(4 * H, dt), dp_out=np.zeros_like(p),
        dh0_out=np.zeros((B, H), dt), dc0_out=np.zeros((B, H), dt),
    )
    return out


def gru_args(T, B, I, H, dtype=np.float32, rng=None, *, training=False, mask=None, reverse=False,
             reset_after=True, clip=0.0, act_specs=None, scale=0.5):
    rng = np.random.default_rng(0) if rng is None else rng
    r = lambda *shape: (scale * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
    codes, ab = acts.pack(act_specs or GRU_DEFAULT_ACTS)
    G = 3 * H
    n = T if training else 0
    return OrderedDict(
        x=r(T, B, I), w_x=r(I, G), w_h=r(H, G), b_x=r(G), b_h=r(G), h0=r(B, H), mask=_mask(T, B, rng, mask),
        act_codes=codes, act_ab=ab, clip=float(clip), reset_after=bool(reset_after), reverse=bool(reverse),
        z_ws=np.zeros((T, B, G), dtype), hz_ws=np.zeros((T, B, G), dtype), y_out=np.zeros((T, B, H), dtype),
        hT_out=np.zeros((B, H), dtype), gates_out=np.zeros((n, B if n else 0, G if n else 0), dtype),
    )


def gru_backward_args(fwd, rng=None, dy=None, dhT=None):
    """Backward arguments after `gru_forward(*fwd.values())` ran with training outputs."""
    rng = np.random.default_rng(1) if rng is None else rng
    x, w_x, w_h = fwd["x"], fwd["w_x"], fwd["w_h"]
    dt = x.dtype
    T, B, _ = x.shape
    H = w_h.shape[0]
    out = OrderedDict((k, fwd[k]) for k in ("x", "w_x", "w_h", "b_x", "b_h", "h0", "mask", "act_codes",
                                           "act_ab", "clip", "reset_after", "reverse", "z_ws", "hz_ws"))
    out.update(
        gates=fwd["gates_out"], y=fwd["y_out"],
        dy=rng.standard_normal((T, B, H)).astype(dt) if dy is None else dy,
        dhT=rng.standard_normal((B, H)).astype(dt) if dhT is None else dhT,
        dz_ws=np.zeros((T, B, 3 * H), dt), dhz_ws=np.zeros((T, B, 3 * H), dt), dx_out=np.zeros_like(x),
        dw_x_out=np.zeros_like(w_x), dw_h_out=np.zeros_like(w_h), db_x_out=np.zeros(3 * H, dt),
        db_h_out=np.zeros(3 * H, dt), dh0_out=np.zeros((B, H), dt),
    )
    return out


def copy_args(args):
    """A deep copy (arrays copied) so two backends can run on the same inputs."""
    return OrderedDict((k, v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items())

"""Fused element-wise loops for training (Numba when installed, NumPy otherwise).

A training step of an Embedding(20000, 128) model updates 2.56M parameters; NumPy spends about a dozen passes
over memory on one Adam update, a fused loop one. The loops compute exactly the NumPy expressions written above
them, in the arrays' dtype. Numba is imported on first use only.
"""
import numpy as np

from .. import config

FUSED_MIN_SIZE = 1 << 14      # below this many elements NumPy's per-call cost is lower than a jitted call's
_jit = {}


def _numba_kernels():
    """Compile (or load from cache) the fused loops; None when Numba is missing."""
    if "k" in _jit:
        return _jit["k"]
    try:
        import numba
    except ImportError:
        _jit["k"] = None
        return None
    flags = dict(config.NUMBA_FLAGS)
    flags["fastmath"] = False      # bitwise the same as the NumPy expressions

    @numba.njit(**flags)
    def adam(w, g, m, v, c1, c2, alpha, eps, backup):
        # m += (g - m) * (1 - b1);  v += (g*g - v) * (1 - b2);  w -= alpha * m / (sqrt(v) + eps)
        do_backup = backup.shape[0] > 0
        for k in range(w.shape[0]):
            gk = g[k]
            mk = m[k] + (gk - m[k]) * c1
            vk = v[k] + (gk * gk - v[k]) * c2
            m[k] = mk
            v[k] = vk
            if do_backup:
                backup[k] = w[k]
            w[k] = w[k] - (mk * alpha) / (np.sqrt(vk) + eps)

    @numba.njit(**flags)
    def scatter_add_rows(out, idx, rows):
        # out[idx[n]] += rows[n]   (repeated ids add up, like np.add.at)
        E = out.shape[1]
        for n in range(idx.shape[0]):
            r = idx[n]
            for e in range(E):
                out[r, e] += rows[n, e]

    @numba.njit(**flags)
    def zero_rows(out, idx):
        # out[idx] = 0
        E = out.shape[1]
        for n in range(idx.shape[0]):
            r = idx[n]
            for e in range(E):
                out[r, e] = 0

    _jit["k"] = (adam, scatter_add_rows, zero_rows)
    return _jit["k"]


def adam_update(w, g, m, v, beta_1, beta_2, alpha, epsilon, backup=None):
    """Keras 3 Adam on flat arrays of one dtype (in place):
    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);  w -= alpha * m / (sqrt(v) + eps).
    backup (optional): receives w before the update."""
    dt = w.dtype.type
    kern = _numba_kernels() if w.size >= FUSED_MIN_SIZE else None
    if kern is not None and w.flags.c_contiguous and g.flags.c_contiguous and g.dtype == w.dtype:
        kern[0](w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), dt(1 - beta_1), dt(1 - beta_2),
                dt(alpha), dt(epsilon), (backup if backup is not None else np.empty(0, w.dtype)).reshape(-1))
        return
    if backup is not None:
        np.copyto(backup, w)
    g = g.astype(w.dtype, copy=False)
    m += (g - m) * dt(1 - beta_1)
    v += (g * g - v) * dt(1 - beta_2)
    w -= (m * dt(alpha)) / (np.sqrt(v) + dt(epsilon))


def scatter_add_rows(out, idx, rows):
    """out[idx[n], :] += rows[n, :] for n in range(len(idx)); repeated ids accumulate.
    out (V, E) C-contiguous, idx (N,) int, rows (N, E)."""
    kern = _numba_kernels() if idx.size * out.shape[1] >= FUSED_MIN_SIZE else None
    if kern is not None and out.flags.c_contiguous:
        kern[1](out, idx.astype(np.intp, copy=False), np.ascontiguousarray(rows, dtype=out.dtype))
        return
    np.add.at(out, idx, rows.astype(out.dtype, copy=False))


def zero_rows(out, idx):
    """out[idx, :] = 0.  out (V, E) C-contiguous, idx (N,) int."""
    kern = _numba_kernels() if idx.size * out.shape[1] >= FUSED_MIN_SIZE else None
    if kern is not None and out.flags.c_contiguous:
        kern[2](out, idx.astype(np.intp, copy=False))
        return
    out[idx] = 0

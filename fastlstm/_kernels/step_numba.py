"""Batch-1 float32 streaming steps for the Numba backend: the twins of lstm_cy.LSTMStepper and gru_cy.GRUStepper
(same constructors, step(), run(); stream.py builds them once per session layer).

LSTM, one step (gate order i, f, g, o; a_f, a_g, a_h the activations by code):
    z = [x_t, h] @ [w_x; w_h] + b            (one product over the packed (I + H, 4H) matrix)
    z_i += p_i * c;  z_f += p_f * c;  clip z_i, z_f, z_g;  i = a_f(z_i);  f = a_f(z_f) (input_forget: 1 - i)
    g = a_g(z_g);  c = f * c + i * g;  z_o += p_o * c;  clip z_o;  o = a_f(z_o);  h = o * a_h(c)
GRU, one step (gate order z, r, n):
    xz, xr, xn = x_t @ w_x + b_x
    reset_after:   hz, hr, hn = h @ w_h + b_h;  z = a_f(xz + hz);  r = a_f(xr + hr);  n = a_g(xn + r * hn)
    reset_before:  hz, hr = h @ w_h[:, :2H] + b_h[:2H];  z, r as above;  n = a_g(xn + ((r * h) @ w_hn + b_hn))
    h = z * h + (1 - z) * n                  (clip clamps the three pre-activations)
At batch 1 a step is bound by how fast the weights stream from cache: they are packed once (Packed64: 64-column
panels, each K contiguous rows of 64 floats, read as one sequential stream by the 1x64 register tile of
_numba_common), and successive products sweep the panels in alternating order, so that a sweep starts on the
panels the previous one left in cache. The state arrays h, c (shape (1, H)) belong to the caller and are updated
in place.
Per-call overhead (a session's hot path): step() and run() are closures bound at construction that call the
compiled entry points directly (no dispatcher type resolution) with three arrays: x, the output and `meta`, the
addresses of the stepper's own arrays (packed weights, a workspace holding biases, settings and scratch, the
states), which the kernels view through numba.carray; the closures keep those arrays alive. The GIL is released.
Numba's cache keys on this file's content only: after editing _numba_common, delete the cached kernels (see
_numba_common's docstring).
"""
import numba
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from ..config import NUMBA_FLAGS
from ._numba_common import (ONE, ROW_TILE_COLS, act_row, clip_row, gemv_panels, lstm_gates_general, pack_panels,
                            sigmoid_gate, tanh)
from .acts import SIGMOID, TANH

_F32 = np.dtype(np.float32)
AVAILABLE = not numba.config.DISABLE_JIT      # the register tile is LLVM IR: no pure-Python version


class Packed64:
    """W (K x N, float32) packed once in 64-column panels, data (ceil(N / 64), K, 64) zero padded; read-only after
    construction (many steppers share one). Raises RuntimeError with NUMBA_DISABLE_JIT (the tile is LLVM IR):
    the sessions then take the general kernels."""
    __slots__ = ("data", "K", "N")

    def __init__(self, w):
        if not AVAILABLE:
            raise RuntimeError("packed one-row products need the jitted tile (NUMBA_DISABLE_JIT is set)")
        w = np.asarray(w)
        if w.ndim != 2 or w.dtype != _F32:
            raise ValueError(f"Packed64 needs a 2-D float32 matrix, got {w.dtype} of shape {w.shape}")
        self.K, self.N = w.shape
        if self.K < 1 or self.N < 1:
            raise ValueError(f"Packed64 needs a non-empty matrix, got shape ({self.K}, {self.N})")
        self.data = np.empty(((self.N + ROW_TILE_COLS - 1) // ROW_TILE_COLS, self.K, ROW_TILE_COLS), np.float32)
        pack_panels(w, False, self.data)


# ---- kernels ----------------------------------------------------------------------------------------------
@intrinsic
def _f32_ptr(typingctx, addr):
    """The float32 pointer at address addr (an int64): for numba.carray views of the stepper's own arrays."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return types.CPointer(types.float32)(addr), codegen


@njit(**NUMBA_FLAGS)
def _gemv64(x, wp, y, flags, which):
    """y[:64P] = x (K,) @ W, W packed (P, K, 64); y padded to whole panels. flags[which] (one per matrix) flips
    on every call and picks the panel order (forward, backward)."""
    back = flags[which] != 0
    flags[which] = 0 if back else 1
    gemv_panels(x, wp, y, back)


@njit(**NUMBA_FLAGS)
def _lstm_cell_fast(z, b, c, h):
    """The default cell (sigmoid, tanh, tanh) on z = the product (bias not added yet); c, h updated in place."""
    H = c.shape[0]
    for j in range(H):
        i = sigmoid_gate(z[j] + b[j])
        f = sigmoid_gate(z[H + j] + b[H + j])
        g = tanh(z[2 * H + j] + b[2 * H + j])
        o = sigmoid_gate(z[3 * H + j] + b[3 * H + j])
        c_new = f * c[j] + i * g
        c[j] = c_new
        h[j] = o * tanh(c_new)


@njit(**NUMBA_FLAGS)
def _lstm_cell_general(z, b, p, codes, ab, clip, input_forget, c, h, gate, ac):
    """Any activations, peepholes (p (3, H), else (0, H)), clip (> 0), input_forget; z (>= 4H) the product,
    overwritten with the pre-activations; gate (4H,), ac (H,) scratch; c, h updated in place."""
    H = c.shape[0]
    for j in range(4 * H):
        z[j] += b[j]
    lstm_gates_general(z, c, c, gate, p, codes[0], ab[0], ab[1], codes[1], ab[2], ab[3], clip, input_forget)
    act_row(codes[2], ab[4], ab[5], c, ac)
    for j in range(H):
        h[j] = gate[3 * H + j] * ac[j]


# Each stepper's own numbers travel in one float32 array ws (every array argument costs about 70 ns per call),
# each part starting on a multiple of 16 floats:
#   LSTM [cfg (16) | b (4H) | p (3H) | xh = [x_t, h] (I + H) | z (4H, padded to whole panels) | gates (4H), a_h(c) (H)]
#   GRU  [cfg (16) | b_x (3H) | b_h (3H) | zx (3H, padded) | hh (3H, padded) | hn (H, padded) | gates (3H)]
#   cfg  LSTM [sweep, codes (3), ab (6), clip, input_forget, fast, peepholes]
#        GRU  [sweep x, sweep h, sweep n, codes (2), ab (4), clip, reset_after, fast]
# (codes, flags and the float32 alpha, beta, clip the activations use are exact in float32)
@njit(**NUMBA_FLAGS)
def _r16(n):
    return (n + 15) // 16 * 16


@njit(**NUMBA_FLAGS)
def _padded(n):
    return (n + ROW_TILE_COLS - 1) // ROW_TILE_COLS * ROW_TILE_COLS


@njit(**NUMBA_FLAGS)
def _lstm_offsets(I, H):
    """Starts of b, p, xh, z, gates in ws, and its size."""
    b = 16
    p = b + _r16(4 * H)
    xh = p + _r16(3 * H)
    z = xh + _r16(I + H)
    gates = z + _padded(4 * H)
    return b, p, xh, z, gates, gates + _r16(5 * H)


@njit(**NUMBA_FLAGS)
def _gru_offsets(H):
    """Starts of b_x, b_h, zx, hh, hn, gates in ws, and its size."""
    bx = 16
    bh = bx + _r16(3 * H)
    zx = bh + _r16(3 * H)
    hh = zx + _padded(3 * H)
    hn = hh + _padded(3 * H)
    gates = hn + _padded(H)
    return bx, bh, zx, hh, hn, gates, gates + _r16(3 * H)


@njit(**NUMBA_FLAGS)
def _lstm_advance(x, y, store_all, meta):
    """k steps on the rows x (k, I); y (k, H) gets every h when store_all, else y (1, H) the last one.
    meta: addresses and sizes of the stepper's arrays (LSTMStepper)."""
    k, I = x.shape
    # meta = _meta(packed.data (P, K, 64), ws (n,), h (1, H), c (1, H))
    wp = numba.carray(_f32_ptr(meta[0]), (meta[1], meta[2], ROW_TILE_COLS))
    ws = numba.carray(_f32_ptr(meta[4]), meta[5])
    H = meta[8]
    h, c = numba.carray(_f32_ptr(meta[6]), H), numba.carray(_f32_ptr(meta[9]), H)
    ob, op, oxh, oz, og, _ = _lstm_offsets(I, H)
    b, xh, z, gate = ws[ob:ob + 4 * H], ws[oxh:oxh + I + H], ws[oz:oz + _padded(4 * H)], ws[og:og + 5 * H]
    p = ws[op:op + (3 * H if ws[13] != 0 else 0)].reshape(-1, H)
    codes = (int(ws[1]), int(ws[2]), int(ws[3]))
    ab, clip, input_forget, fast = ws[4:10], ws[10], ws[11] != 0, ws[12] != 0
    for t in range(k):
        xt = x[t]
        for j in range(I):
            xh[j] = xt[j]
        for j in range(H):
            xh[I + j] = h[j]
        _gemv64(xh, wp, z, ws, 0)
        if fast:
            _lstm_cell_fast(z, b, c, h)
        else:
            _lstm_cell_general(z, b, p, codes, ab, clip, input_forget, c, h, gate, gate[4 * H:])
        if store_all:
            y[t, :] = h
    if not store_all:
        y[0, :] = h


@njit(**NUMBA_FLAGS)
def _takes(x, n_in):
    """x (1, k, I) with I == n_in, k >= 1, C-contiguous: the input step() takes (the caller checked its type)."""
    # C-contiguous as NumPy defines it: the strides of length-1 dimensions do not matter
    return (x.shape[0] == 1 and x.shape[2] == n_in and x.shape[1] >= 1 and (n_in == 1 or x.strides[2] == 4)
            and (x.shape[1] == 1 or x.strides[1] == 4 * n_in))


@njit(**NUMBA_FLAGS)
def _lstm_seq(x, y, meta):
    """x (1, k, I) -> y (1, k, H), every step's h; False (nothing done) when x is not a (1, k, I) C-contiguous
    array with k >= 1."""
    if not _takes(x, meta[2] - meta[8]):
        return False
    _lstm_advance(x[0], y[0], True, meta)
    return True


@njit(**NUMBA_FLAGS)
def _lstm_last(x, y, meta):
    """x (1, k, I) -> y (1, H), the last h; False as _lstm_seq."""
    if not _takes(x, meta[2] - meta[8]):
        return False
    _lstm_advance(x[0], y, False, meta)
    return True


@njit(**NUMBA_FLAGS)
def _gru_gates_zr(zx, bx, hh, bh, codes, ab, clip, gate):
    """gate[:2H] = a_f(clip((zx + b_x) + (hh + b_h)))   over the z, r slices; zx[:2H] gets the pre-activations."""
    n = gate.shape[0] * 2 // 3
    for j in range(n):
        zx[j] = (zx[j] + bx[j]) + (hh[j] + bh[j])
    if clip > 0:
        clip_row(zx[:n], clip)
    act_row(codes[0], ab[0], ab[1], zx[:n], gate[:n])


@njit(**NUMBA_FLAGS)
def _gru_finish(zn, hn, bx, bh, r, mult_r, codes, ab, clip, z, n, h):
    """n = a_g(clip((x_n + b_xn) + r * (hn + b_hn)))  (mult_r; else (x_n + b_xn) + (hn + b_hn));
    h = z * h + (1 - z) * n   (every slice (H,))."""
    H = h.shape[0]
    if mult_r:
        for j in range(H):
            zn[j] = (zn[j] + bx[j]) + r[j] * (hn[j] + bh[j])
    else:
        for j in range(H):
            zn[j] = (zn[j] + bx[j]) + (hn[j] + bh[j])
    if clip > 0:
        clip_row(zn, clip)
    act_row(codes[1], ab[2], ab[3], zn, n)
    for j in range(H):
        h[j] = z[j] * h[j] + (ONE - z[j]) * n[j]


@njit(**NUMBA_FLAGS)
def _gru_cell_fast(zx, hh, bx, bh, h):
    """reset_after with sigmoid, tanh, no clip, in one loop; zx, hh the products (biases not added yet)."""
    H = h.shape[0]
    for j in range(H):
        z = sigmoid_gate((zx[j] + bx[j]) + (hh[j] + bh[j]))
        r = sigmoid_gate((zx[H + j] + bx[H + j]) + (hh[H + j] + bh[H + j]))
        n = tanh((zx[2 * H + j] + bx[2 * H + j]) + r * (hh[2 * H + j] + bh[2 * H + j]))
        h[j] = z * h[j] + (ONE - z) * n


@njit(**NUMBA_FLAGS)
def _gru_advance(x, y, store_all, meta):
    """k steps on the rows x (k, I); y (k, H) gets every h when store_all, else y (1, H) the last one.
    meta: addresses and sizes of the stepper's arrays (GRUStepper). reset_after: wph packs w_h (H, 3H), wpn is
    unused; reset_before: wph packs w_h[:, :2H], wpn w_h[:, 2H:]."""
    k = x.shape[0]
    # meta = _meta(packed_x.data, packed_h.data, packed_n.data (P, K, 64) each, ws (n,), h (1, H))
    wpx = numba.carray(_f32_ptr(meta[0]), (meta[1], meta[2], ROW_TILE_COLS))
    wph = numba.carray(_f32_ptr(meta[4]), (meta[5], meta[6], ROW_TILE_COLS))
    wpn = numba.carray(_f32_ptr(meta[8]), (meta[9], meta[10], ROW_TILE_COLS))
    ws = numba.carray(_f32_ptr(meta[12]), meta[13])
    H = meta[16]
    h = numba.carray(_f32_ptr(meta[14]), H)
    G = 3 * H
    obx, obh, ozx, ohh, ohn, og, _ = _gru_offsets(H)
    bx, bh, gate = ws[obx:obx + G], ws[obh:obh + G], ws[og:og + G]
    zx, hh, hn = ws[ozx:ozx + _padded(G)], ws[ohh:ohh + _padded(G)], ws[ohn:ohn + _padded(H)]
    codes = (int(ws[3]), int(ws[4]))
    ab, clip, reset_after, fast = ws[5:9], ws[9], ws[10] != 0, ws[11] != 0
    for t in range(k):
        _gemv64(x[t], wpx, zx, ws, 0)
        _gemv64(h, wph, hh, ws, 1)
        if fast:
            _gru_cell_fast(zx, hh, bx, bh, h)
        elif reset_after:
            _gru_gates_zr(zx, bx, hh, bh, codes, ab, clip, gate)
            _gru_finish(zx[2 * H:G], hh[2 * H:G], bx[2 * H:], bh[2 * H:], gate[H:2 * H], True, codes, ab, clip,
                        gate[:H], gate[2 * H:], h)
        else:
            _gru_gates_zr(zx, bx, hh, bh, codes, ab, clip, gate)
            rh = hh[2 * H:G]                   # hh's n slice is free here: r * h
            for j in range(H):
                rh[j] = gate[H + j] * h[j]
            _gemv64(rh, wpn, hn, ws, 2)
            _gru_finish(zx[2 * H:G], hn, bx[2 * H:], bh[2 * H:], gate[H:2 * H], False, codes, ab, clip,
                        gate[:H], gate[2 * H:], h)
        if store_all:
            y[t, :] = h
    if not store_all:
        y[0, :] = h


@njit(**NUMBA_FLAGS)
def _gru_seq(x, y, meta):
    """x (1, k, I) -> y (1, k, H), every step's h; False as _lstm_seq."""
    if not _takes(x, meta[2]):
        return False
    _gru_advance(x[0], y[0], True, meta)
    return True


@njit(**NUMBA_FLAGS)
def _gru_last(x, y, meta):
    """x (1, k, I) -> y (1, H), the last h; False as _lstm_seq."""
    if not _takes(x, meta[2]):
        return False
    _gru_advance(x[0], y, False, meta)
    return True


# ---- Python side ------------------------------------------------------------------------------------------
def _f32_array(a, ndim, name, cls):
    """a itself when it is a float32 C-contiguous array of rank ndim (the stepper writes or keeps it)."""
    if not (isinstance(a, np.ndarray) and a.dtype == _F32 and a.ndim == ndim and a.flags.c_contiguous):
        raise ValueError(f"{cls}: {name} must be a float32 C-contiguous array of rank {ndim}")
    return a


def _compiled(kern, *protos):
    """The compiled entry point of kern for the types of protos (compiled or loaded from the cache now). Called
    directly it skips the dispatcher's per-call type resolution (about 0.5 us); the callers check x's type."""
    return kern.compile(tuple(numba.typeof(a) for a in protos))


def _meta(*arrays):
    """int64 [address, shape...] of each array, flattened: what the kernels rebuild their views from (the stepper
    keeps the arrays; one argument instead of one per array saves about 70 ns per call)."""
    out = []
    for a in arrays:
        out += [a.ctypes.data, *a.shape]
    return np.array(out, np.int64)


def _bind(stepper, seq_kern, last_kern, keep, meta):
    """stepper.step and stepper.run as closures over the compiled kernels, the arrays they read (keep) and their
    addresses (meta) (the contract of Stepper in _blas.pxd)."""
    I, H, cls = stepper.n_in, stepper.units, type(stepper).__name__
    ndarray, f32, empty = np.ndarray, _F32, np.empty
    seq_kern = _compiled(seq_kern, empty((1, 1, I), f32), empty((1, 1, H), f32), meta)
    last_kern = _compiled(last_kern, empty((1, 1, I), f32), empty((1, H), f32), meta)

    def step(x, sequences):
        """Advance over x, a float32 C-contiguous array of shape (1, k, I), k >= 1. Returns a new array:
        (1, k, H) with every step's h when `sequences`, else (1, H), the last h. Returns None when x is
        anything else (the caller converts it and calls again). The GIL is released while it runs."""
        # the type here (what the compiled kernels unbox), the shape and contiguity in the kernels
        if x.__class__ is not ndarray or (x.dtype is not f32 and x.dtype != f32) or x.ndim != 3:
            return None
        if sequences:
            y = empty((1, x.shape[1], H), f32)
            return y if seq_kern(x, y, meta) else None
        y = empty((1, H), f32)
        return y if last_kern(x, y, meta) else None

    def run(x, y):
        """Advance over x (k, 1, I) (time-major); y (k, 1, H) gets every step's h."""
        ok = all(a.__class__ is ndarray and a.dtype == f32 and a.ndim == 3 and a.flags.c_contiguous for a in (x, y))
        if not ok or x.shape[1] != 1 or x.shape[2] != I or y.shape[0] != x.shape[0] or y.shape[1] != 1 \
                or y.shape[2] != H:
            raise ValueError(f"{cls}.run: expected x (k, 1, {I}) and y (k, 1, {H}), float32 C-contiguous, got "
                             f"{getattr(x, 'shape', x)} and {getattr(y, 'shape', y)}")
        if not y.flags.writeable:
            raise ValueError(f"{cls}.run: y is read-only")
        k = x.shape[0]
        if k:
            seq_kern(x.reshape(1, k, I), y.reshape(1, k, H), meta)

    step._keep = run._keep = keep        # the arrays behind meta live as long as either closure
    stepper.step, stepper.run = step, run


class LSTMStepper:
    """Batch-1 float32 LSTM steps over weights packed once (the Numba twin of lstm_cy.LSTMStepper).

    Parameters
    ----------
    packed : Packed64 of the (I + H, 4H) matrix [w_x; w_h] (shareable between steppers)
    b : (4H,) float32;  p : (3, H) | (0, H) float32 (copied: a session builds a new stepper when the weights
        change);  act_codes, act_ab : as for lstm_forward;  clip : float (<= 0: none);  input_forget : bool
    h, c : (1, H) float32 C-contiguous, the state, owned by the caller and updated in place

    Attributes n_in (I), units (H); step(x, sequences) and run(x, y) as for the Cython stepper (_blas.pxd
    Stepper). One stepper must not run in two threads at once.
    """

    def __init__(self, packed, b, p, act_codes, act_ab, clip, input_forget, h, c):
        cls = "LSTMStepper"
        h, c = _f32_array(h, 2, "h", cls), _f32_array(c, 2, "c", cls)
        b, p = _f32_array(b, 1, "b", cls), _f32_array(p, 2, "p", cls)
        H = h.shape[1]
        codes = np.asarray(act_codes).ravel()
        ab = np.asarray(act_ab, np.float64).ravel()
        if not isinstance(packed, Packed64) or h.shape[0] != 1 or c.shape != h.shape or b.shape[0] != 4 * H \
                or packed.N != 4 * H or packed.K <= H or p.shape[1] != H or p.shape[0] not in (0, 3) \
                or codes.shape[0] < 3 or ab.shape[0] < 6:
            raise ValueError(f"LSTMStepper: inconsistent shapes: packed ({getattr(packed, 'K', None)}, "
                             f"{getattr(packed, 'N', None)}), b {b.shape[0]}, p {p.shape}, h {h.shape}, c {c.shape}")
        self.packed, self.units, self.n_in = packed, H, packed.K - H
        I = self.n_in
        peep = p.shape[0] == 3
        fast = (codes[0] == SIGMOID and codes[1] == TANH and codes[2] == TANH and not peep and not clip > 0
                and not input_forget)
        ob, op, _, _, _, size = _lstm_offsets(I, H)
        ws = np.zeros(size, np.float32)
        ws[ob:ob + 4 * H] = b
        if peep:
            ws[op:op + 3 * H] = p.ravel()
        ws[1:4], ws[4:10] = codes[:3], ab[:6]
        ws[10:14] = clip, bool(input_forget), fast, peep
        _bind(self, _lstm_seq, _lstm_last, (packed, ws, h, c), _meta(packed.data, ws, h, c))


class GRUStepper:
    """Batch-1 float32 GRU steps over weights packed once (the Numba twin of gru_cy.GRUStepper).

    Parameters
    ----------
    packed_x : Packed64 of w_x (I, 3H)
    packed_h : Packed64 of w_h (H, 3H) (reset_after) or of w_h[:, :2H] (reset_before)
    packed_n : None (reset_after) or Packed64 of w_h[:, 2H:] (reset_before)
    b_x, b_h : (3H,) float32 (copied);  act_codes, act_ab : as for gru_forward;  clip : float;  reset_after : bool
    h : (1, H) float32 C-contiguous, the state, owned by the caller and updated in place

    Attributes and methods as LSTMStepper.
    """

    def __init__(self, packed_x, packed_h, packed_n, b_x, b_h, act_codes, act_ab, clip, reset_after, h):
        cls = "GRUStepper"
        h = _f32_array(h, 2, "h", cls)
        b_x, b_h = _f32_array(b_x, 1, "b_x", cls), _f32_array(b_h, 1, "b_h", cls)
        H, G = h.shape[1], 3 * h.shape[1]
        codes = np.asarray(act_codes).ravel()
        ab = np.asarray(act_ab, np.float64).ravel()
        ok = (isinstance(packed_x, Packed64) and isinstance(packed_h, Packed64) and h.shape[0] == 1
              and b_x.shape[0] == G and b_h.shape[0] == G and packed_x.N == G and packed_h.K == H
              and codes.shape[0] >= 2 and ab.shape[0] >= 4)
        if reset_after:
            ok = ok and packed_h.N == G and packed_n is None
        else:
            ok = ok and packed_h.N == 2 * H and isinstance(packed_n, Packed64) and packed_n.K == H and packed_n.N == H
        if not ok:
            shape = lambda q: None if q is None else (getattr(q, "K", "?"), getattr(q, "N", "?"))  # noqa: E731
            raise ValueError(f"GRUStepper: inconsistent shapes: packed_x {shape(packed_x)}, packed_h "
                             f"{shape(packed_h)}, packed_n {shape(packed_n)}, b_x {b_x.shape[0]}, b_h {b_h.shape[0]}, "
                             f"h {h.shape}, reset_after={reset_after}")
        self.packed = (packed_x, packed_h, packed_n)
        self.units, self.n_in = H, packed_x.K
        fast = codes[0] == SIGMOID and codes[1] == TANH and not clip > 0 and reset_after
        wpn = packed_n.data if packed_n is not None else np.zeros((0, H, ROW_TILE_COLS), np.float32)
        obx, obh, _, _, _, _, size = _gru_offsets(H)
        ws = np.zeros(size, np.float32)
        ws[obx:obx + G], ws[obh:obh + G] = b_x, b_h
        ws[3:5], ws[5:9] = codes[:2], ab[:4]
        ws[9:12] = clip, bool(reset_after), fast
        _bind(self, _gru_seq, _gru_last, (packed_x, packed_h, wpn, ws, h), _meta(packed_x.data, packed_h.data, wpn, ws, h))

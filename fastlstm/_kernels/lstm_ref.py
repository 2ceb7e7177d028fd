"""LSTM forward and backward in plain NumPy: the executable spec every backend implements.

Layout (time-major, one dtype: float32 or float64, C-contiguous). Gate order i, f, g, o (Keras):
    x (T, B, I)   w_x (I, 4H)   w_h (H, 4H)   b (4H,)   p (3, H) peepholes i, f, o, or shape (0, H): none
    h0, c0 (B, H)   mask (T, B) uint8 (1 = step is valid), or shape (0, 0): every step valid
    act_codes (3,) int32 and act_ab (3, 2) float64: activations f (gates i, f, o), g (candidate), h (cell output)
    clip (float, <= 0: none)   input_forget (bool)   reverse (bool: process t = T-1 .. 0)

Equations for one valid step t (processing order), a_f/a_g/a_h the three activations:
    z   = x_t @ w_x + h_prev @ w_h + b
    z_i += p_i * c_prev;  z_f += p_f * c_prev                     (peepholes, ONNX)
    z_i, z_f, z_g = clip(z_i, z_f, z_g, -clip, clip)                (when clip > 0)
    i = a_f(z_i);  f = a_f(z_f)  (input_forget: f = 1 - i);  g = a_g(z_g)
    c = f * c_prev + i * g
    z_o += p_o * c (the NEW cell);  z_o = clip(z_o);  o = a_f(z_o)
    h = o * a_h(c)
A masked step (mask[t, b] == 0) keeps the state: h = h_prev, c = c_prev. y[t] is the state after step t in the
ORIGINAL time order (reverse only changes the processing order), so a masked y[t] repeats the carried state.

Compute shape (every backend): one GEMM (T*B, I) @ (I, 4H) for all steps' input part, then per step one
(B, H) @ (H, 4H) GEMM accumulated into that step's slice of z_ws, then one fused gate pass.
After lstm_forward with training outputs, z_ws holds every valid step's final pre-activations (bias, peepholes and
clip applied), gates_out the activated i, f, g, o and cs_out the cell state after each step. After an inference
z_ws is scratch: a backend may leave only x_t @ w_x + b there (the Cython batch-1 steps do).

The Cython and Numba backends' lstm_forward and gru_forward take two more, optional arguments (see
fastlstm._kernels.kernel_kw): packs, the backend's WeightPacks (Cython: _blas.WeightPacks; Numba: KeptPanels, used by
its LSTM) that keeps packed copies of w_x and w_h across calls, for a caller whose weights stay the same arrays with
the same values; and threads, at most that many threads for the call (Cython: batch-1 float32 inference; the
results equal one thread's bit for bit). Every backend takes batch_major (below in lstm_forward's contract).

Projected input (I == 0: x (T, B, 0), w_x (0, 4H)): z_ws holds x_t @ w_x on entry, computed by the caller (an
Embedding feeding the layer projects each distinct token once); the kernel adds b and runs the steps as usual.
The backward then leaves the input side to the caller: dx_out, dw_x_out are empty, and dz_ws on return is
d loss / d (x_t @ w_x) for every step.
"""
import numpy as np

from .acts import activate, derivative


def _act(act_codes, act_ab, k, z):
    return activate(int(act_codes[k]), float(act_ab[k, 0]), float(act_ab[k, 1]), z)


def _dact(act_codes, act_ab, k, z, a):
    return derivative(int(act_codes[k]), float(act_ab[k, 0]), float(act_ab[k, 1]), z, a)


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def time_major_views(batch_major, gates_out, *arrays):
    """The (T, B, .) views of a batch_major call's (B, T, .) arrays (the arrays themselves otherwise)."""
    if not batch_major:
        return arrays
    if gates_out.shape[0] > 0:
        raise ValueError("batch_major is for inference only: the training arrays and the backward are time-major")
    return tuple(a.transpose(1, 0, 2) for a in arrays)


def lstm_forward(x, w_x, w_h, b, p, h0, c0, mask, act_codes, act_ab, clip, input_forget, reverse,
                 z_ws, y_out, hT_out, cT_out, gates_out, cs_out, batch_major=False):
    """LSTM over T steps. Every backend implements exactly this contract.
    IN   x (T, B, I)  w_x (I, 4H)  w_h (H, 4H)  b (4H,)  p (3, H) | (0, H)  h0, c0 (B, H)  mask (T, B) | (0, 0)
    SCRATCH z_ws (T, B, 4H): on return from training, the final pre-activations of every valid step
    OUT  y_out (T, B, H)  hT_out, cT_out (B, H);  gates_out (T, B, 4H), cs_out (T, B, H) when training,
         else shape (0, 0, 0)
    batch_major: x (B, T, I), z_ws (B, T, 4H) and y_out (B, T, H) instead, as a batch-first caller holds them
    (inference only; mask stays (T, B))
    """
    x, z_ws, y_out = time_major_views(batch_major, gates_out, x, z_ws, y_out)
    T, B, _ = x.shape
    H = w_h.shape[0]
    training = gates_out.shape[0] > 0
    dt = x.dtype
    # z = x @ w_x + b   for all T*B rows at once (projected input: z_ws already holds x @ w_x)
    xw = z_ws if x.shape[2] == 0 else (x.reshape(T * B, -1) @ w_x).reshape(T, B, 4 * H)
    z_ws[...] = xw + b
    h = h0.copy()
    c = c0.copy()
    for t in _steps(T, reverse):
        z = z_ws[t] + h @ w_h
        zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        if p.shape[0]:
            zi = zi + p[0] * c
            zf = zf + p[1] * c
        if clip > 0:
            zi, zf, zg = np.clip(zi, -clip, clip), np.clip(zf, -clip, clip), np.clip(zg, -clip, clip)
        i = _act(act_codes, act_ab, 0, zi)
        f = (1 - i) if input_forget else _act(act_codes, act_ab, 0, zf)
        g = _act(act_codes, act_ab, 1, zg)
        c_new = f * c + i * g
        if p.shape[0]:
            zo = zo + p[2] * c_new
        if clip > 0:
            zo = np.clip(zo, -clip, clip)
        o = _act(act_codes, act_ab, 0, zo)
        h_new = o * _act(act_codes, act_ab, 2, c_new)
        if mask.shape[0]:
            valid = mask[t].astype(bool)[:, None]
            h_new = np.where(valid, h_new, h)
            c_new = np.where(valid, c_new, c)
        h, c = h_new.astype(dt), c_new.astype(dt)
        z_ws[t] = np.concatenate([zi, zf, zg, zo], axis=1)
        y_out[t] = h
        if training:
            gates_out[t] = np.concatenate([i, f, g, o], axis=1)
            cs_out[t] = c
    hT_out[...] = h
    cT_out[...] = c


def lstm_backward(x, w_x, w_h, b, p, h0, c0, mask, act_codes, act_ab, clip, input_forget, reverse,
                  z_ws, gates, cs, y, dy, dhT, dcT,
                  dz_ws, dx_out, dw_x_out, dw_h_out, db_out, dp_out, dh0_out, dc0_out):
    """Backpropagation through time for lstm_forward (same arguments), run after a training forward.
    IN   the forward's inputs;  z_ws, gates (T, B, 4H), cs (T, B, H), y (T, B, H) from that forward;
         dy (T, B, H), dhT, dcT (B, H): gradients of the loss w.r.t. y_out, hT_out, cT_out
    SCRATCH dz_ws (T, B, 4H): on return, d loss / d z for every step (0 at masked steps)
    OUT  dx_out (T, B, I), dh0_out, dc0_out (B, H): overwritten
         dw_x_out (I, 4H), dw_h_out (H, 4H), db_out (4H,), dp_out (3, H) | (0, H): accumulated (+=)
    """
    T, B, _ = x.shape
    H = w_h.shape[0]
    dh = dhT.copy()
    dc = dcT.copy()
    order = list(_steps(T, reverse))
    for k in range(T - 1, -1, -1):
        t = order[k]
        t_prev = order[k - 1] if k > 0 else None
        h_prev = y[t_prev] if t_prev is not None else h0
        c_prev = cs[t_prev] if t_prev is not None else c0
        dh = dh + dy[t]
        valid = mask[t].astype(bool)[:, None] if mask.shape[0] else np.ones((B, 1), bool)
        z = z_ws[t]
        i, f, g, o = (gates[t][:, j * H:(j + 1) * H] for j in range(4))
        zi, zf, zg, zo = (z[:, j * H:(j + 1) * H] for j in range(4))
        c = cs[t]
        ac = _act(act_codes, act_ab, 2, c)
        # h = o * a_h(c)
        dzo = valid * dh * ac * _dact(act_codes, act_ab, 0, zo, o)
        if clip > 0:
            dzo = dzo * (np.abs(zo) < clip)
        dc_t = dc + dh * o * _dact(act_codes, act_ab, 2, c, ac)
        if p.shape[0]:
            dc_t = dc_t + dzo * p[2]
        # c = f * c_prev + i * g
        di, dg, df = dc_t * g, dc_t * i, dc_t * c_prev
        if input_forget:  # f = 1 - i
            di = di - df
            dzf = np.zeros_like(df)
        else:
            dzf = valid * df * _dact(act_codes, act_ab, 0, zf, f)
        dzi = valid * di * _dact(act_codes, act_ab, 0, zi, i)
        dzg = valid * dg * _dact(act_codes, act_ab, 1, zg, g)
        if clip > 0:
            dzi, dzf, dzg = dzi * (np.abs(zi) < clip), dzf * (np.abs(zf) < clip), dzg * (np.abs(zg) < clip)
        dc_prev = dc_t * f
        if p.shape[0]:
            dc_prev = dc_prev + dzi * p[0] + dzf * p[1]
            dp_out[0] += (dzi * c_prev).sum(0)
            dp_out[1] += (dzf * c_prev).sum(0)
            dp_out[2] += (dzo * c).sum(0)
        dz = np.concatenate([dzi, dzf, dzg, dzo], axis=1)
        # a masked step passes dh, dc through unchanged
        dh_prev = np.where(valid, dz @ w_h.T, dh)
        dc_prev = np.where(valid, dc_prev, dc)
        dz_ws[t] = dz
        dw_h_out += h_prev.T @ dz
        dh, dc = dh_prev, dc_prev
    # dw_x += x^T dz,  db += sum dz,  dx = dz @ w_x^T   over all T*B rows at once
    dz2 = dz_ws.reshape(T * B, 4 * H)
    dw_x_out += x.reshape(T * B, x.shape[2]).T @ dz2
    db_out += dz2.sum(0)
    dx_out[...] = (dz2 @ w_x.T).reshape(x.shape)
    dh0_out[...] = dh
    dc0_out[...] = dc

"""GRU forward and backward in plain NumPy: the executable spec every backend implements.

Layout (time-major, one dtype: float32 or float64, C-contiguous). Gate order z, r, n (Keras z, r, h = ONNX):
    x (T, B, I)   w_x (I, 3H)   w_h (H, 3H)   b_x (3H,) input bias   b_h (3H,) recurrent bias
    h0 (B, H)   mask (T, B) uint8 (1 = valid) or shape (0, 0)
    act_codes (2,) int32, act_ab (2, 2) float64: activations f (gates z, r) and g (candidate)
    clip (float, <= 0: none)   reset_after (bool)   reverse (bool)

Equations for one valid step (a_f, a_g the two activations; w_h = [w_hz | w_hr | w_hn]):
    xz, xr, xn = split(x_t @ w_x + b_x)
    reset_after (Keras 3 default, ONNX linear_before_reset=1, torch):
        hz, hr, hn = split(h_prev @ w_h + b_h)
        z = a_f(xz + hz);  r = a_f(xr + hr);  n = a_g(xn + r * hn)
    reset_before (Keras reset_after=False with b_h = 0, ONNX linear_before_reset=0):
        hz, hr = split(h_prev @ w_h[:, :2H] + b_h[:2H])
        z = a_f(xz + hz);  r = a_f(xr + hr);  n = a_g(xn + (r * h_prev) @ w_hn + b_hn)
    h = z * h_prev + (1 - z) * n
clip > 0 clamps the three pre-activations to [-clip, clip]. A masked step keeps h; y[t] is in original time order.

Compute shape: one GEMM (T*B, I) @ (I, 3H) for all steps, then per step the recurrent GEMM(s) into hz_ws[t]
(the recurrent part of the candidate is kept apart because r multiplies it), then one fused gate pass.
After gru_forward: z_ws holds every valid step's final pre-activations of z, r, n; hz_ws[t] holds
h_prev @ w_h + b_h (reset_after), or [h_prev @ w_h[:, :2H] + b_h[:2H], r * h_prev] (reset_before).

Projected input (I == 0: x (T, B, 0), w_x (0, 3H)): z_ws holds x_t @ w_x on entry, computed by the caller; the
kernel adds b_x. The backward then leaves dx_out, dw_x_out empty; dz_ws is d loss / d (x_t @ w_x).
"""
import numpy as np

from .lstm_ref import _act, _dact, _steps, time_major_views


def gru_forward(x, w_x, w_h, b_x, b_h, h0, mask, act_codes, act_ab, clip, reset_after, reverse,
                z_ws, hz_ws, y_out, hT_out, gates_out, batch_major=False):
    """GRU over T steps. Every backend implements exactly this contract.
    IN   x (T, B, I)  w_x (I, 3H)  w_h (H, 3H)  b_x, b_h (3H,)  h0 (B, H)  mask (T, B) | (0, 0)
    SCRATCH z_ws, hz_ws (T, B, 3H): on return, as the module docstring says
    OUT  y_out (T, B, H)  hT_out (B, H);  gates_out (T, B, 3H) activated z, r, n when training, else (0, 0, 0)
    batch_major: x (B, T, I), z_ws (B, T, 3H) and y_out (B, T, H) instead (inference only; hz_ws and mask stay
    time-major)
    """
    x, z_ws, y_out = time_major_views(batch_major, gates_out, x, z_ws, y_out)
    T, B, _ = x.shape
    H = w_h.shape[0]
    training = gates_out.shape[0] > 0
    dt = x.dtype
    # zx = x @ w_x + b_x   for all T*B rows at once
    xw = z_ws if x.shape[2] == 0 else (x.reshape(T * B, -1) @ w_x).reshape(T, B, 3 * H)
    z_ws[...] = xw + b_x
    h = h0.copy()
    for t in _steps(T, reverse):
        xz, xr, xn = z_ws[t][:, :H], z_ws[t][:, H:2 * H], z_ws[t][:, 2 * H:]
        if reset_after:
            hh = h @ w_h + b_h
            hz, hr, hn = hh[:, :H], hh[:, H:2 * H], hh[:, 2 * H:]
        else:
            hh = h @ w_h[:, :2 * H] + b_h[:2 * H]
            hz, hr = hh[:, :H], hh[:, H:]
        zz, zr = xz + hz, xr + hr
        if clip > 0:
            zz, zr = np.clip(zz, -clip, clip), np.clip(zr, -clip, clip)
        z = _act(act_codes, act_ab, 0, zz)
        r = _act(act_codes, act_ab, 0, zr)
        if reset_after:
            zn = xn + r * hn
            hz_ws[t] = hh
        else:
            rh = r * h
            zn = xn + rh @ w_h[:, 2 * H:] + b_h[2 * H:]
            hz_ws[t] = np.concatenate([hh, rh], axis=1)
        if clip > 0:
            zn = np.clip(zn, -clip, clip)
        n = _act(act_codes, act_ab, 1, zn)
        h_new = z * h + (1 - z) * n
        if mask.shape[0]:
            h_new = np.where(mask[t].astype(bool)[:, None], h_new, h)
        h = h_new.astype(dt)
        z_ws[t] = np.concatenate([zz, zr, zn], axis=1)
        y_out[t] = h
        if training:
            gates_out[t] = np.concatenate([z, r, n], axis=1)
    hT_out[...] = h


def gru_backward(x, w_x, w_h, b_x, b_h, h0, mask, act_codes, act_ab, clip, reset_after, reverse,
                 z_ws, hz_ws, gates, y, dy, dhT,
                 dz_ws, dhz_ws, dx_out, dw_x_out, dw_h_out, db_x_out, db_h_out, dh0_out):
    """Backpropagation through time for gru_forward (same arguments), run after a training forward.
    IN   the forward's inputs;  z_ws, hz_ws, gates (T, B, 3H), y (T, B, H) from that forward;
         dy (T, B, H), dhT (B, H): gradients of the loss w.r.t. y_out and hT_out
    SCRATCH dz_ws (T, B, 3H): d loss / d (x_t @ w_x + b_x);  dhz_ws (T, B, 3H): d loss / d (recurrent projections)
    OUT  dx_out (T, B, I), dh0_out (B, H): overwritten
         dw_x_out (I, 3H), dw_h_out (H, 3H), db_x_out, db_h_out (3H,): accumulated (+=)
    """
    T, B, _ = x.shape
    H = w_h.shape[0]
    dh = dhT.copy()
    order = list(_steps(T, reverse))
    for k in range(T - 1, -1, -1):
        t = order[k]
        h_prev = y[order[k - 1]] if k > 0 else h0
        dh = dh + dy[t]
        valid = mask[t].astype(bool)[:, None] if mask.shape[0] else np.ones((B, 1), bool)
        z, r, n = (gates[t][:, j * H:(j + 1) * H] for j in range(3))
        zz, zr, zn = (z_ws[t][:, j * H:(j + 1) * H] for j in range(3))
        # h = z * h_prev + (1 - z) * n
        dzn = valid * dh * (1 - z) * _dact(act_codes, act_ab, 1, zn, n)
        dzz = valid * dh * (h_prev - n) * _dact(act_codes, act_ab, 0, zz, z)
        if clip > 0:
            dzn, dzz = dzn * (np.abs(zn) < clip), dzz * (np.abs(zz) < clip)
        dh_prev = dh * z
        if reset_after:
            # zn = xn + r * hn
            hn = hz_ws[t][:, 2 * H:]
            dr = dzn * hn
            dhn = dzn * r
        else:
            # zn = xn + (r * h_prev) @ w_hn + b_hn
            drh = dzn @ w_h[:, 2 * H:].T
            dr = drh * h_prev
            dh_prev = dh_prev + drh * r
            dhn = dzn
        dzr = dr * _dact(act_codes, act_ab, 0, zr, r)
        if clip > 0:
            dzr = dzr * (np.abs(zr) < clip)
        dhz = np.concatenate([dzz, dzr, dhn], axis=1)
        if reset_after:
            dh_prev = dh_prev + dhz @ w_h.T
        else:
            dh_prev = dh_prev + dhz[:, :2 * H] @ w_h[:, :2 * H].T
        dz_ws[t] = np.concatenate([dzz, dzr, dzn], axis=1)
        dhz_ws[t] = dhz
        dh = np.where(valid, dh_prev, dh)
    # recurrent weights: the left factor is h_prev (reset_after) or [h_prev | r * h_prev] (reset_before)
    for k in range(T):
        t = order[k]
        h_prev = y[order[k - 1]] if k > 0 else h0
        if reset_after:
            dw_h_out += h_prev.T @ dhz_ws[t]
        else:
            dw_h_out[:, :2 * H] += h_prev.T @ dhz_ws[t][:, :2 * H]
            dw_h_out[:, 2 * H:] += hz_ws[t][:, 2 * H:].T @ dhz_ws[t][:, 2 * H:]
    db_h_out += dhz_ws.reshape(T * B, 3 * H).sum(0)
    # dw_x += x^T dz,  db_x += sum dz,  dx = dz @ w_x^T   over all T*B rows at once
    dz2 = dz_ws.reshape(T * B, 3 * H)
    dw_x_out += x.reshape(T * B, x.shape[2]).T @ dz2
    db_x_out += dz2.sum(0)
    dx_out[...] = (dz2 @ w_x.T).reshape(x.shape)
    dh0_out[...] = dh

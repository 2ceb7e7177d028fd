"""GRU forward and backward as Numba kernels: same signatures and contract as gru_ref (read it there).

Layout: time-major x (T, B, I), w_x (I, 3H), w_h (H, 3H) = [w_hz | w_hr | w_hn], b_x, b_h (3H,); one dtype
(float32 or float64), C-contiguous. Gate order z, r, n. For one valid step (a_f, a_g the two activations):
    xz, xr, xn = x_t @ w_x + b_x
    reset_after:  hz, hr, hn = h_prev @ w_h + b_h;  z = a_f(xz + hz);  r = a_f(xr + hr);  n = a_g(xn + r * hn)
    reset_before: hz, hr = h_prev @ w_h[:, :2H] + b_h[:2H];  n = a_g(xn + (r * h_prev) @ w_hn + b_hn)
    h = z * h_prev + (1 - z) * n        (clip clamps the three pre-activations; a masked step keeps h)
Compute shape: z_ws = X @ W_x for all T*B rows (one GEMM; b_x is added in the gate pass). Per step,
reset_after: hz_ws[t] = h_prev @ W_h (one GEMM straight into hz_ws[t]) and one fused pass per row;
reset_before: h_prev @ W_hzr (GEMM), a pass giving z, r and r * h_prev, (r * h_prev) @ W_hn (GEMM), a pass for
n and h. W_hzr, W_hn are contiguous copies of w_h's column blocks, made once per call.
Backward: steps in reverse, per step the fused passes and dh_prev = dh * z + dhz @ W_h^T; weight gradients
and dx are GEMMs / sums over all steps at the end. No allocation inside the step loops.
"""
import numpy as np
from numba import njit

from ..config import NUMBA_FLAGS
from ._numba_common import (ONE, act_row, add_column_sums, add_hprev_outer, add_outer_product, as_time_major,
                            cast_like, clip_grad_row, clip_row, dact_row, pack_for_steps, step_buffer,
                            step_input_buffer, step_matmul, use_packed)


@njit(**NUMBA_FLAGS)
def _h_update(zg, n, hp, y):
    """y = z * h_prev + (1 - z) * n   for one row (1-D views)."""
    for j in range(y.shape[0]):
        y[j] = zg[j] * hp[j] + (ONE - zg[j]) * n[j]


@njit(**NUMBA_FLAGS)
def _recurrent_blocks(w_h, reset_after, transpose, packed, B):
    """The recurrent weights as the per-step products use them (op = transpose for the backward):
    (w_zr, w_n, all of op(w_h) packed, op(w_h[:, :2H]) packed, op(w_h[:, 2H:]) packed, rows of the split products).
    reset_after multiplies by all of w_h (the blocks are empty); reset_before by contiguous copies of its
    [z, r] and n column blocks, B rows each. A packed value is (0, K, 16) when not packed."""
    H = w_h.shape[0]
    if reset_after:
        w_zr = np.empty((0, 0), w_h.dtype)
        none = pack_for_steps(w_zr, transpose, False)
        return w_zr, w_zr, pack_for_steps(w_h, transpose, packed), none, none, 0
    w_zr = np.ascontiguousarray(w_h[:, :2 * H])
    w_n = np.ascontiguousarray(w_h[:, 2 * H:])
    return (w_zr, w_n, pack_for_steps(w_zr, transpose, False), pack_for_steps(w_zr, transpose, packed),
            pack_for_steps(w_n, transpose, packed), B)


def gru_forward(x, w_x, w_h, b_x, b_h, h0, mask, act_codes, act_ab, clip, reset_after, reverse,
                z_ws, hz_ws, y_out, hT_out, gates_out, packs=None, batch_major=False, threads=1):
    """Same contract as gru_ref.gru_forward (packs, threads: accepted for the common call, not used: the GRU
    packs per call and runs on one thread; batch_major: run on time-major copies)."""
    if batch_major:
        x, z_ws, y = as_time_major(x, z_ws, y_out, gates_out)
        _gru_forward(x, w_x, w_h, b_x, b_h, h0, mask, act_codes, act_ab, clip, reset_after, reverse,
                     z_ws, hz_ws, y, hT_out, gates_out)
        y_out.transpose(1, 0, 2)[...] = y
        return
    _gru_forward(x, w_x, w_h, b_x, b_h, h0, mask, act_codes, act_ab, clip, reset_after, reverse,
                 z_ws, hz_ws, y_out, hT_out, gates_out)


@njit(**NUMBA_FLAGS)
def _gru_forward(x, w_x, w_h, b_x, b_h, h0, mask, act_codes, act_ab, clip, reset_after, reverse,
                 z_ws, hz_ws, y_out, hT_out, gates_out):
    """Same contract as gru_ref.gru_forward.
    IN   x (T, B, I)  w_x (I, 3H)  w_h (H, 3H)  b_x, b_h (3H,)  h0 (B, H)  mask (T, B) | (0, 0)
    SCRATCH z_ws, hz_ws (T, B, 3H)
    OUT  y_out (T, B, H)  hT_out (B, H);  gates_out (T, B, 3H) | (0, 0, 0)
    """
    T, B, I = x.shape
    H = w_h.shape[0]
    G = 3 * H
    training = gates_out.shape[0] > 0
    has_mask = mask.shape[0] > 0
    f_code, g_code = act_codes[0], act_codes[1]
    f_a, f_b, g_a, g_b = act_ab[0, 0], act_ab[0, 1], act_ab[1, 0], act_ab[1, 1]
    clip_t = cast_like(clip, z_ws)
    # z_ws = X @ W_x   for all T*B rows at once
    # (projected input, I == 0: z_ws already holds it)
    if T * B > 0 and I > 0:
        np.dot(x.reshape(T * B, I), w_x, z_ws.reshape(T * B, G))
    gate_rows = np.empty((0 if training else B, G), z_ws.dtype)   # activated gates when not training
    # per-step products: float32 register tiles over weights packed once (see _numba_common), else np.dot;
    # reset_before multiplies by contiguous copies of w_h's column blocks
    packed = use_packed(z_ws, B, T)
    w_zr, w_n, w_h_packed, w_zr_packed, w_n_packed, n_rows = _recurrent_blocks(w_h, reset_after, False, packed, B)
    h_pad = step_input_buffer(B, H, packed, z_ws)
    hh_buf = step_buffer(B if reset_after else 0, G, packed, z_ws)   # h_prev @ W_h
    hzr = step_buffer(n_rows, 2 * H, packed, z_ws)     # h_prev @ W_hzr
    rh = step_input_buffer(n_rows, H, packed, z_ws)    # r * h_prev
    hn = step_buffer(n_rows, H, packed, z_ws)          # (r * h_prev) @ W_hn
    bxn, bhn = b_x[2 * H:], b_h[2 * H:]
    h_prev = h0
    for k in range(T):
        t = T - 1 - k if reverse else k
        y_t = y_out[t]
        if reset_after:
            # hz_ws[t] = h_prev @ W_h + b_h
            step_matmul(h_prev, w_h, w_h_packed, h_pad, True, hh_buf)
            for r in range(B):
                z = z_ws[t, r]
                hh = hz_ws[t, r]
                hh_r = hh_buf[r]
                gate = gates_out[t, r] if training else gate_rows[r]
                zn, hn_r, g_r, g_n = z[2 * H:], hh[2 * H:], gate[H:2 * H], gate[2 * H:]
                for j in range(G):
                    hh[j] = hh_r[j] + b_h[j]
                # z, r = a_f(xz + hz, xr + hr)
                for j in range(2 * H):
                    z[j] = (z[j] + b_x[j]) + hh[j]
                if clip > 0:
                    clip_row(z[:2 * H], clip_t)
                act_row(f_code, f_a, f_b, z[:2 * H], gate[:2 * H])
                # n = a_g(xn + r * hn)
                for j in range(H):
                    zn[j] = (zn[j] + bxn[j]) + g_r[j] * hn_r[j]
                if clip > 0:
                    clip_row(zn, clip_t)
                act_row(g_code, g_a, g_b, zn, g_n)
                if (not has_mask) or mask[t, r] != 0:
                    _h_update(gate[:H], g_n, h_prev[r], y_t[r])
                else:
                    y_t[r, :] = h_prev[r]
        else:
            # hz, hr = h_prev @ W_hzr + b_h[:2H]
            step_matmul(h_prev, w_zr, w_zr_packed, h_pad, True, hzr)
            for r in range(B):
                z = z_ws[t, r]
                hh = hz_ws[t, r]
                hp = h_prev[r]
                hzr_r = hzr[r]
                rh_r = rh[r]
                gate = gates_out[t, r] if training else gate_rows[r]
                hh_n, g_r = hh[2 * H:], gate[H:2 * H]
                for j in range(2 * H):
                    v = hzr_r[j] + b_h[j]
                    hh[j] = v
                    z[j] = (z[j] + b_x[j]) + v
                if clip > 0:
                    clip_row(z[:2 * H], clip_t)
                act_row(f_code, f_a, f_b, z[:2 * H], gate[:2 * H])
                # hz_ws[t][:, 2H:] = r * h_prev
                for j in range(H):
                    v = g_r[j] * hp[j]
                    hh_n[j] = v
                    rh_r[j] = v
            # hn = (r * h_prev) @ W_hn
            step_matmul(rh, w_n, w_n_packed, rh, False, hn)
            for r in range(B):
                z = z_ws[t, r]
                gate = gates_out[t, r] if training else gate_rows[r]
                zn, hn_r, g_n = z[2 * H:], hn[r], gate[2 * H:]
                for j in range(H):
                    zn[j] = (zn[j] + bxn[j]) + (hn_r[j] + bhn[j])
                if clip > 0:
                    clip_row(zn, clip_t)
                act_row(g_code, g_a, g_b, zn, g_n)
                if (not has_mask) or mask[t, r] != 0:
                    _h_update(gate[:H], g_n, h_prev[r], y_t[r])
                else:
                    y_t[r, :] = h_prev[r]
        h_prev = y_t
    hT_out[:] = h_prev


@njit(**NUMBA_FLAGS)
def gru_backward(x, w_x, w_h, b_x, b_h, h0, mask, act_codes, act_ab, clip, reset_after, reverse,
                 z_ws, hz_ws, gates, y, dy, dhT,
                 dz_ws, dhz_ws, dx_out, dw_x_out, dw_h_out, db_x_out, db_h_out, dh0_out):
    """Same contract as gru_ref.gru_backward.
    IN   forward inputs;  z_ws, hz_ws, gates (T, B, 3H), y (T, B, H);  dy (T, B, H), dhT (B, H)
    SCRATCH dz_ws, dhz_ws (T, B, 3H)
    OUT  dx_out (T, B, I), dh0_out (B, H);  += into dw_x_out (I, 3H), dw_h_out (H, 3H), db_x_out, db_h_out (3H,)
    """
    T, B, I = x.shape
    H = w_h.shape[0]
    G = 3 * H
    has_mask = mask.shape[0] > 0
    use_clip = clip > 0
    f_code, g_code = act_codes[0], act_codes[1]
    f_a, f_b, g_a, g_b = act_ab[0, 0], act_ab[0, 1], act_ab[1, 0], act_ab[1, 1]
    clip_t = cast_like(clip, dz_ws)
    dt = dz_ws.dtype
    dh = dhT.copy()
    dh_direct = np.empty_like(dh)               # dh * z (+ drh * r): the part of dh_prev outside the GEMM
    d_act = np.empty(G, dt)
    d_z, d_r, d_n = d_act[:H], d_act[H:2 * H], d_act[2 * H:]
    # per-step products with W_h^T blocks: packed float32 tiles or np.dot, as in the forward
    packed = use_packed(dz_ws, B, T)
    w_zr, w_n, w_hT_packed, w_zrT_packed, w_nT_packed, n_rows = _recurrent_blocks(w_h, reset_after, True, packed, B)
    dhz_pad = step_input_buffer(B if reset_after else 0, G, packed, dz_ws)
    dh_gemm = step_buffer(B, H, packed, dz_ws)   # the GEMM part of dh_prev
    dzn_buf = step_input_buffer(n_rows, H, packed, dz_ws)       # d loss / d zn, contiguous
    drh = step_buffer(n_rows, H, packed, dz_ws)                 # d loss / d (r * h_prev) = dzn @ W_hn^T
    dzr_buf = step_input_buffer(n_rows, 2 * H, packed, dz_ws)   # d loss / d [hz, hr], contiguous
    for k in range(T - 1, -1, -1):
        t = T - 1 - k if reverse else k
        t_prev = t + 1 if reverse else t - 1
        h_prev = y[t_prev] if k > 0 else h0
        # pass 1: dzz, dzn from h = z * h_prev + (1 - z) * n
        for r in range(B):
            dz = dz_ws[t, r]
            dhz = dhz_ws[t, r]
            dhr = dh[r]
            dyr = dy[t, r]
            if has_mask and mask[t, r] == 0:
                dz[:] = 0
                dhz[:] = 0
                for j in range(H):
                    dhr[j] += dyr[j]
                if not reset_after:
                    dzn_buf[r, :] = 0
                    dzr_buf[r, :] = 0
                continue
            z = z_ws[t, r]
            gate = gates[t, r]
            hp = h_prev[r]
            ddr = dh_direct[r]
            g_z, g_r, g_n = gate[:H], gate[H:2 * H], gate[2 * H:]
            dzz, dzr, dzn = dz[:H], dz[H:2 * H], dz[2 * H:]
            dact_row(f_code, f_a, f_b, z[:2 * H], gate[:2 * H], d_act[:2 * H])
            dact_row(g_code, g_a, g_b, z[2 * H:], g_n, d_n)
            for j in range(H):
                dhj = dhr[j] + dyr[j]
                dzn[j] = dhj * (ONE - g_z[j]) * d_n[j]
                dzz[j] = dhj * (hp[j] - g_n[j]) * d_z[j]
                ddr[j] = dhj * g_z[j]
            if use_clip:
                clip_grad_row(dzz, z[:H], clip_t)
                clip_grad_row(dzn, z[2 * H:], clip_t)
            if reset_after:
                # zn = xn + r * hn:  dr = dzn * hn,  dhn = dzn * r
                hh_n = hz_ws[t, r, 2 * H:]
                dhn = dhz[2 * H:]
                for j in range(H):
                    dzr[j] = dzn[j] * hh_n[j] * d_r[j]
                    dhn[j] = dzn[j] * g_r[j]
                if use_clip:
                    clip_grad_row(dzr, z[H:2 * H], clip_t)
                for j in range(2 * H):
                    dhz[j] = dz[j]
            else:
                dzn_buf[r, :] = dzn
        if reset_after:
            # dh_prev = dh * z + dhz @ W_h^T
            step_matmul(dhz_ws[t], w_h.T, w_hT_packed, dhz_pad, True, dh_gemm)
        else:
            # drh = dzn @ W_hn^T;  dr = drh * h_prev;  dh_prev += drh * r
            step_matmul(dzn_buf, w_n.T, w_nT_packed, dzn_buf, False, drh)
            for r in range(B):
                if has_mask and mask[t, r] == 0:
                    continue
                dz = dz_ws[t, r]
                dhz = dhz_ws[t, r]
                z = z_ws[t, r]
                g_r = gates[t, r, H:2 * H]
                hp = h_prev[r]
                drh_r = drh[r]
                ddr = dh_direct[r]
                dzr = dz[H:2 * H]
                dact_row(f_code, f_a, f_b, z[H:2 * H], g_r, d_r)
                for j in range(H):
                    dzr[j] = drh_r[j] * hp[j] * d_r[j]
                    ddr[j] += drh_r[j] * g_r[j]
                if use_clip:
                    clip_grad_row(dzr, z[H:2 * H], clip_t)
                dhz[:] = dz
                dzr_buf[r, :] = dz[:2 * H]
            # dh_prev = dh * z + drh * r + [dzz, dzr] @ W_hzr^T
            step_matmul(dzr_buf, w_zr.T, w_zrT_packed, dzr_buf, False, dh_gemm)
        # masked rows keep dh (dy added above)
        for r in range(B):
            if not has_mask or mask[t, r] != 0:
                for j in range(H):
                    dh[r, j] = dh_gemm[r, j] + dh_direct[r, j]
    dh0_out[:] = dh
    if T * B == 0:
        return
    dz2 = dz_ws.reshape(T * B, G)
    dhz2 = dhz_ws.reshape(T * B, G)
    # recurrent weights: the left factor is h_prev (reset_after) or [h_prev | r * h_prev] (reset_before)
    if reset_after:
        add_hprev_outer(dw_h_out, y, h0, dhz2, reverse)
    else:
        add_hprev_outer(dw_h_out[:, :2 * H], y, h0, np.ascontiguousarray(dhz2[:, :2 * H]), reverse)
        add_outer_product(dw_h_out[:, 2 * H:], np.ascontiguousarray(hz_ws.reshape(T * B, G)[:, 2 * H:]),
                          np.ascontiguousarray(dhz2[:, 2 * H:]))
    add_column_sums(db_h_out, dhz2)
    # dW_x += X^T @ dZ,  db_x += sum dZ,  dX = dZ @ W_x^T   over all T*B rows at once
    add_outer_product(dw_x_out, x.reshape(T * B, I), dz2)
    add_column_sums(db_x_out, dz2)
    if I > 0:
        np.dot(dz2, w_x.T, dx_out.reshape(T * B, I))

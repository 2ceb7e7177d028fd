"""LSTM forward and backward as Numba kernels: same signatures and contract as lstm_ref (read it there).

Layout: time-major x (T, B, I), w_x (I, 4H), w_h (H, 4H), b (4H,), p (3, H) | (0, H); one dtype (float32 or
float64), C-contiguous. Gate order i, f, g, o. For one valid step (a_f, a_g, a_h = the three activations):
    z = x_t @ w_x + h_prev @ w_h + b;   z_i += p_i * c_prev;  z_f += p_f * c_prev;  clip(z_i, z_f, z_g)
    i = a_f(z_i);  f = a_f(z_f) (input_forget: 1 - i);  g = a_g(z_g);  c = f * c_prev + i * g
    z_o += p_o * c;  clip(z_o);  o = a_f(z_o);  h = o * a_h(c)        (masked step: h, c = h_prev, c_prev)
Compute shape: z_ws = X @ W_x for all T*B rows (one GEMM; b is added in the gate pass), then per step
hz = h_prev @ W_h (one product into a (B, 4H) buffer: packed float32 tiles for 2 <= B <= 512, else BLAS) and
one pass per row: bias, peepholes, clip, activations, cell update, mask (the default cell, sigmoid/tanh/tanh
without options, in one fused loop). The running cell state lives in cT_out, h_prev is y_out[t_prev] (or h0).
Backward: steps in reverse; per step one pass per row giving dz, then dh_prev = dz @ W_h^T (one product);
dW_x, dW_h, db and dx are GEMMs / sums over all steps at the end. No allocation inside the step loops.
"""
import numpy as np
from numba import njit

from ..config import NUMBA_FLAGS
from ._numba_common import (ONE, act_row, add_column_sums, add_hprev_outer, add_outer_product, as_time_major,
                            cast_like, clip_grad_row, dact_row, input_matmul, input_on_panels, lstm_gates_general,
                            no_panels, pack_for_steps, sigmoid_gate, step_buffer, step_input_buffer, step_matmul,
                            tanh, use_packed)
from .acts import SIGMOID, TANH


# The default cell (sigmoid, tanh, tanh) as one loop per row. Each row loop is its own function: LLVM vectorises
# it there (inside the kernel, with every other array in scope, it did not).
@njit(**NUMBA_FLAGS)
def _add_row(z, b, hz):
    """z = (z + b) + hz   (z = x_t @ w_x, in the reference's rounding order)."""
    for j in range(z.shape[0]):
        z[j] = (z[j] + b[j]) + hz[j]


@njit(**NUMBA_FLAGS)
def _cell_row_sum(z, b, hz, c, y):
    """c = f * c + i * g;  y = o * tanh(c)   with i, f, o = sigmoid, g = tanh of the pre-activations (z + b) + hz
    (the reference's rounding order) in one pass: inference, where z_ws is scratch."""
    H = c.shape[0]
    for j in range(H):
        i = sigmoid_gate((z[j] + b[j]) + hz[j])
        f = sigmoid_gate((z[H + j] + b[H + j]) + hz[H + j])
        g = tanh((z[2 * H + j] + b[2 * H + j]) + hz[2 * H + j])
        o = sigmoid_gate((z[3 * H + j] + b[3 * H + j]) + hz[3 * H + j])
        c_new = f * c[j] + i * g
        c[j] = c_new
        y[j] = o * tanh(c_new)


@njit(**NUMBA_FLAGS)
def _cell_row_gates(zi, zf, zg, zo, c, y, gi, gf, gg, go):
    """c = f * c + i * g;  y = o * tanh(c)   with i, f, o = sigmoid(z_i, z_f, z_o), g = tanh(z_g), also storing
    the activated gates."""
    for j in range(c.shape[0]):
        i, f, g, o = sigmoid_gate(zi[j]), sigmoid_gate(zf[j]), tanh(zg[j]), sigmoid_gate(zo[j])
        gi[j], gf[j], gg[j], go[j] = i, f, g, o
        c_new = f * c[j] + i * g
        c[j] = c_new
        y[j] = o * tanh(c_new)


@njit(**NUMBA_FLAGS)
def _cell_row_backward(dh, dy, gi, gf, gg, go, c, c_prev, dc, dzi, dzf, dzg, dzo):
    """dz for one row of the default cell; dc (in: dc of this step, out: dc_prev). sigmoid' = a (1 - a),
    tanh' = 1 - a^2, in the reference's rounding order."""
    for j in range(c.shape[0]):
        dhj = dh[j] + dy[j]
        i, f, g, o = gi[j], gf[j], gg[j], go[j]
        a = tanh(c[j])
        dzo[j] = dhj * a * (o * (ONE - o))
        dct = dc[j] + dhj * o * (ONE - a * a)
        dzi[j] = dct * g * (i * (ONE - i))
        dzf[j] = dct * c_prev[j] * (f * (ONE - f))
        dzg[j] = dct * i * (ONE - g * g)
        dc[j] = dct * f



def lstm_forward(x, w_x, w_h, b, p, h0, c0, mask, act_codes, act_ab, clip, input_forget, reverse,
                 z_ws, y_out, hT_out, cT_out, gates_out, cs_out, packs=None, batch_major=False, threads=1):
    """Same contract as lstm_ref.lstm_forward.
    IN   x (T, B, I)  w_x (I, 4H)  w_h (H, 4H)  b (4H,)  p (3, H) | (0, H)  h0, c0 (B, H)  mask (T, B) | (0, 0)
    SCRATCH z_ws (T, B, 4H)
    OUT  y_out (T, B, H)  hT_out, cT_out (B, H);  gates_out (T, B, 4H), cs_out (T, B, H) | (0, 0, 0)
    packs: a KeptPanels that keeps the packed w_h across calls with this same w_h (values unchanged), or None
    batch_major: x, z_ws, y_out (B, T, .) instead (inference only): run on time-major copies
    threads: accepted for the common call (kernel_kw); the Numba steps run on one thread
    """
    if batch_major:
        x, z_ws, y = as_time_major(x, z_ws, y_out, gates_out)
        lstm_forward(x, w_x, w_h, b, p, h0, c0, mask, act_codes, act_ab, clip, input_forget, reverse,
                     z_ws, y, hT_out, cT_out, gates_out, cs_out, packs)
        y_out.transpose(1, 0, 2)[...] = y
        return
    T, B, I = x.shape
    kept_h = kept_x = no_panels(z_ws)
    if packs is not None:
        kept_h = packs.panels(w_h, z_ws, B, T)
        if I > 0 and input_on_panels(T * B, z_ws.shape[2]):
            kept_x = packs.panels(w_x, z_ws, T * B, 2)
    _lstm_forward(x, w_x, w_h, b, p, h0, c0, mask, act_codes, act_ab, clip, input_forget, reverse,
                  z_ws, y_out, hT_out, cT_out, gates_out, cs_out, kept_h, kept_x)


@njit(**NUMBA_FLAGS)
def _lstm_forward(x, w_x, w_h, b, p, h0, c0, mask, act_codes, act_ab, clip, input_forget, reverse,
                  z_ws, y_out, hT_out, cT_out, gates_out, cs_out, w_h_kept, w_x_kept):
    """lstm_forward; w_h_kept: w_h packed for these steps, w_x_kept: w_x in 16-column panels when
    input_on_panels (KeptPanels), or shape (0, 1, 16): w_h packed here, X @ W_x by np.dot."""
    T, B, I = x.shape
    H = w_h.shape[0]
    G = 4 * H
    training = gates_out.shape[0] > 0
    has_mask = mask.shape[0] > 0
    peep = p.shape[0] > 0
    f_code, g_code, h_code = act_codes[0], act_codes[1], act_codes[2]
    f_a, f_b, g_a, g_b, h_a, h_b = act_ab[0, 0], act_ab[0, 1], act_ab[1, 0], act_ab[1, 1], act_ab[2, 0], act_ab[2, 1]
    clip_t = cast_like(clip, z_ws)
    # the default cell (sigmoid, tanh, tanh; no peepholes, clip or coupled gates) takes one fused loop per row
    fused = (f_code == SIGMOID and g_code == TANH and h_code == TANH and not peep and not clip > 0
             and not input_forget)
    # z_ws = X @ W_x   for all T*B rows at once
    # (projected input, I == 0: z_ws already holds it)
    if T * B > 0 and I > 0:
        input_matmul(x.reshape(T * B, I), w_x, w_x_kept, z_ws.reshape(T * B, G))
    cT_out[:] = c0
    # per-step h_prev @ W_h: W_h packed once for the float32 register tiles (see _numba_common), else np.dot
    packed = use_packed(z_ws, B, T)
    w_h_packed = w_h_kept if w_h_kept.shape[0] > 0 else pack_for_steps(w_h, False, packed)
    h_pad = step_input_buffer(B, H, packed, z_ws)
    hz = step_buffer(B, G, packed, z_ws)       # h_prev @ W_h
    gate_buf = np.empty(G, z_ws.dtype)         # activated gates when not training
    c_buf = np.empty(H, z_ws.dtype)            # candidate cell of a masked row
    ac = np.empty(H, z_ws.dtype)               # a_h(c)
    h_prev = h0
    for k in range(T):
        t = T - 1 - k if reverse else k
        # hz = h_prev @ W_h
        step_matmul(h_prev, w_h, w_h_packed, h_pad, True, hz, k % 2 == 1)
        for r in range(B):
            z = z_ws[t, r]
            hzr = hz[r]
            c = cT_out[r]
            gate = gates_out[t, r] if training else gate_buf
            valid = (not has_mask) or mask[t, r] != 0
            zi, zf, zg, zo = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
            gi, gf, gg, go = gate[:H], gate[H:2 * H], gate[2 * H:3 * H], gate[3 * H:]
            if fused and valid and not training:
                _cell_row_sum(z, b, hzr, c, y_out[t, r])
                continue
            # z = (x_t @ w_x + b) + h_prev @ w_h   (the reference's rounding order)
            _add_row(z, b, hzr)
            if fused and valid:
                _cell_row_gates(zi, zf, zg, zo, c, y_out[t, r], gi, gf, gg, go)
                cs_out[t, r, :] = c
                continue
            # peepholes, clip, the gates, c_new = f * c_prev + i * g (in place in the state unless the row is masked)
            c_new = c if valid else c_buf
            lstm_gates_general(z, c, c_new, gate, p, f_code, f_a, f_b, g_code, g_a, g_b, clip_t, input_forget)
            # h = o * a_h(c_new), or the carried h_prev for a masked row
            y = y_out[t, r]
            if valid:
                act_row(h_code, h_a, h_b, c_new, ac)
                for j in range(H):
                    y[j] = go[j] * ac[j]
            else:
                y[:] = h_prev[r]
            if training:
                cs_out[t, r, :] = c
        h_prev = y_out[t]
    hT_out[:] = h_prev


@njit(**NUMBA_FLAGS)
def lstm_backward(x, w_x, w_h, b, p, h0, c0, mask, act_codes, act_ab, clip, input_forget, reverse,
                  z_ws, gates, cs, y, dy, dhT, dcT,
                  dz_ws, dx_out, dw_x_out, dw_h_out, db_out, dp_out, dh0_out, dc0_out):
    """Same contract as lstm_ref.lstm_backward.
    IN   forward inputs;  z_ws, gates (T, B, 4H), cs (T, B, H), y (T, B, H);  dy (T, B, H), dhT, dcT (B, H)
    SCRATCH dz_ws (T, B, 4H)
    OUT  dx_out (T, B, I), dh0_out, dc0_out (B, H);  += into dw_x_out (I, 4H), dw_h_out (H, 4H), db_out (4H,),
         dp_out (3, H) | (0, H)
    """
    T, B, I = x.shape
    H = w_h.shape[0]
    G = 4 * H
    has_mask = mask.shape[0] > 0
    peep = p.shape[0] > 0
    use_clip = clip > 0
    f_code, g_code, h_code = act_codes[0], act_codes[1], act_codes[2]
    f_a, f_b, g_a, g_b, h_a, h_b = act_ab[0, 0], act_ab[0, 1], act_ab[1, 0], act_ab[1, 1], act_ab[2, 0], act_ab[2, 1]
    clip_t = cast_like(clip, dz_ws)
    fused = (f_code == SIGMOID and g_code == TANH and h_code == TANH and not peep and not use_clip
             and not input_forget)
    dh = dhT.copy()
    # per-step dz @ W_h^T: W_h^T packed once for the float32 register tiles, else np.dot
    packed = use_packed(dz_ws, B, T)
    w_hT_packed = pack_for_steps(w_h, True, packed)
    dz_pad = step_input_buffer(B, G, packed, dz_ws)
    dh_gemm = step_buffer(B, H, packed, dz_ws)
    dc0_out[:] = dcT                            # the running dc lives in dc0_out
    dc = dc0_out
    ac = np.empty(H, dz_ws.dtype)               # a_h(c)
    d_ac = np.empty(H, dz_ws.dtype)             # a_h'(c)
    d_act = np.empty(G, dz_ws.dtype)            # a'(z) for the four gates
    d_i, d_f, d_g, d_o = d_act[:H], d_act[H:2 * H], d_act[2 * H:3 * H], d_act[3 * H:]
    for k in range(T - 1, -1, -1):
        t = T - 1 - k if reverse else k
        t_prev = t + 1 if reverse else t - 1
        c_prev = cs[t_prev] if k > 0 else c0
        for r in range(B):
            dz = dz_ws[t, r]
            dhr = dh[r]
            dyr = dy[t, r]
            if has_mask and mask[t, r] == 0:
                # a masked step passes dh (plus dy[t]) and dc through; dz = 0
                dz[:] = 0
                for j in range(H):
                    dhr[j] += dyr[j]
                continue
            z = z_ws[t, r]
            gate = gates[t, r]
            c = cs[t, r]
            cp = c_prev[r]
            dcr = dc[r]
            zi, zf, zg, zo = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
            gi, gf, gg, go = gate[:H], gate[H:2 * H], gate[2 * H:3 * H], gate[3 * H:]
            dzi, dzf, dzg, dzo = dz[:H], dz[H:2 * H], dz[2 * H:3 * H], dz[3 * H:]
            if fused:
                _cell_row_backward(dhr, dyr, gi, gf, gg, go, c, cp, dcr, dzi, dzf, dzg, dzo)
                continue
            act_row(h_code, h_a, h_b, c, ac)
            dact_row(h_code, h_a, h_b, c, ac, d_ac)
            dact_row(f_code, f_a, f_b, zi, gi, d_i)
            if not input_forget:
                dact_row(f_code, f_a, f_b, zf, gf, d_f)
            dact_row(g_code, g_a, g_b, zg, gg, d_g)
            dact_row(f_code, f_a, f_b, zo, go, d_o)
            # h = o * a_h(c):  dzo = dh * a_h(c) * a_f'(zo),  dc += dh * o * a_h'(c)
            for j in range(H):
                dhj = dhr[j] + dyr[j]
                dzo[j] = dhj * ac[j] * d_o[j]
                dcr[j] += dhj * go[j] * d_ac[j]
            if use_clip:
                clip_grad_row(dzo, zo, clip_t)
            if peep:
                for j in range(H):
                    dcr[j] += dzo[j] * p[2, j]
            # c = f * c_prev + i * g;  dc_prev = dc * f
            if input_forget:      # f = 1 - i
                for j in range(H):
                    dct = dcr[j]
                    dzi[j] = (dct * gg[j] - dct * cp[j]) * d_i[j]
                    dzf[j] = 0
                    dzg[j] = dct * gi[j] * d_g[j]
                    dcr[j] = dct * gf[j]
            else:
                for j in range(H):
                    dct = dcr[j]
                    dzi[j] = dct * gg[j] * d_i[j]
                    dzf[j] = dct * cp[j] * d_f[j]
                    dzg[j] = dct * gi[j] * d_g[j]
                    dcr[j] = dct * gf[j]
            if use_clip:
                clip_grad_row(dz[:3 * H], z[:3 * H], clip_t)
            if peep:
                for j in range(H):
                    dcr[j] += dzi[j] * p[0, j] + dzf[j] * p[1, j]
                    dp_out[0, j] += dzi[j] * cp[j]
                    dp_out[1, j] += dzf[j] * cp[j]
                    dp_out[2, j] += dzo[j] * c[j]
        # dh_prev = dz @ W_h^T  (masked rows keep dh)
        step_matmul(dz_ws[t], w_h.T, w_hT_packed, dz_pad, True, dh_gemm)
        for r in range(B):
            if not has_mask or mask[t, r] != 0:
                dh[r, :] = dh_gemm[r, :H]
    dh0_out[:] = dh
    if T * B == 0:
        return
    dz2 = dz_ws.reshape(T * B, G)
    # dW_h += sum_t h_prev(t)^T @ dz(t)
    add_hprev_outer(dw_h_out, y, h0, dz2, reverse)
    # dW_x += X^T @ dZ,  db += sum dZ,  dX = dZ @ W_x^T   over all T*B rows at once
    add_outer_product(dw_x_out, x.reshape(T * B, I), dz2)
    add_column_sums(db_out, dz2)
    if I > 0:
        np.dot(dz2, w_x.T, dx_out.reshape(T * B, I))

"""GRU forward and backward in Cython: float32/float64 (fused), GIL released, BLAS from scipy.

Same contract as gru_ref (read its docstrings). Layout time-major, C-contiguous, gate order z, r, n:
    x (T, B, I)  w_x (I, 3H)  w_h (H, 3H) = [w_hz | w_hr | w_hn]  b_x, b_h (3H,)  h0 (B, H)  mask (T, B) | (0, 0)
One valid step (a_f, a_g the activations given by code; clip optional on the three pre-activations):
    xz, xr, xn = x_t @ w_x + b_x
    reset_after:   hz, hr, hn = h_prev @ w_h + b_h;   z = a_f(xz + hz);  r = a_f(xr + hr);  n = a_g(xn + r * hn)
    reset_before:  hz, hr = h_prev @ w_h[:, :2H] + b_h[:2H];  z, r as above;  n = a_g(xn + (r * h_prev) @ w_hn + b_hn)
    h = z * h_prev + (1 - z) * n
Backward (dh += dy[t] first; masked rows pass dh through):
    dz_n = dh (1 - z) a_g'(z_n);  dz_z = dh (h_prev - n) a_f'(z_z);  dz_r = dr a_f'(z_r)
    reset_after:   dr = dz_n * hn;  dhn = dz_n * r;  dh_prev = dh z + [dz_z, dz_r, dhn] @ w_h^T
    reset_before:  drh = dz_n @ w_hn^T;  dr = drh * h_prev;  dh_prev = dh z + drh r + [dz_z, dz_r] @ w_h[:, :2H]^T
Compute shape: one GEMM (T*B, I) @ (I, 3H) into z_ws (pre-filled with b_x, and b_hn for reset_before),
per step the recurrent product(s) into hz_ws[t] and a gate pass per row; backward per step the gate pass
and the dh_prev product, then dw_x, dx, dw_h as GEMMs over all T*B rows. Per-step products go through
_blas.matmul_acc (GEMV for B == 1; float32 with 1 < B < 320: a kernel on w_h packed once per call, one
malloc freed on return; else gemm). Inference also takes batch-first x, z_ws, y (batch_major, (B, T, .)): the
steps read and write their rows with a stride.
The default activations (sigmoid, tanh) with reset_after and no clip take one fused, vectorised loop per
row; anything else takes the general pass on CH-column chunks in stack buffers.
"""
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from cython cimport floating

from fastlstm._kernels._act cimport (SIGMOID, TANH, apply_act, apply_dact, clip_grad, clip_inplace,
                                     sigmoid_fast, tanh_fast)
from fastlstm._kernels._steps cimport _add, _copy, _step
from fastlstm._kernels._blas cimport (GEMV_MAX_ROWS, NO_TRANS, PACK_ROW64, TRANS, Packed64, Stepper, WeightPacks,
                                      fl_barrier, fl_free, fl_gemv_packed64, fl_gemv_packed64_panels,
                                      fl_num_threads, fl_thread_num, gemm, kernel_team, matmul_acc, matmul_bias,
                                      pack_kind, pack_weights)
from cython.parallel cimport parallel

cdef enum:
    CH = 64          # columns per chunk in the gate passes (their stack buffers)
    # batch-1 steps on several threads from this many units on: two barriers per step (after the product, after
    # the gate pass) cost more below (2 threads, T = 100, I = H: H = 96 230 -> 258 us, 128: 373 -> 334 us,
    # 256: 1536 -> 1010 us, 512: 6.0 -> 4.0 ms)
    UNITS_THREADS_MIN_H = 128


# the thread threshold above, readable from Python (tests)
THREAD_THRESHOLDS = {"units_min_h": UNITS_THREADS_MIN_H}


# ---------------------------------------------------------------------------------------------------------
# forward gate passes, one batch row each: zx (3H,) holds x_t @ w_x + b_x on entry and the final
# pre-activations z_z, z_r, z_n on return; hh (3H,) the recurrent projections
# ---------------------------------------------------------------------------------------------------------

cdef void _fwd_row_fast(floating* zx, const floating* hh, const floating* h_prev, floating* h_out,
                        floating* gates, Py_ssize_t H, Py_ssize_t S=-1) noexcept nogil:
    """reset_after, sigmoid / tanh, no clip; gates may be NULL. H units; S: the gate blocks' stride in zx, hh
    and gates (default H; a larger one when the pass covers a part of the units)."""
    # results go to stack buffers first so that gcc vectorises without run-time alias checks
    cdef floating zb[3][CH]
    cdef floating ab[3][CH]
    cdef floating hb[CH]
    cdef floating one = 1
    cdef Py_ssize_t ck, j0, j, n, q
    if S < 0:
        S = H
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        # z = sigmoid(xz + hz);  r = sigmoid(xr + hr);  n = tanh(xn + r * hn);  h = z * h_prev + (1 - z) * n
        for j in range(n):
            zb[0][j] = zx[j0 + j] + hh[j0 + j]
            zb[1][j] = zx[S + j0 + j] + hh[S + j0 + j]
            ab[0][j] = sigmoid_fast(zb[0][j])
            ab[1][j] = sigmoid_fast(zb[1][j])
            zb[2][j] = zx[2 * S + j0 + j] + ab[1][j] * hh[2 * S + j0 + j]
            ab[2][j] = tanh_fast(zb[2][j])
            hb[j] = ab[0][j] * h_prev[j0 + j] + (one - ab[0][j]) * ab[2][j]
        _copy(h_out + j0, hb, n)
        for q in range(3):
            _copy(zx + q * S + j0, zb[q], n)
            if gates != NULL:
                _copy(gates + q * S + j0, ab[q], n)


cdef void _fwd_row_after(floating* zx, const floating* hh, const floating* h_prev, floating* h_out,
                         floating* gates, const int* codes, const double* ab, floating clip,
                         Py_ssize_t H) noexcept nogil:
    """reset_after, any activations and clip; gates may be NULL."""
    cdef floating az[CH]
    cdef floating ar[CH]
    cdef floating an[CH]
    cdef floating *zz
    cdef floating *zr
    cdef floating *zn
    cdef Py_ssize_t ck, j0, j, n
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        zz, zr, zn = zx + j0, zx + H + j0, zx + 2 * H + j0
        # z_z = xz + hz;  z_r = xr + hr
        for j in range(n):
            zz[j] += hh[j0 + j]
            zr[j] += hh[H + j0 + j]
        if clip > 0:
            clip_inplace(zz, n, clip)
            clip_inplace(zr, n, clip)
        apply_act(codes[0], ab[0], ab[1], zz, az, n)
        apply_act(codes[0], ab[0], ab[1], zr, ar, n)
        # z_n = xn + r * hn
        for j in range(n):
            zn[j] += ar[j] * hh[2 * H + j0 + j]
        if clip > 0:
            clip_inplace(zn, n, clip)
        apply_act(codes[1], ab[2], ab[3], zn, an, n)
        # h = z * h_prev + (1 - z) * n
        for j in range(n):
            h_out[j0 + j] = az[j] * h_prev[j0 + j] + (<floating>1 - az[j]) * an[j]
        if gates != NULL:
            _copy(gates + j0, az, n)
            _copy(gates + H + j0, ar, n)
            _copy(gates + 2 * H + j0, an, n)


cdef void _fwd_row_before_zr(floating* zx, const floating* hh, const floating* h_prev, floating* rh,
                             floating* z_keep, floating* r_keep, const int* codes, const double* ab,
                             floating clip, Py_ssize_t H) noexcept nogil:
    """reset_before, first half: z, r into z_keep, r_keep (r_keep may be NULL), rh = r * h_prev."""
    cdef floating ar[CH]
    cdef floating *zz
    cdef floating *zr
    cdef Py_ssize_t ck, j0, j, n
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        zz, zr = zx + j0, zx + H + j0
        for j in range(n):
            zz[j] += hh[j0 + j]
            zr[j] += hh[H + j0 + j]
        if clip > 0:
            clip_inplace(zz, n, clip)
            clip_inplace(zr, n, clip)
        apply_act(codes[0], ab[0], ab[1], zz, z_keep + j0, n)
        apply_act(codes[0], ab[0], ab[1], zr, ar, n)
        for j in range(n):
            rh[j0 + j] = ar[j] * h_prev[j0 + j]
        if r_keep != NULL:
            _copy(r_keep + j0, ar, n)


cdef void _fwd_row_before_n(floating* zn, const floating* z_keep, const floating* h_prev, floating* h_out,
                            floating* n_keep, const int* codes, const double* ab, floating clip,
                            Py_ssize_t H) noexcept nogil:
    """reset_before, second half: zn (H,) holds xn + (r * h_prev) @ w_hn + b_hn. z_keep may be h_out."""
    cdef floating an[CH]
    cdef Py_ssize_t ck, j0, j, n
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        if clip > 0:
            clip_inplace(zn + j0, n, clip)
        apply_act(codes[1], ab[2], ab[3], zn + j0, an, n)
        for j in range(n):
            h_out[j0 + j] = z_keep[j0 + j] * h_prev[j0 + j] + (<floating>1 - z_keep[j0 + j]) * an[j]
        if n_keep != NULL:
            _copy(n_keep + j0, an, n)


cdef void _gru_units_threads(int nt, const float* b_h, const float* wp_a, const float* h0,
                             const unsigned char* mask, bint reverse, float* z_ws, float* hz_ws, float* y,
                             Py_ssize_t T, Py_ssize_t H) noexcept nogil:
    """The batch-1 inference steps (reset_after, default gates) on nt OpenMP threads, z_ws = x @ w_x + b_x
    given: per step each thread computes its share of hz = b_h + h_prev @ w_h (64-column panels of wp_a), a
    barrier, the gate pass of its share of the units, a barrier (the next step needs all of h). The same
    arithmetic as one thread, bit for bit."""
    with parallel(num_threads=nt):
        _gru_units_share(fl_thread_num(), fl_num_threads(), b_h, wp_a, h0, mask, reverse, z_ws, hz_ws, y, T, H)


cdef void _gru_units_share(int tid, int n, const float* b_h, const float* wp_a, const float* h0,
                           const unsigned char* mask, bint reverse, float* z_ws, float* hz_ws, float* y,
                           Py_ssize_t T, Py_ssize_t H) noexcept nogil:
    """Thread tid of n in _gru_units_threads: panels and units by equal shares (units in multiples of 8)."""
    cdef Py_ssize_t G = 3 * H, k, t, np = (G + 63) // 64
    cdef Py_ssize_t c0 = min(64 * (np * tid // n), G), c1 = min(64 * (np * (tid + 1) // n), G)
    cdef Py_ssize_t u0 = (H * tid // n) // 8 * 8, u1 = H if tid == n - 1 else (H * (tid + 1) // n) // 8 * 8
    cdef const float *h_prev = h0
    cdef float *hzt
    cdef float *yt
    for k in range(T):
        t = _step(k, T, reverse)
        hzt = hz_ws + t * G
        yt = y + t * H
        if c1 > c0:
            # hz[c0:c1] = b_h[c0:c1] + h_prev @ w_h[:, c0:c1]
            _copy(hzt + c0, b_h + c0, c1 - c0)
            fl_gemv_packed64_panels(<int>H, <int>G, h_prev, wp_a, hzt, <int>(c0 // 64), <int>((c1 + 63) // 64),
                                    <int>(k & 1))
        fl_barrier()
        if u1 > u0:
            if mask == NULL or mask[t] != 0:
                _fwd_row_fast(z_ws + t * G + u0, hzt + u0, h_prev + u0, yt + u0, <float*>NULL, u1 - u0, H)
            else:
                _copy(yt + u0, h_prev + u0, u1 - u0)       # a masked step keeps the state
        h_prev = yt
        fl_barrier()


cdef void _gru_forward(const floating* x, const floating* w_x, const floating* w_h, const floating* b_x,
                       const floating* b_h, const floating* h0, const unsigned char* mask, const int* codes,
                       const double* ab, floating clip, bint reset_after, bint reverse, floating* z_ws,
                       floating* hz_ws, floating* y, floating* hT, floating* gates_out, Py_ssize_t T,
                       Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, const float* wa_kept, const float* wn_kept,
                       const float* wx_kept, bint batch_major, int threads) noexcept nogil:
    """wa_kept, wn_kept, wx_kept: wp_a, wp_n and w_x packed as this call would pack them (pack_weights), copies a
    WeightPacks keeps (see gru_forward); or NULL: packed here when that pays, and freed on return. batch_major:
    x, z_ws and y are (B, T, .) instead of (T, B, .) (inference only): the steps read and write their rows with a
    stride (hz_ws stays time-major)."""
    cdef Py_ssize_t G = 3 * H, r, k, t, bi, j, row
    # element strides between steps (s*t) and between the batch rows of one step (s*b)
    cdef Py_ssize_t szt = G if batch_major else B * G, szb = T * G if batch_major else G
    cdef Py_ssize_t syt = H if batch_major else B * H, syb = T * H if batch_major else H
    cdef Py_ssize_t ldh = H             # row stride of h_prev: h0, then y's
    cdef bint training = gates_out != NULL, valid
    cdef bint fast = codes[0] == SIGMOID and codes[1] == TANH and clip <= 0
    cdef const floating *h_prev = h0
    cdef floating *zt
    cdef floating *hzt
    cdef floating *yt
    cdef floating *gt
    # the recurrent weights packed once for the per-step products (float32, small batches; else NULL):
    # all of w_h (reset_after), or w_h[:, :2H] and w_h[:, 2H:] (reset_before)
    cdef float *wa_own = NULL
    cdef float *wn_own = NULL
    if wa_kept == NULL:
        wa_own = pack_weights(<int>H, <int>(G if reset_after else 2 * H), w_h, <int>G, False, B, T)
    if wn_kept == NULL and not reset_after:
        wn_own = pack_weights(<int>H, <int>H, w_h + 2 * H, <int>G, False, B, T)
    cdef const float *wp_a = wa_kept if wa_kept != NULL else wa_own
    cdef const float *wp_n = wn_kept if wn_kept != NULL else wn_own
    # z_ws = b_x (+ b_hn on the n slice for reset_before), then z_ws += x @ w_x   (all T*B rows at once)
    for r in range(T * B):
        if I == 0:
            _add(z_ws + r * G, b_x, G)       # projected input: z_ws holds x @ w_x already
        else:
            _copy(z_ws + r * G, b_x, G)
        if not reset_after:
            for j in range(H):
                z_ws[r * G + 2 * H + j] += b_h[2 * H + j]
    # (few rows, as in a one-request latency call: through the packed kernel, which unlike a threaded gemm
    # never waits on BLAS worker threads)
    cdef float *wx_own = NULL
    if I > 0:
        if wx_kept == NULL and T * B > GEMV_MAX_ROWS:
            wx_own = pack_weights(<int>I, <int>G, w_x, <int>G, False, T * B)
        matmul_acc(<int>(T * B), <int>G, <int>I, x, <int>I, w_x, <int>G, False,
                   wx_kept if wx_kept != NULL else wx_own, z_ws, <int>G)
        fl_free(wx_own)
    # batch-1 inference steps on several threads (_gru_units_threads runs them all)
    cdef bint shared = (floating is float and B == 1 and threads > 1 and H >= UNITS_THREADS_MIN_H and not training
                        and reset_after and fast and wp_a != NULL and pack_kind(B, T) == PACK_ROW64)
    if floating is float:
        if shared:
            _gru_units_threads(kernel_team(threads), b_h, wp_a, h0, mask, reverse, z_ws, hz_ws, y, T, H)
            h_prev = y + _step(T - 1, T, reverse) * H
    for k in range(0 if shared else T):           # (shared: the steps ran above)
        t = _step(k, T, reverse)
        zt = z_ws + t * szt
        hzt = hz_ws + t * B * G
        yt = y + t * syt
        gt = gates_out + t * B * G if training else NULL
        if reset_after:
            # hz_ws[t] = h_prev @ w_h + b_h
            matmul_bias(<int>B, <int>G, <int>H, h_prev, <int>ldh, w_h, <int>G, False, wp_a, b_h, hzt, <int>G)
            for bi in range(B):
                row = t * B + bi
                valid = mask == NULL or mask[row] != 0
                if not valid and not training:
                    _copy(yt + bi * syb, h_prev + bi * ldh, H)
                    continue
                if fast:
                    _fwd_row_fast(zt + bi * szb, hzt + bi * G, h_prev + bi * ldh, yt + bi * syb,
                                  gt + bi * G if training else NULL, H)
                else:
                    _fwd_row_after(zt + bi * szb, hzt + bi * G, h_prev + bi * ldh, yt + bi * syb,
                                   gt + bi * G if training else NULL, codes, ab, clip, H)
                if not valid:
                    _copy(yt + bi * syb, h_prev + bi * ldh, H)
        else:
            # hz_ws[t][:, :2H] = h_prev @ w_h[:, :2H] + b_h[:2H]
            matmul_bias(<int>B, <int>(2 * H), <int>H, h_prev, <int>ldh, w_h, <int>G, False, wp_a, b_h, hzt, <int>G)
            # z, r; hz_ws[t][:, 2H:] = r * h_prev. z is kept in gates_out, or in y_out[t] until h replaces it
            for bi in range(B):
                _fwd_row_before_zr(zt + bi * szb, hzt + bi * G, h_prev + bi * ldh, hzt + bi * G + 2 * H,
                                   gt + bi * G if training else yt + bi * syb,
                                   gt + bi * G + H if training else NULL, codes, ab, clip, H)
            # z_ws[t][:, 2H:] += (r * h_prev) @ w_h[:, 2H:]   (b_hn is already in z_ws)
            matmul_acc(<int>B, <int>H, <int>H, hzt + 2 * H, <int>G, w_h + 2 * H, <int>G, False, wp_n, zt + 2 * H,
                       <int>szb)
            for bi in range(B):
                row = t * B + bi
                _fwd_row_before_n(zt + bi * szb + 2 * H, gt + bi * G if training else yt + bi * syb,
                                  h_prev + bi * ldh, yt + bi * syb, gt + bi * G + 2 * H if training else NULL,
                                  codes, ab, clip, H)
                if mask != NULL and mask[row] == 0:
                    _copy(yt + bi * syb, h_prev + bi * ldh, H)
        h_prev = yt
        ldh = syb
    for bi in range(B):
        _copy(hT + bi * H, h_prev + bi * ldh, H)
    fl_free(wa_own)
    fl_free(wn_own)


def gru_forward(const floating[:, :, ::1] x, const floating[:, ::1] w_x, const floating[:, ::1] w_h,
                const floating[::1] b_x, const floating[::1] b_h, const floating[:, ::1] h0,
                const unsigned char[:, ::1] mask, const int[::1] act_codes, const double[:, ::1] act_ab,
                double clip, bint reset_after, bint reverse, floating[:, :, ::1] z_ws, floating[:, :, ::1] hz_ws,
                floating[:, :, ::1] y_out, floating[:, ::1] hT_out, floating[:, :, ::1] gates_out,
                WeightPacks packs=None, bint batch_major=False, int threads=1):
    """GRU over T steps. Same contract as gru_ref.gru_forward.
    IN   x (T, B, I)  w_x (I, 3H)  w_h (H, 3H)  b_x, b_h (3H,)  h0 (B, H)  mask (T, B) | (0, 0)
    SCRATCH z_ws, hz_ws (T, B, 3H)
    OUT  y_out (T, B, H)  hT_out (B, H);  gates_out (T, B, 3H) | (0, 0, 0)
    packs: a _blas.WeightPacks that keeps the packed w_h and w_x across calls with these same weight arrays
    (their values unchanged), or None: packed per call
    batch_major: x (B, T, I), z_ws (B, T, 3H) and y_out (B, T, H) instead (inference only)
    threads: at most this many threads (batch-1 float32 inference with reset_after, the default gates and at
    least UNITS_THREADS_MIN_H units; else one)
    """
    cdef Py_ssize_t T = x.shape[1 if batch_major else 0], B = x.shape[0 if batch_major else 1]
    cdef Py_ssize_t I = x.shape[2], H = w_h.shape[0], G = 3 * H
    if batch_major and gates_out.shape[0] > 0:
        raise ValueError("batch_major is for inference only: the training arrays and the backward are time-major")
    cdef const unsigned char *m_ptr = &mask[0, 0] if mask.shape[0] > 0 else NULL
    cdef floating *g_ptr = &gates_out[0, 0, 0] if gates_out.shape[0] > 0 else NULL
    cdef const float *wa_kept = NULL
    cdef const float *wn_kept = NULL
    cdef const float *wx_kept = NULL
    if floating is float:
        if packs is not None:
            wa_kept = packs.packed(&w_h[0, 0], <int>H, <int>(G if reset_after else 2 * H), <int>G, B, T)
            if not reset_after:
                wn_kept = packs.packed(&w_h[0, 2 * H], <int>H, <int>H, <int>G, B, T)
            if I > 0 and T * B > GEMV_MAX_ROWS:
                wx_kept = packs.packed(&w_x[0, 0], <int>I, <int>G, <int>G, T * B, 2)
    with nogil:
        _gru_forward(&x[0, 0, 0], &w_x[0, 0], &w_h[0, 0], &b_x[0], &b_h[0], &h0[0, 0], m_ptr, &act_codes[0],
                     &act_ab[0, 0], <floating>clip, reset_after, reverse, &z_ws[0, 0, 0], &hz_ws[0, 0, 0],
                     &y_out[0, 0, 0], &hT_out[0, 0], g_ptr, T, B, I, H, wa_kept, wn_kept, wx_kept,
                     batch_major, max(1, threads))


# ---------------------------------------------------------------------------------------------------------
# backward gate passes, one valid batch row each
# ---------------------------------------------------------------------------------------------------------

cdef void _bwd_row_fast(const floating* gates, const floating* hh, const floating* h_prev, floating* dh,
                        floating* dz, floating* dhz, floating* db_x, floating* db_h, Py_ssize_t H) noexcept nogil:
    """reset_after, sigmoid / tanh, no clip. dh becomes dh * z (the GEMM then adds dhz @ w_h^T)."""
    cdef floating dzb[3][CH]              # stack buffers for the results (see _fwd_row_fast)
    cdef floating dhnb[CH]
    cdef floating dhb[CH]
    cdef floating z, r, n, d, one = 1
    cdef Py_ssize_t ck, j0, j, m, q
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        m = H - j0 if H - j0 < CH else CH
        for j in range(m):
            z = gates[j0 + j]
            r = gates[H + j0 + j]
            n = gates[2 * H + j0 + j]
            d = dh[j0 + j]
            dzb[2][j] = d * (one - z) * (one - n * n)
            dzb[0][j] = d * (h_prev[j0 + j] - n) * (z * (one - z))
            dzb[1][j] = dzb[2][j] * hh[2 * H + j0 + j] * (r * (one - r))
            dhnb[j] = dzb[2][j] * r
            dhb[j] = d * z
        _copy(dh + j0, dhb, m)
        for q in range(3):
            _copy(dz + q * H + j0, dzb[q], m)
            for j in range(m):
                db_x[q * H + j0 + j] += dzb[q][j]
        for q in range(2):
            _copy(dhz + q * H + j0, dzb[q], m)
            for j in range(m):
                db_h[q * H + j0 + j] += dzb[q][j]
        _copy(dhz + 2 * H + j0, dhnb, m)
        for j in range(m):
            db_h[2 * H + j0 + j] += dhnb[j]


cdef void _bwd_row_zn(const floating* zx, const floating* gates, const floating* h_prev, const floating* dh,
                      floating* dz, floating* dhz, const int* codes, const double* ab, floating clip,
                      Py_ssize_t H) noexcept nogil:
    """dz_z, dz_n into dz and dhz (dhz's n slice gets dz_n: reset_before's dhn, reset_after fixes it)."""
    cdef const floating *gz = gates
    cdef const floating *gn = gates + 2 * H
    cdef Py_ssize_t ck, j0, j, n
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        # dz_n = dh (1 - z) a_g'(z_n);  dz_z = dh (h_prev - n) a_f'(z_z)
        apply_dact(codes[1], ab[2], ab[3], zx + 2 * H + j0, gn + j0, dz + 2 * H + j0, n)
        apply_dact(codes[0], ab[0], ab[1], zx + j0, gz + j0, dz + j0, n)
        for j in range(j0, j0 + n):
            dz[2 * H + j] = dh[j] * (<floating>1 - gz[j]) * dz[2 * H + j]
            dz[j] = dh[j] * (h_prev[j] - gn[j]) * dz[j]
        if clip > 0:
            clip_grad(dz + 2 * H + j0, zx + 2 * H + j0, n, clip)
            clip_grad(dz + j0, zx + j0, n, clip)
    _copy(dhz, dz, H)
    _copy(dhz + 2 * H, dz + 2 * H, H)


cdef void _bwd_row_after(const floating* zx, const floating* gates, const floating* hh,
                         const floating* h_prev, floating* dh, floating* dz, floating* dhz, floating* db_x,
                         floating* db_h, const int* codes, const double* ab, floating clip,
                         Py_ssize_t H) noexcept nogil:
    """reset_after, any activations / clip: dr = dz_n * hn, dhn = dz_n * r; dh becomes dh * z."""
    cdef Py_ssize_t j
    _bwd_row_zn(zx, gates, h_prev, dh, dz, dhz, codes, ab, clip, H)
    apply_dact(codes[0], ab[0], ab[1], zx + H, gates + H, dz + H, H)
    for j in range(H):
        dz[H + j] = dz[2 * H + j] * hh[2 * H + j] * dz[H + j]
    if clip > 0:
        clip_grad(dz + H, zx + H, H, clip)
    for j in range(H):
        dhz[H + j] = dz[H + j]
        dhz[2 * H + j] = dz[2 * H + j] * gates[H + j]
        dh[j] = dh[j] * gates[j]
    for j in range(3 * H):
        db_x[j] += dz[j]
        db_h[j] += dhz[j]


cdef void _bwd_row_before_r(const floating* zx, const floating* gates, const floating* h_prev, floating* dh,
                            floating* dz, floating* dhz, floating* db_x, floating* db_h, const int* codes,
                            const double* ab, floating clip, Py_ssize_t H) noexcept nogil:
    """reset_before, after drh = dz_n @ w_hn^T landed in dhz[H:2H]: dr = drh * h_prev, dh = dh z + drh r."""
    cdef Py_ssize_t j
    cdef floating drh
    apply_dact(codes[0], ab[0], ab[1], zx + H, gates + H, dz + H, H)
    for j in range(H):
        drh = dhz[H + j]
        dz[H + j] = drh * h_prev[j] * dz[H + j]
        dh[j] = dh[j] * gates[j] + drh * gates[H + j]
    if clip > 0:
        clip_grad(dz + H, zx + H, H, clip)
    for j in range(H):
        dhz[H + j] = dz[H + j]
    for j in range(3 * H):
        db_x[j] += dz[j]
        db_h[j] += dhz[j]


cdef void _gru_backward(const floating* x, const floating* w_x, const floating* w_h, const floating* h0,
                        const unsigned char* mask, const int* codes, const double* ab, floating clip,
                        bint reset_after, bint reverse, const floating* z_ws, const floating* hz_ws,
                        const floating* gates, const floating* y, const floating* dy, floating* dz_ws,
                        floating* dhz_ws, floating* dx, floating* dw_x, floating* dw_h, floating* db_x,
                        floating* db_h, floating* dh, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                        Py_ssize_t H) noexcept nogil:
    """dh holds dhT on entry and dh0 on return."""
    cdef Py_ssize_t G = 3 * H, k, t, bi, e, row, first
    cdef bint fast = codes[0] == SIGMOID and codes[1] == TANH and clip <= 0 and reset_after
    cdef const floating *h_prev
    cdef floating *dzt
    cdef floating *dhzt
    cdef int N = <int>G if reset_after else <int>(2 * H)
    cdef float *wp_a
    cdef float *wp_n = NULL
    if T == 0:
        return
    # w_h^T packed once (float32, small batches; else NULL): all of it, or w_h[:, :2H]^T and w_h[:, 2H:]^T
    wp_a = pack_weights(N, <int>H, w_h, <int>G, True, B, T)
    if not reset_after:
        wp_n = pack_weights(<int>H, <int>H, w_h + 2 * H, <int>G, True, B, T)
    for k in range(T - 1, -1, -1):
        t = _step(k, T, reverse)
        h_prev = y + _step(k - 1, T, reverse) * B * H if k > 0 else h0
        dzt = dz_ws + t * B * G
        dhzt = dhz_ws + t * B * G
        # dh += dy[t]
        for e in range(B * H):
            dh[e] += dy[t * B * H + e]
        for bi in range(B):
            row = t * B + bi
            if mask != NULL and mask[row] == 0:
                memset(dzt + bi * G, 0, G * sizeof(floating))      # dh passes through
                memset(dhzt + bi * G, 0, G * sizeof(floating))
            elif fast:
                _bwd_row_fast(gates + row * G, hz_ws + row * G, h_prev + bi * H, dh + bi * H, dzt + bi * G,
                              dhzt + bi * G, db_x, db_h, H)
            elif reset_after:
                _bwd_row_after(z_ws + row * G, gates + row * G, hz_ws + row * G, h_prev + bi * H, dh + bi * H,
                               dzt + bi * G, dhzt + bi * G, db_x, db_h, codes, ab, clip, H)
            else:
                _bwd_row_zn(z_ws + row * G, gates + row * G, h_prev + bi * H, dh + bi * H, dzt + bi * G,
                            dhzt + bi * G, codes, ab, clip, H)
        if reset_after:
            # dh += dhz_t @ w_h^T
            matmul_acc(<int>B, <int>H, <int>G, dhzt, <int>G, w_h, <int>G, True, wp_a, dh, <int>H)
        else:
            # dhz_t[:, H:2H] = dz_n @ w_h[:, 2H:]^T   (d(r * h_prev), parked in the dz_r slot; masked rows 0)
            for bi in range(B):
                memset(dhzt + bi * G + H, 0, H * sizeof(floating))
            matmul_acc(<int>B, <int>H, <int>H, dzt + 2 * H, <int>G, w_h + 2 * H, <int>G, True, wp_n, dhzt + H,
                       <int>G)
            for bi in range(B):
                row = t * B + bi
                if mask == NULL or mask[row] != 0:
                    _bwd_row_before_r(z_ws + row * G, gates + row * G, h_prev + bi * H, dh + bi * H,
                                      dzt + bi * G, dhzt + bi * G, db_x, db_h, codes, ab, clip, H)
            # dh += dhz_t[:, :2H] @ w_h[:, :2H]^T
            matmul_acc(<int>B, <int>H, <int>(2 * H), dhzt, <int>G, w_h, <int>G, True, wp_a, dh, <int>H)
    fl_free(wp_a)
    fl_free(wp_n)
    # dw_x += x^T @ dz   over all T*B rows;  dx = dz @ w_x^T   (neither for a projected input, I == 0)
    if I > 0:
        gemm(TRANS, NO_TRANS, <int>I, <int>G, <int>(T * B), <floating>1, x, <int>I, dz_ws, <int>G,
             <floating>1, dw_x, <int>G)
        gemm(NO_TRANS, TRANS, <int>(T * B), <int>I, <int>G, <floating>1, dz_ws, <int>G, w_x, <int>G,
             <floating>0, dx, <int>I)
    # dw_h (all of it for reset_after, [:, :2H] for reset_before) += H_prev^T @ dhz, H_prev = y shifted by
    # one processed step with h0 first: one (B, H) GEMM for h0 and one over the other (T-1)*B rows
    first = _step(0, T, reverse)
    # dw_h[:, :N] += h0^T @ dhz[first][:, :N]
    gemm(TRANS, NO_TRANS, <int>H, N, <int>B, <floating>1, h0, <int>H, dhz_ws + first * B * G, <int>G,
         <floating>1, dw_h, <int>G)
    if T > 1:
        if reverse:
            # dw_h[:, :N] += y[1:]^T @ dhz[:-1][:, :N]
            gemm(TRANS, NO_TRANS, <int>H, N, <int>((T - 1) * B), <floating>1, y + B * H, <int>H, dhz_ws,
                 <int>G, <floating>1, dw_h, <int>G)
        else:
            # dw_h[:, :N] += y[:-1]^T @ dhz[1:][:, :N]
            gemm(TRANS, NO_TRANS, <int>H, N, <int>((T - 1) * B), <floating>1, y, <int>H, dhz_ws + B * G,
                 <int>G, <floating>1, dw_h, <int>G)
    if not reset_after:
        # dw_h[:, 2H:] += (r * h_prev)^T @ dz_n   (r * h_prev is hz_ws[:, :, 2H:])
        gemm(TRANS, NO_TRANS, <int>H, <int>H, <int>(T * B), <floating>1, hz_ws + 2 * H, <int>G,
             dhz_ws + 2 * H, <int>G, <floating>1, dw_h + 2 * H, <int>G)


def gru_backward(const floating[:, :, ::1] x, const floating[:, ::1] w_x, const floating[:, ::1] w_h,
                 const floating[::1] b_x, const floating[::1] b_h, const floating[:, ::1] h0,
                 const unsigned char[:, ::1] mask, const int[::1] act_codes, const double[:, ::1] act_ab,
                 double clip, bint reset_after, bint reverse, const floating[:, :, ::1] z_ws,
                 const floating[:, :, ::1] hz_ws, const floating[:, :, ::1] gates, const floating[:, :, ::1] y,
                 const floating[:, :, ::1] dy, const floating[:, ::1] dhT, floating[:, :, ::1] dz_ws,
                 floating[:, :, ::1] dhz_ws, floating[:, :, ::1] dx_out, floating[:, ::1] dw_x_out,
                 floating[:, ::1] dw_h_out, floating[::1] db_x_out, floating[::1] db_h_out,
                 floating[:, ::1] dh0_out):
    """Backpropagation through time for gru_forward. Same contract as gru_ref.gru_backward.
    IN   the forward's inputs;  z_ws, hz_ws, gates (T, B, 3H), y, dy (T, B, H);  dhT (B, H)
    SCRATCH dz_ws, dhz_ws (T, B, 3H)
    OUT  dx_out (T, B, I), dh0_out (B, H) overwritten;  dw_x_out (I, 3H), dw_h_out (H, 3H), db_x_out,
         db_h_out (3H,) accumulated
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_h.shape[0]
    cdef const unsigned char *m_ptr = &mask[0, 0] if mask.shape[0] > 0 else NULL
    with nogil:
        _copy(&dh0_out[0, 0], &dhT[0, 0], B * H)
        _gru_backward(&x[0, 0, 0], &w_x[0, 0], &w_h[0, 0], &h0[0, 0], m_ptr, &act_codes[0], &act_ab[0, 0],
                      <floating>clip, reset_after, reverse, &z_ws[0, 0, 0], &hz_ws[0, 0, 0], &gates[0, 0, 0],
                      &y[0, 0, 0], &dy[0, 0, 0], &dz_ws[0, 0, 0], &dhz_ws[0, 0, 0], &dx_out[0, 0, 0],
                      &dw_x_out[0, 0], &dw_h_out[0, 0], &db_x_out[0], &db_h_out[0], &dh0_out[0, 0], T, B, I, H)


# ---------------------------------------------------------------------------------------------------------
# batch-1 steps for streaming sessions
# ---------------------------------------------------------------------------------------------------------

cdef class GRUStepper(Stepper):
    """Batch-1 float32 GRU steps over weights packed once, for streaming sessions.

        zx = b_x + x_t @ w_x (+ b_hn on the n slice, reset_before);  then, as in gru_forward,
        reset_after:   hh = b_h + h @ w_h;  the gate pass
        reset_before:  hh[:2H] = b_h[:2H] + h @ w_h[:, :2H];  z, r;  zx[2H:] += (r * h) @ w_h[:, 2H:];  n, h

    packed_x, packed_h, packed_n: _blas.Packed64 of w_x (I, 3H), and of w_h (H, 3H) (reset_after) or
    w_h[:, :2H] and w_h[:, 2H:] (reset_before; packed_n None for reset_after). b_x, b_h (3H,), act_codes,
    act_ab as for gru_forward. The state h (float32 C-contiguous, shape (1, H)) is owned by the caller and
    updated in place. One stepper must not run in two threads at once.
    """
    cdef Packed64 px, ph, pn
    cdef float *zx                      # (3H,) input projections, then the pre-activations
    cdef float *hh                      # (3H,) recurrent projections (reset_before: [hz, hr, r * h])
    cdef float *hnew                    # (H,) the next h
    cdef float *zkeep                   # (H,) z, reset_before
    cdef const float *b_x
    cdef const float *b_h
    cdef int codes[2]
    cdef double ab[4]
    cdef float clip
    cdef bint reset_after, fast
    cdef object _keep

    def __cinit__(self, Packed64 packed_x not None, Packed64 packed_h not None, Packed64 packed_n,
                  const float[::1] b_x not None, const float[::1] b_h not None, const int[::1] act_codes not None,
                  const double[:, ::1] act_ab not None, double clip, bint reset_after, float[:, ::1] h not None):
        cdef Py_ssize_t H = h.shape[1], G = 3 * H, j
        cdef bint ok = (h.shape[0] == 1 and b_x.shape[0] == G and b_h.shape[0] == G and packed_x.N == G
                        and packed_h.K == H and act_codes.shape[0] >= 2 and act_ab.size >= 4)
        if reset_after:
            ok = ok and packed_h.N == G and packed_n is None
        else:
            ok = ok and packed_h.N == 2 * H and packed_n is not None and packed_n.K == H and packed_n.N == H
        if not ok:
            raise ValueError(f"GRUStepper: inconsistent shapes: packed_x ({packed_x.K}, {packed_x.N}), packed_h "
                             f"({packed_h.K}, {packed_h.N}), packed_n "
                             f"{None if packed_n is None else (packed_n.K, packed_n.N)}, b_x {b_x.shape[0]}, "
                             f"b_h {b_h.shape[0]}, h ({h.shape[0]}, {h.shape[1]}), reset_after={reset_after}")
        self.px, self.ph, self.pn = packed_x, packed_h, packed_n
        self.units, self.n_in = H, packed_x.K
        self.b_x, self.b_h, self.h = &b_x[0], &b_h[0], &h[0, 0]
        for j in range(2):
            self.codes[j] = act_codes[j]
        for j in range(4):
            self.ab[j] = (&act_ab[0, 0])[j]
        self.clip = <float>clip
        self.reset_after = reset_after
        self.fast = self.codes[0] == SIGMOID and self.codes[1] == TANH and clip <= 0 and reset_after
        self._keep = (b_x.base, b_h.base, h.base)
        self.zx = <float*>malloc(G * sizeof(float))
        self.hh = <float*>malloc(G * sizeof(float))
        self.hnew = <float*>malloc(H * sizeof(float))
        self.zkeep = <float*>malloc(H * sizeof(float))
        if self.zx == NULL or self.hh == NULL or self.hnew == NULL or self.zkeep == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.zx)
        free(self.hh)
        free(self.hnew)
        free(self.zkeep)

    cdef void _advance(self, const float* x, Py_ssize_t k, float* y) noexcept nogil:
        """k steps on the rows x (k, I); y (k, H) gets every h when not NULL"""
        cdef Py_ssize_t t, j, I = self.n_in, H = self.units, G = 3 * self.units
        for t in range(k):
            _copy(self.zx, self.b_x, G)
            if self.reset_after:
                fl_gemv_packed64(<int>I, <int>G, x + t * I, self.px.data, self.zx)
                _copy(self.hh, self.b_h, G)
                fl_gemv_packed64(<int>H, <int>G, self.h, self.ph.data, self.hh)
                if self.fast:
                    _fwd_row_fast(self.zx, self.hh, self.h, self.hnew, <float*>NULL, H)
                else:
                    _fwd_row_after(self.zx, self.hh, self.h, self.hnew, <float*>NULL, self.codes, self.ab,
                                   self.clip, H)
            else:
                for j in range(H):
                    self.zx[2 * H + j] += self.b_h[2 * H + j]
                fl_gemv_packed64(<int>I, <int>G, x + t * I, self.px.data, self.zx)
                _copy(self.hh, self.b_h, 2 * H)
                fl_gemv_packed64(<int>H, <int>(2 * H), self.h, self.ph.data, self.hh)
                _fwd_row_before_zr(self.zx, self.hh, self.h, self.hh + 2 * H, self.zkeep, <float*>NULL,
                                   self.codes, self.ab, self.clip, H)
                fl_gemv_packed64(<int>H, <int>H, self.hh + 2 * H, self.pn.data, self.zx + 2 * H)
                _fwd_row_before_n(self.zx + 2 * H, self.zkeep, self.h, self.hnew, <float*>NULL, self.codes,
                                  self.ab, self.clip, H)
            _copy(self.h, self.hnew, H)
            if y != NULL:
                _copy(y + t * H, self.h, H)

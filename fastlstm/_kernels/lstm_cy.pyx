"""LSTM forward and backward in Cython: float32/float64 (fused), GIL released, BLAS from scipy.

Same contract as lstm_ref (read its docstrings). Layout time-major, C-contiguous, gate order i, f, g, o:
    x (T, B, I)  w_x (I, 4H)  w_h (H, 4H)  b (4H,)  p (3, H) | (0, H)  h0, c0 (B, H)  mask (T, B) | (0, 0)
One valid step (a_f, a_g, a_h the activations given by code; peepholes and clip optional):
    z = x_t @ w_x + h_prev @ w_h + b;   z_i += p_i * c_prev;  z_f += p_f * c_prev;  clip z_i, z_f, z_g
    i = a_f(z_i);  f = a_f(z_f) (input_forget: 1 - i);  g = a_g(z_g);  c = f * c_prev + i * g
    z_o += p_o * c;  clip z_o;  o = a_f(z_o);  h = o * a_h(c)
Backward, per step in reverse processing order (dh += dy[t] first; masked rows pass dh, dc through):
    dz_o = dh * a_h(c) * a_f'(z_o);  dc_t = dc + dh * o * a_h'(c) + p_o * dz_o
    dz_i = dc_t * g * a_f'(z_i);  dz_f = dc_t * c_prev * a_f'(z_f);  dz_g = dc_t * i * a_g'(z_g)
    dc_prev = dc_t * f + p_i * dz_i + p_f * dz_f;   dh_prev = dz @ w_h^T
Compute shape: one GEMM (T*B, I) @ (I, 4H) into z_ws (pre-filled with b; float32 on packed tiles: the tiles
start from b instead), per step one (B, H) @ (H, 4H) product into z_ws[t] and one fused gate pass per row.
Backward: per step the gate pass and dh_prev = dz @ w_h^T; at the end dx as one GEMM over all T*B rows and
[dw_x; dw_h] as one GEMM [x, h_prev]^T @ dz (one pass over dz; [x, h_prev] copied chunk by chunk into a scratch).
The per-step products go through _blas.matmul_acc: a GEMV when B == 1; for float32 and 1 < B < 320 a
register-tile kernel on w_h (w_h^T in backward) packed once per call, or kept across calls by the caller's
_blas.WeightPacks (`packs`); otherwise BLAS gemm. With those tiles (1 < B < 320) the backward computes dx step by
step as well (dx[t] = dz_t @ w_x^T while dz_t is in cache), and so does the forward for the input product when
w_x fits in 2 MiB (_input_rows; inference then reuses one (B, 4H) slot of z_ws). A batch-1 float32 inference with
the default gate pass (T >= 8) instead packs w_h by units (16 units of the four gates per panel) and runs
fl_lstm_units_step, which overlaps each panel's gate pass with the next panel's product (software pipelining;
same arithmetic bit for bit); with threads > 1 and H >= 96, fl_lstm_units_forward shares each step's panels among
OpenMP threads (a barrier per step). Inference also takes batch-first arrays (batch_major: x, z_ws, y as
(B, T, .)): the steps read and write their rows with a stride, so a batch-first caller needs no transposed copies.

Two gate passes: the default activations (sigmoid, tanh, tanh) without peepholes, clip or input_forget
take one fused pass per row (float32 with AVX2: fl_lstm_fwd_row / fl_lstm_bwd_row in C, else a loop that gcc
vectorises); anything else takes the general pass, which works on
CH-column chunks in stack buffers and switches on the activation codes once per chunk.
Running state: h_prev is y_out[t_prev] (or h0); c lives in cs_out[t] when training, else in cT_out,
updated in place. Backward keeps dh, dc in dh0_out, dc0_out. Apart from the packed weights and the
backward's two weight-gradient scratches (rows of [x, h_prev]; the (I + H, 4H) sums) nothing is allocated.
"""
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from cython cimport floating

from fastlstm._kernels._act cimport (SIGMOID, TANH, apply_act, apply_dact, clip_grad, clip_inplace,
                                     sigmoid_fast, tanh_fast)
from fastlstm._kernels._steps cimport _add, _copy, _step
from fastlstm._kernels._vecact cimport FL_VECACT
from fastlstm._kernels._blas cimport (FL_OPENMP, FL_PACKED_GEMM, GEMV_MAX_ROWS, NO_TRANS, PACKED_MAX_ROWS,
                                      PACK_PANELS16, PACK_UNITS, ROWVEC_MIN_USES, TRANS, Packed64, Stepper,
                                      WeightPacks, fl_free, fl_gemv_packed64, gemm, kernel_team, matmul_acc,
                                      matmul_bias, pack_as, pack_kind, pack_weights)

cdef extern from *:
    """
    #include <string.h>

    /* y (N) += x (K) @ W (fl_gemv_packed64's panels) with the panels shared among nt threads (OpenMP; else one
       thread), each share swept last to first when `back` */
    static void fl_gemv_packed64_threads(int nt, int K, int N, const float *x, const float *Wp, float *y, int back) {
        const int np = (N + 63) / 64;
        (void)nt;
        #ifdef _OPENMP
        #pragma omp parallel num_threads(nt) if (nt > 1)
        #endif
        {
            const int tid = fl_thread_num(), n = fl_num_threads();
            fl_gemv_packed64_panels(K, N, x, Wp, y, np * tid / n, np * (tid + 1) / n, back);
        }
    }

    #if FL_VECACT && FL_PACKED_GEMM
    /* One batch-1 inference step with the default activations over W (K x 4H) packed by fl_pack_units
       (panel q: units 16q..16q+15 of the gates i, f, g, o; 16 columns each):
           z = zx + a @ W;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g);  c = f c_prev + i g;  h = o tanh(c)
       The step is bound by W streaming from L2; the gate pass is a chain of dependent divisions and polynomials.
       Software pipelining overlaps them: the gate pass of a panel's 16 units runs in stages spread between the
       eighths of the next panel's product (the out-of-order window alone, about 256 instructions, cannot reach
       across a whole panel). The arithmetic is the same as _fwd_row_fast's, bit for bit. Panels run last to
       first when `back` (alternate it per step: the new sweep starts on the panel still in L1).
       Only panels q0 <= q < q1 (their units; all of them: 0, ceil(H / 16)).
       h_out must not alias a; c_out may be c_prev. */
    static void fl_lstm_units_step(int K, const float *a, const float *Wu, const float *zx, const float *c_prev,
                                   float *c_out, float *h_out, int H, int back, int q0, int q1) {
        int nq = q1 - q0, pu0 = -1;
        __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), m0 = lane, m1 = lane;
        float pend[64] __attribute__((aligned(32)));  /* the previous panel: z, then gates, per 8 units */
        for (int qq = 0; qq <= nq; qq++) {
            int has = qq < nq, q = q0 + (back ? nq - 1 - qq : qq), u0 = 16 * q, nu = H - u0 < 16 ? H - u0 : 16;
            __m256 c[8];
            const float *w = has ? Wu + (size_t)q * K * 64 : Wu;     /* (q is out of range in the drain pass) */
            __m256i n0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nu), lane);
            __m256i n1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nu - 8), lane);
            for (int v = 0; v < 8; v++) c[v] = _mm256_setzero_ps();
            if (has) {      /* c = zx for the panel's units: i | f | g | o, 16 each (8 per vector) */
                for (int v = 0; v < 8; v++) {
                    const float *zq = zx + (size_t)(v / 2) * H + u0 + 8 * (v % 2);
                    c[v] = nu == 16 ? _mm256_loadu_ps(zq) : _mm256_maskload_ps(zq, v % 2 ? n1 : n0);
                }
            }
            for (int s = 0; s < 8; s++) {
                if (has)    /* eighth s of the product: the rows s K / 8 <= k < (s + 1) K / 8 */
                    fl_rows64(s * K / 8, (s + 1) * K / 8, a, w, 64, 1, c);
                if (pu0 < 0)
                    continue;
                /* stage s of the previous panel's gate pass (pend: z_i, z_f, z_g, z_o, 16 each) */
                switch (s) {
                    case 0: case 1: case 3: {       /* i, f, o = sigmoid */
                        int g = s == 3 ? 48 : 16 * s;
                        _mm256_store_ps(pend + g, fl_sigmoid8(_mm256_load_ps(pend + g)));
                        _mm256_store_ps(pend + g + 8, fl_sigmoid8(_mm256_load_ps(pend + g + 8)));
                        break;
                    }
                    case 2:                         /* g = tanh */
                        _mm256_store_ps(pend + 32, fl_tanh8(_mm256_load_ps(pend + 32)));
                        _mm256_store_ps(pend + 40, fl_tanh8(_mm256_load_ps(pend + 40)));
                        break;
                    case 4: {                       /* c = f c_prev + i g  (into the f slots and c_out) */
                        __m256 cp0 = _mm256_maskload_ps(c_prev + pu0, m0), cp1 = _mm256_maskload_ps(c_prev + pu0 + 8, m1);
                        __m256 cn0 = _mm256_add_ps(_mm256_mul_ps(_mm256_load_ps(pend + 16), cp0),
                                                   _mm256_mul_ps(_mm256_load_ps(pend), _mm256_load_ps(pend + 32)));
                        __m256 cn1 = _mm256_add_ps(_mm256_mul_ps(_mm256_load_ps(pend + 24), cp1),
                                                   _mm256_mul_ps(_mm256_load_ps(pend + 8), _mm256_load_ps(pend + 40)));
                        _mm256_maskstore_ps(c_out + pu0, m0, cn0);
                        _mm256_maskstore_ps(c_out + pu0 + 8, m1, cn1);
                        _mm256_store_ps(pend + 16, cn0);
                        _mm256_store_ps(pend + 24, cn1);
                        break;
                    }
                    case 5:                         /* tanh(c) into the g slots */
                        _mm256_store_ps(pend + 32, fl_tanh8(_mm256_load_ps(pend + 16)));
                        _mm256_store_ps(pend + 40, fl_tanh8(_mm256_load_ps(pend + 24)));
                        break;
                    case 6:                         /* h = o tanh(c) */
                        _mm256_maskstore_ps(h_out + pu0, m0, _mm256_mul_ps(_mm256_load_ps(pend + 48), _mm256_load_ps(pend + 32)));
                        _mm256_maskstore_ps(h_out + pu0 + 8, m1, _mm256_mul_ps(_mm256_load_ps(pend + 56), _mm256_load_ps(pend + 40)));
                        break;
                    default:
                        break;
                }
            }
            if (has) {
                for (int v = 0; v < 8; v++) _mm256_store_ps(pend + 8 * v, c[v]);
                pu0 = u0;
                m0 = n0;
                m1 = n1;
            }
        }
    }

    /* The batch-1 inference steps (fl_lstm_units_step over all T steps) on `nt` threads (OpenMP; one thread
       without it): first z[r] = b + x[r] @ W_x for the T rows (a share of the rows each, when wx_packed; else z
       holds them already), then per step each thread runs its share of the panels and waits for the others at a
       barrier (the next step needs all of h). Same arithmetic as one thread, bit for bit. c: c0 in, c_T out. */
    static void fl_lstm_units_forward(int nt, int T, int I, int H, const float *x, const float *wx_packed,
                                      const float *b, const float *Wu, const unsigned char *mask, int reverse,
                                      const float *h0, float *z, float *y, float *c) {
        const int G = 4 * H, nq = (H + 15) / 16;
        (void)nt;
        #ifdef _OPENMP
        #pragma omp parallel num_threads(nt) if (nt > 1)
        #endif
        {
            const int tid = fl_thread_num(), n = fl_num_threads();
            int r0 = T * tid / n, r1 = T * (tid + 1) / n, q0 = nq * tid / n, q1 = nq * (tid + 1) / n;
            int u0 = 16 * q0, u1 = 16 * q1 < H ? 16 * q1 : H;
            const float *h_prev = h0;
            if (wx_packed != NULL && r1 > r0)
                fl_gemm_packed_bias(r1 - r0, G, I, x + (size_t)r0 * I, I, wx_packed, z + (size_t)r0 * G, G, b);
            fl_barrier();
            for (int k = 0; k < T; k++) {
                int t = reverse ? T - 1 - k : k;
                float *yt = y + (size_t)t * H;
                if (mask == NULL || mask[t] != 0)
                    fl_lstm_units_step(H, h_prev, Wu, z + (size_t)t * G, c, c, yt, H, k & 1, q0, q1);
                else if (u1 > u0)       /* a masked step keeps the state */
                    memcpy(yt + u0, h_prev + u0, (size_t)(u1 - u0) * sizeof(float));
                h_prev = yt;
                fl_barrier();
            }
        }
    }
    #else
    static void fl_lstm_units_step(int K, const float *a, const float *Wu, const float *zx, const float *c_prev,
                                   float *c_out, float *h_out, int H, int back, int q0, int q1) {
        (void)K; (void)a; (void)Wu; (void)zx; (void)c_prev; (void)c_out; (void)h_out; (void)H; (void)back;
        (void)q0; (void)q1;
    }
    static void fl_lstm_units_forward(int nt, int T, int I, int H, const float *x, const float *wx_packed,
                                      const float *b, const float *Wu, const unsigned char *mask, int reverse,
                                      const float *h0, float *z, float *y, float *c) {
        (void)nt; (void)T; (void)I; (void)H; (void)x; (void)wx_packed; (void)b; (void)Wu; (void)mask;
        (void)reverse; (void)h0; (void)z; (void)y; (void)c;
    }
    #endif

    #if FL_VECACT
    #define FL_LD(p, m, full) ((full) ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m))
    #define FL_ST(p, m, full, v) do { if (full) _mm256_storeu_ps(p, v); else _mm256_maskstore_ps(p, m, v); } while (0)

    /* The default forward gate pass of one batch row in float32, 8 units per vector (the last one masked), the
       same arithmetic as _fwd_row_fast's scalar loop bit for bit. Per 64 units, phase 1 computes the four gates
       (into `gates`, or a stack buffer when NULL) and phase 2 c = f c_prev + i g, h = o tanh(c): split this way,
       each phase's dependency chains are short enough for the out-of-order window to overlap several vectors
       (22 ns per 8 units against 25 ns as one loop, C microbenchmark). c_out may be c_prev. */
    static void fl_lstm_fwd_row(const float *z, const float *c_prev, float *c_out, float *h_out, float *gates, int H) {
        float buf[4 * 64] __attribute__((aligned(32)));
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (int j0 = 0; j0 < H; j0 += 64) {
            int n = H - j0 < 64 ? H - j0 : 64;
            float *gi = gates ? gates + j0 : buf, *gf = gates ? gates + H + j0 : buf + 64;
            float *gg = gates ? gates + 2 * H + j0 : buf + 128, *go = gates ? gates + 3 * H + j0 : buf + 192;
            const float *zi = z + j0, *zf = z + H + j0, *zg = z + 2 * H + j0, *zo = z + 3 * H + j0;
            for (int j = 0; j < n; j += 8) {        /* i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g) */
                int full = n - j >= 8;
                __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lane);
                FL_ST(gi + j, m, full, fl_sigmoid8(FL_LD(zi + j, m, full)));
                FL_ST(gf + j, m, full, fl_sigmoid8(FL_LD(zf + j, m, full)));
                FL_ST(gg + j, m, full, fl_tanh8(FL_LD(zg + j, m, full)));
                FL_ST(go + j, m, full, fl_sigmoid8(FL_LD(zo + j, m, full)));
            }
            for (int j = 0; j < n; j += 8) {        /* c = f c_prev + i g;  h = o tanh(c) */
                int full = n - j >= 8;
                __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), lane);
                __m256 c = _mm256_add_ps(_mm256_mul_ps(FL_LD(gf + j, m, full), FL_LD(c_prev + j0 + j, m, full)),
                                         _mm256_mul_ps(FL_LD(gi + j, m, full), FL_LD(gg + j, m, full)));
                FL_ST(c_out + j0 + j, m, full, c);
                FL_ST(h_out + j0 + j, m, full, _mm256_mul_ps(FL_LD(go + j, m, full), fl_tanh8(c)));
            }
        }
    }

    /* The default backward gate pass of one valid batch row in float32 (_bwd_row_fast's arithmetic, bit for bit):
       dz from the stored gates and c, dc updated in place, dh zeroed, db += dz. */
    static void fl_lstm_bwd_row(const float *gates, const float *c, const float *c_prev, float *dh, float *dc,
                                float *dz, float *db, int H) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256 one = _mm256_set1_ps(1.0f);
        for (int j = 0; j < H; j += 8) {
            int full = H - j >= 8;
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(H - j), lane);
            __m256 i = FL_LD(gates + j, m, full), f = FL_LD(gates + H + j, m, full);
            __m256 g = FL_LD(gates + 2 * H + j, m, full), o = FL_LD(gates + 3 * H + j, m, full);
            __m256 d = FL_LD(dh + j, m, full), ac = fl_tanh8(FL_LD(c + j, m, full));
            /* h = o tanh(c):  dz_o = dh tanh(c) o (1 - o);  dc_t = dc + dh o (1 - tanh(c)^2) */
            __m256 dzo = _mm256_mul_ps(_mm256_mul_ps(d, ac), _mm256_mul_ps(o, _mm256_sub_ps(one, o)));
            __m256 dct = _mm256_add_ps(FL_LD(dc + j, m, full), _mm256_mul_ps(_mm256_mul_ps(d, o),
                                                                            _mm256_sub_ps(one, _mm256_mul_ps(ac, ac))));
            /* c = f c_prev + i g */
            __m256 dzi = _mm256_mul_ps(_mm256_mul_ps(dct, g), _mm256_mul_ps(i, _mm256_sub_ps(one, i)));
            __m256 dzf = _mm256_mul_ps(_mm256_mul_ps(dct, FL_LD(c_prev + j, m, full)),
                                       _mm256_mul_ps(f, _mm256_sub_ps(one, f)));
            __m256 dzg = _mm256_mul_ps(_mm256_mul_ps(dct, i), _mm256_sub_ps(one, _mm256_mul_ps(g, g)));
            FL_ST(dc + j, m, full, _mm256_mul_ps(dct, f));
            FL_ST(dh + j, m, full, _mm256_setzero_ps());
            FL_ST(dz + j, m, full, dzi);
            FL_ST(dz + H + j, m, full, dzf);
            FL_ST(dz + 2 * H + j, m, full, dzg);
            FL_ST(dz + 3 * H + j, m, full, dzo);
            FL_ST(db + j, m, full, _mm256_add_ps(FL_LD(db + j, m, full), dzi));
            FL_ST(db + H + j, m, full, _mm256_add_ps(FL_LD(db + H + j, m, full), dzf));
            FL_ST(db + 2 * H + j, m, full, _mm256_add_ps(FL_LD(db + 2 * H + j, m, full), dzg));
            FL_ST(db + 3 * H + j, m, full, _mm256_add_ps(FL_LD(db + 3 * H + j, m, full), dzo));
        }
    }
    #undef FL_LD
    #undef FL_ST
    #else
    static void fl_lstm_fwd_row(const float *z, const float *c_prev, float *c_out, float *h_out, float *gates, int H) {
        (void)z; (void)c_prev; (void)c_out; (void)h_out; (void)gates; (void)H;
    }
    static void fl_lstm_bwd_row(const float *gates, const float *c, const float *c_prev, float *dh, float *dc,
                                float *dz, float *db, int H) {
        (void)gates; (void)c; (void)c_prev; (void)dh; (void)dc; (void)dz; (void)db; (void)H;
    }
    #endif
    """
    void fl_lstm_units_step(int K, const float* a, const float* Wu, const float* zx, const float* c_prev,
                            float* c_out, float* h_out, int H, int back, int q0, int q1) noexcept nogil
    void fl_gemv_packed64_threads(int nt, int K, int N, const float* x, const float* Wp, float* y,
                                  int back) noexcept nogil
    void fl_lstm_units_forward(int nt, int T, int I, int H, const float* x, const float* wx_packed, const float* b,
                               const float* Wu, const unsigned char* mask, int reverse, const float* h0, float* z,
                               float* y, float* c) noexcept nogil
    void fl_lstm_fwd_row(const float* z, const float* c_prev, float* c_out, float* h_out, float* gates,
                         int H) noexcept nogil
    void fl_lstm_bwd_row(const float* gates, const float* c, const float* c_prev, float* dh, float* dc, float* dz,
                         float* db, int H) noexcept nogil

cdef enum:
    CH = 64          # columns per chunk in the gate passes (their stack buffers)
    # batch-1 unit steps on several threads from this many units on: below, the barrier per step (about 0.4 us
    # on this 2-core VM) costs more than the halved product saves (C microbenchmark, 2 threads, us per step:
    # H = 64: 0.8 -> 1.0, H = 96: 2.2 -> 1.5, H = 128: 2.8-3.0 -> 1.7, H = 512: 56 -> 28)
    UNITS_THREADS_MIN_H = 96
    # LSTMStepper steps on several threads from this many floats of packed [w_x; w_h] on (see _advance)
    STEPPER_THREADS_MIN_FLOATS = 1 << 19
    WG_CHUNK_ROWS = 512     # rows per chunk of the merged weight-gradient GEMM (_weight_grads_merged)
    STEP_INPUT_MAX_FLOATS = 1 << 19     # w_x up to 2 MiB: the input product step by step (_input_rows)

# the two thread thresholds above, readable from Python (tests); whether the module was built with OpenMP (else the
# threaded paths run on one thread)
THREAD_THRESHOLDS = {"units_min_h": UNITS_THREADS_MIN_H, "stepper_min_floats": STEPPER_THREADS_MIN_FLOATS}
OPENMP = bool(FL_OPENMP)


# ---------------------------------------------------------------------------------------------------------
# forward gate passes, one batch row each: z (4H,) holds the pre-activations of the row
# ---------------------------------------------------------------------------------------------------------

cdef void _fwd_row_fast(const floating* z, const floating* c_prev, floating* c_out, floating* h_out,
                        floating* gates, Py_ssize_t H) noexcept nogil:
    """Default activations; gates may be NULL (inference); c_out may be c_prev. float32 with AVX2: fl_lstm_fwd_row."""
    # Results go to stack buffers first: with only reads from the caller's pointers in the loop, gcc
    # vectorises it without run-time alias checks (there would be too many, and c_out == c_prev fails them).
    cdef floating ib[CH]
    cdef floating fb[CH]
    cdef floating gb[CH]
    cdef floating ob[CH]
    cdef floating cb[CH]
    cdef floating hb[CH]
    cdef const floating *zc
    cdef const floating *cp
    cdef floating c
    cdef Py_ssize_t ck, j0, j, n
    if floating is float:
        if FL_VECACT:
            fl_lstm_fwd_row(z, c_prev, c_out, h_out, gates, <int>H)
            return
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        zc = z + j0
        cp = c_prev + j0
        # i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g);  c = f * c_prev + i * g;  h = o * tanh(c)
        for j in range(n):
            ib[j] = sigmoid_fast(zc[j])
            fb[j] = sigmoid_fast(zc[H + j])
            gb[j] = tanh_fast(zc[2 * H + j])
            ob[j] = sigmoid_fast(zc[3 * H + j])
            c = fb[j] * cp[j] + ib[j] * gb[j]
            cb[j] = c
            hb[j] = ob[j] * tanh_fast(c)
        _copy(c_out + j0, cb, n)
        _copy(h_out + j0, hb, n)
        if gates != NULL:
            _copy(gates + j0, ib, n)
            _copy(gates + H + j0, fb, n)
            _copy(gates + 2 * H + j0, gb, n)
            _copy(gates + 3 * H + j0, ob, n)


cdef void _fwd_row_general(floating* z, const floating* c_prev, const floating* h_prev, floating* c_out,
                           floating* h_out, floating* gates, const floating* p, bint valid, const int* codes,
                           const double* ab, floating clip, bint input_forget, Py_ssize_t H) noexcept nogil:
    """Any activations, peepholes (p != NULL), clip (> 0), input_forget; gates may be NULL (inference).
    z is updated in place to the final pre-activations. A masked row (not valid) still computes its gates
    (the reference stores them) but keeps h_prev, c_prev. c_out may be c_prev."""
    cdef floating ai[CH]
    cdef floating af[CH]
    cdef floating ag[CH]
    cdef floating ao[CH]
    cdef floating cn[CH]
    cdef floating ah[CH]
    cdef floating *zi
    cdef floating *zf
    cdef floating *zg
    cdef floating *zo
    cdef const floating *cp
    cdef Py_ssize_t ck, j0, j, n
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        zi = z + j0
        zf = z + H + j0
        zg = z + 2 * H + j0
        zo = z + 3 * H + j0
        cp = c_prev + j0
        if p != NULL:
            # z_i += p_i * c_prev;  z_f += p_f * c_prev
            for j in range(n):
                zi[j] += p[j0 + j] * cp[j]
                zf[j] += p[H + j0 + j] * cp[j]
        if clip > 0:
            clip_inplace(zi, n, clip)
            clip_inplace(zf, n, clip)
            clip_inplace(zg, n, clip)
        apply_act(codes[0], ab[0], ab[1], zi, ai, n)
        if input_forget:
            for j in range(n):
                af[j] = <floating>1 - ai[j]
        else:
            apply_act(codes[0], ab[0], ab[1], zf, af, n)
        apply_act(codes[1], ab[2], ab[3], zg, ag, n)
        # c = f * c_prev + i * g
        for j in range(n):
            cn[j] = af[j] * cp[j] + ai[j] * ag[j]
        if p != NULL:
            # z_o += p_o * c   (the new cell)
            for j in range(n):
                zo[j] += p[2 * H + j0 + j] * cn[j]
        if clip > 0:
            clip_inplace(zo, n, clip)
        apply_act(codes[0], ab[0], ab[1], zo, ao, n)
        if gates != NULL:
            _copy(gates + j0, ai, n)
            _copy(gates + H + j0, af, n)
            _copy(gates + 2 * H + j0, ag, n)
            _copy(gates + 3 * H + j0, ao, n)
        if valid:
            # h = o * a_h(c)
            apply_act(codes[2], ab[4], ab[5], cn, ah, n)
            for j in range(n):
                h_out[j0 + j] = ao[j] * ah[j]
                c_out[j0 + j] = cn[j]
        else:
            _copy(h_out + j0, h_prev + j0, n)
            if c_out != c_prev:
                _copy(c_out + j0, cp, n)


cdef inline bint _default_gates(const int* codes, bint peepholes, double clip, bint input_forget) noexcept nogil:
    """sigmoid, tanh, tanh without peepholes, clip or input_forget: the fused gate passes"""
    return (codes[0] == SIGMOID and codes[1] == TANH and codes[2] == TANH and not peepholes and clip <= 0
            and not input_forget)


cdef inline bint _unit_steps(Py_ssize_t B, Py_ssize_t T, bint fast, bint training) noexcept nogil:
    """float32 steps through fl_lstm_units_step: batch 1, inference, default gates, enough steps to repay the
    packing"""
    return FL_VECACT and FL_PACKED_GEMM and B == 1 and fast and not training and T >= ROWVEC_MIN_USES


cdef inline Py_ssize_t _input_rows(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H) noexcept nogil:
    """Rows per input product: T*B (one GEMM for all steps), or B (one per step) where the batch takes packed
    tiles, T*B rows would go to BLAS and w_x (I x 4H) is at most STEP_INPUT_MAX_FLOATS (it is then read from
    cache at every step): per step the tiles start from the bias (no pass filling z_ws with it), z_ws[t] stays
    in cache between the two products and the gate pass, and the tiles keep 94 GF/s where OpenBLAS reaches 89 at
    K = 128 (float32 forward against one OpenBLAS GEMM over T*B rows after the fill: 3% faster at B = 32, 64
    and I = H = 128, 256; 1.3% at I = 512, H = 256; 2-10% slower at I = H = 512, with a 4 MiB w_x)."""
    return (B if 1 < B and I * 4 * H <= STEP_INPUT_MAX_FLOATS and T * B >= PACKED_MAX_ROWS
            and pack_kind(B, T) == PACK_PANELS16 else T * B)


cdef void _lstm_forward(const floating* x, const floating* w_x, const floating* w_h, const floating* b,
                        const floating* p, const floating* h0, const floating* c0, const unsigned char* mask,
                        const int* codes, const double* ab, floating clip, bint input_forget, bint reverse,
                        floating* z_ws, floating* y, floating* hT, floating* cT, floating* gates_out,
                        floating* cs_out, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                        const float* wh_kept, const float* wx_kept, bint batch_major, int threads) noexcept nogil:
    """wh_kept, wx_kept: w_h and w_x packed as this call would pack them (by units when _unit_steps applies, else
    pack_weights' layout for B rows, and for T*B rows past GEMV_MAX_ROWS), copies a WeightPacks keeps (see
    lstm_forward); or NULL: packed here when that pays, and freed on return. batch_major: x, z_ws and y are
    (B, T, .) instead of (T, B, .) (inference only): the steps read and write their rows with a stride.
    threads: at most this many threads (the batch-1 unit steps with H >= UNITS_THREADS_MIN_H; else one)."""
    cdef Py_ssize_t G = 4 * H, r, k, t, bi
    # element strides between steps (s*t) and between the batch rows of one step (s*b)
    cdef Py_ssize_t sxt = I if batch_major else B * I, sxb = T * I if batch_major else I
    cdef Py_ssize_t szt = G if batch_major else B * G, szb = T * G if batch_major else G
    cdef Py_ssize_t syt = H if batch_major else B * H, syb = T * H if batch_major else H
    cdef Py_ssize_t ldh = H             # row stride of h_prev: h0, then y's
    cdef bint training = gates_out != NULL, valid
    cdef bint fast = _default_gates(codes, p != NULL, clip, input_forget)
    cdef const floating *h_prev = h0
    cdef const floating *c_prev = c0
    cdef floating *zt
    cdef floating *yt
    cdef floating *ct
    cdef floating *gt = NULL
    # w_h packed once for the per-step products (float32, small batches; NULL otherwise): for a batch-1
    # inference with the default gate pass in unit-interleaved panels (fl_lstm_units_step), else by pack_weights
    cdef bint units = floating is float and _unit_steps(B, T, fast, training)
    cdef float *w_own = NULL
    cdef float *wx_own = NULL
    cdef const float *w_packed = wh_kept
    if w_packed == NULL:
        if units:
            w_own = pack_as(PACK_UNITS, <int>H, <int>H, <const float*>w_h, <int>G, False)
            units = w_own != NULL
        if not units:
            w_own = pack_weights(<int>H, <int>G, w_h, <int>G, False, B, T)
        w_packed = w_own
    # the input product: one GEMM over all T*B rows, or (_step_input) per step on packed tiles like the
    # recurrent one: z_ws[t] = b + x_t @ w_x just before the step, while z_ws[t] is in cache
    cdef Py_ssize_t x_rows = _input_rows(T, B, I, H)
    cdef bint step_input = I > 0 and x_rows == B
    cdef const float *wx_packed = wx_kept
    if I > 0 and wx_packed == NULL and x_rows > GEMV_MAX_ROWS:
        wx_own = pack_weights(<int>I, <int>G, w_x, <int>G, False, x_rows, T if step_input else 2)
        wx_packed = wx_own
    step_input = step_input and wx_packed != NULL
    # the batch-1 unit steps on several threads: fl_lstm_units_forward runs them all (below), and the input product
    # too, by row shares, when w_x is packed for it
    cdef bint shared = units and threads > 1 and H >= UNITS_THREADS_MIN_H
    cdef bint shared_input = shared and I > 0 and wx_packed != NULL
    if I == 0:
        # projected input: z_ws holds x @ w_x already;  z_ws += b
        for r in range(T * B):
            _add(z_ws + r * G, b, G)
    elif not step_input and not shared_input:
        # z_ws = b + x @ w_x   (all T*B rows at once; few rows, as in a one-request latency call, go through the
        # packed tiles, which unlike a threaded gemm never wait on BLAS worker threads)
        matmul_bias(<int>(T * B), <int>G, <int>I, x, <int>I, w_x, <int>G, False, wx_packed, b, z_ws, <int>G)
    if not training:
        _copy(cT, c0, B * H)          # the running cell state, updated in place
        c_prev = cT
    if floating is float:
        if shared:
            fl_lstm_units_forward(kernel_team(threads), <int>T, <int>I, <int>H, x,
                                  wx_packed if shared_input else NULL, b, w_packed, mask, reverse, h0, z_ws, y, cT)
            h_prev = y + _step(T - 1, T, reverse) * H
    # per-step input product: z_ws[t] goes into one (B, 4H) slot, reused every step (it stays in cache)
    cdef bint one_slot = step_input and not training
    cdef Py_ssize_t zr = G if one_slot else szb
    for k in range(0 if shared else T):           # (shared: the steps ran above)
        t = _step(k, T, reverse)
        zt = z_ws if one_slot else z_ws + t * szt
        yt = y + t * syt
        if training:
            ct = cs_out + t * B * H
            gt = gates_out + t * B * G
        else:
            ct = cT
        if floating is float:
            if units:
                if mask == NULL or mask[t] != 0:
                    fl_lstm_units_step(<int>H, h_prev, w_packed, zt, c_prev, ct, yt, <int>H, k & 1, 0,
                                       <int>((H + 15) // 16))
                else:
                    _copy(yt, h_prev, H)          # a masked step keeps the state
                h_prev = yt
                c_prev = ct
                continue
        if step_input:
            # z_ws[t] = b + x_t @ w_x
            matmul_bias(<int>B, <int>G, <int>I, x + t * sxt, <int>sxb, w_x, <int>G, False, wx_packed, b, zt, <int>zr)
        # z_ws[t] += h_prev @ w_h
        matmul_acc(<int>B, <int>G, <int>H, h_prev, <int>ldh, w_h, <int>G, False, w_packed, zt, <int>zr)
        for bi in range(B):
            valid = mask == NULL or mask[t * B + bi] != 0
            if fast and valid:
                _fwd_row_fast(zt + bi * zr, c_prev + bi * H, ct + bi * H, yt + bi * syb,
                              gt + bi * G if training else NULL, H)
            elif not valid and not training:
                # a masked row keeps its state (c is already in place)
                _copy(yt + bi * syb, h_prev + bi * ldh, H)
            else:
                _fwd_row_general(zt + bi * zr, c_prev + bi * H, h_prev + bi * ldh, ct + bi * H, yt + bi * syb,
                                 gt + bi * G if training else NULL, p, valid, codes, ab, clip, input_forget, H)
        h_prev = yt
        ldh = syb
        c_prev = ct
    for bi in range(B):
        _copy(hT + bi * H, h_prev + bi * ldh, H)
    if training:
        _copy(cT, c_prev, B * H)
    fl_free(w_own)
    fl_free(wx_own)


def lstm_forward(const floating[:, :, ::1] x, const floating[:, ::1] w_x, const floating[:, ::1] w_h,
                 const floating[::1] b, const floating[:, ::1] p, const floating[:, ::1] h0,
                 const floating[:, ::1] c0, const unsigned char[:, ::1] mask, const int[::1] act_codes,
                 const double[:, ::1] act_ab, double clip, bint input_forget, bint reverse,
                 floating[:, :, ::1] z_ws, floating[:, :, ::1] y_out, floating[:, ::1] hT_out,
                 floating[:, ::1] cT_out, floating[:, :, ::1] gates_out, floating[:, :, ::1] cs_out,
                 WeightPacks packs=None, bint batch_major=False, int threads=1):
    """LSTM over T steps. Same contract as lstm_ref.lstm_forward.
    IN   x (T, B, I)  w_x (I, 4H)  w_h (H, 4H)  b (4H,)  p (3, H) | (0, H)  h0, c0 (B, H)  mask (T, B) | (0, 0)
    SCRATCH z_ws (T, B, 4H)
    OUT  y_out (T, B, H)  hT_out, cT_out (B, H);  gates_out (T, B, 4H), cs_out (T, B, H) | (0, 0, 0)
    packs: a _blas.WeightPacks that keeps the packed w_h and w_x across calls with these same weight arrays
    (their values unchanged), or None: packed per call
    batch_major: x (B, T, I), z_ws (B, T, 4H) and y_out (B, T, H) instead (inference only)
    threads: at most this many threads (batch-1 float32 inference with the default gates and at least
    UNITS_THREADS_MIN_H units; else one)
    """
    cdef Py_ssize_t T = x.shape[1 if batch_major else 0], B = x.shape[0 if batch_major else 1]
    cdef Py_ssize_t I = x.shape[2], H = w_h.shape[0]
    cdef bint training = gates_out.shape[0] > 0
    if batch_major and training:
        raise ValueError("batch_major is for inference only: the training arrays and the backward are time-major")
    cdef const floating *p_ptr = &p[0, 0] if p.shape[0] > 0 else NULL
    cdef const unsigned char *m_ptr = &mask[0, 0] if mask.shape[0] > 0 else NULL
    cdef floating *g_ptr = &gates_out[0, 0, 0] if training else NULL
    cdef floating *cs_ptr = &cs_out[0, 0, 0] if training else NULL
    cdef const float *wh_kept = NULL
    cdef const float *wx_kept = NULL
    cdef Py_ssize_t x_rows
    if floating is float:
        if packs is not None:
            if _unit_steps(B, T, _default_gates(&act_codes[0], p_ptr != NULL, clip, input_forget), training):
                wh_kept = packs.units(&w_h[0, 0], <int>H, <int>H, 4, <int>(4 * H))
            else:
                wh_kept = packs.packed(&w_h[0, 0], <int>H, <int>(4 * H), <int>(4 * H), B, T)
            x_rows = _input_rows(T, B, I, H)
            if I > 0 and x_rows > GEMV_MAX_ROWS:
                wx_kept = packs.packed(&w_x[0, 0], <int>I, <int>(4 * H), <int>(4 * H), x_rows, T if x_rows == B else 2)
    with nogil:
        _lstm_forward(&x[0, 0, 0], &w_x[0, 0], &w_h[0, 0], &b[0], p_ptr, &h0[0, 0], &c0[0, 0], m_ptr,
                      &act_codes[0], &act_ab[0, 0], <floating>clip, input_forget, reverse, &z_ws[0, 0, 0],
                      &y_out[0, 0, 0], &hT_out[0, 0], &cT_out[0, 0], g_ptr, cs_ptr, T, B, I, H, wh_kept, wx_kept,
                      batch_major, max(1, threads))


# ---------------------------------------------------------------------------------------------------------
# backward gate passes, one valid batch row each: write dz (4H,), update dc in place, zero dh (the GEMM
# dh += dz @ w_h^T that follows fills it), accumulate db
# ---------------------------------------------------------------------------------------------------------

cdef void _bwd_row_fast(const floating* gates, const floating* c, const floating* c_prev, floating* dh,
                        floating* dc, floating* dz, floating* db, Py_ssize_t H) noexcept nogil:
    """Default activations, no peepholes / clip / input_forget. float32 with AVX2: fl_lstm_bwd_row."""
    cdef floating dzb[4][CH]              # stack buffers for the results (see _fwd_row_fast)
    cdef floating dcb[CH]
    cdef floating i, f, g, o, ac, d, dct, one = 1
    cdef const floating *gc
    cdef Py_ssize_t ck, j0, j, n, q
    if floating is float:
        if FL_VECACT:
            fl_lstm_bwd_row(gates, c, c_prev, dh, dc, dz, db, <int>H)
            return
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        gc = gates + j0
        for j in range(n):
            i = gc[j]
            f = gc[H + j]
            g = gc[2 * H + j]
            o = gc[3 * H + j]
            d = dh[j0 + j]
            ac = tanh_fast(c[j0 + j])
            # h = o * tanh(c):  dz_o = dh * tanh(c) * o (1 - o);  dc_t = dc + dh * o * (1 - tanh(c)^2)
            dzb[3][j] = d * ac * (o * (one - o))
            dct = dc[j0 + j] + d * o * (one - ac * ac)
            # c = f * c_prev + i * g
            dzb[0][j] = dct * g * (i * (one - i))
            dzb[1][j] = dct * c_prev[j0 + j] * (f * (one - f))
            dzb[2][j] = dct * i * (one - g * g)
            dcb[j] = dct * f
        _copy(dc + j0, dcb, n)
        memset(dh + j0, 0, n * sizeof(floating))
        for q in range(4):
            _copy(dz + q * H + j0, dzb[q], n)
            for j in range(n):
                db[q * H + j0 + j] += dzb[q][j]


cdef void _bwd_row_general(const floating* z, const floating* gates, const floating* c, const floating* c_prev,
                           floating* dh, floating* dc, floating* dz, floating* db, const floating* p,
                           floating* dp, const int* codes, const double* ab, floating clip, bint input_forget,
                           Py_ssize_t H) noexcept nogil:
    cdef floating ac[CH]
    cdef floating dah[CH]
    cdef floating dct[CH]
    cdef floating *dzi
    cdef floating *dzf
    cdef floating *dzg
    cdef floating *dzo
    cdef const floating *gi
    cdef const floating *gf
    cdef const floating *gg
    cdef const floating *go
    cdef const floating *cp
    cdef const floating *cc
    cdef Py_ssize_t ck, j0, j, n
    for ck in range((H + CH - 1) // CH):
        j0 = ck * CH
        n = H - j0 if H - j0 < CH else CH
        gi, gf, gg, go = gates + j0, gates + H + j0, gates + 2 * H + j0, gates + 3 * H + j0
        dzi, dzf, dzg, dzo = dz + j0, dz + H + j0, dz + 2 * H + j0, dz + 3 * H + j0
        cp = c_prev + j0
        cc = c + j0
        # h = o * a_h(c):  dz_o = dh * a_h(c) * a_f'(z_o);  dc_t = dc + dh * o * a_h'(c) (+ p_o * dz_o)
        apply_act(codes[2], ab[4], ab[5], cc, ac, n)
        apply_dact(codes[2], ab[4], ab[5], cc, ac, dah, n)
        apply_dact(codes[0], ab[0], ab[1], z + 3 * H + j0, go, dzo, n)
        for j in range(n):
            dzo[j] = dh[j0 + j] * ac[j] * dzo[j]
        if clip > 0:
            clip_grad(dzo, z + 3 * H + j0, n, clip)
        for j in range(n):
            dct[j] = dc[j0 + j] + dh[j0 + j] * go[j] * dah[j]
        if p != NULL:
            for j in range(n):
                dct[j] += dzo[j] * p[2 * H + j0 + j]
        # c = f * c_prev + i * g  (input_forget: f = 1 - i, so dz_f = 0 and di -= df)
        apply_dact(codes[0], ab[0], ab[1], z + j0, gi, dzi, n)
        apply_dact(codes[1], ab[2], ab[3], z + 2 * H + j0, gg, dzg, n)
        if input_forget:
            for j in range(n):
                dzi[j] = (dct[j] * gg[j] - dct[j] * cp[j]) * dzi[j]
                dzf[j] = 0
        else:
            apply_dact(codes[0], ab[0], ab[1], z + H + j0, gf, dzf, n)
            for j in range(n):
                dzi[j] = dct[j] * gg[j] * dzi[j]
                dzf[j] = dct[j] * cp[j] * dzf[j]
        for j in range(n):
            dzg[j] = dct[j] * gi[j] * dzg[j]
        if clip > 0:
            clip_grad(dzi, z + j0, n, clip)
            clip_grad(dzf, z + H + j0, n, clip)
            clip_grad(dzg, z + 2 * H + j0, n, clip)
        # dc_prev = dc_t * f (+ p_i * dz_i + p_f * dz_f);  dp += (dz_i c_prev, dz_f c_prev, dz_o c)
        for j in range(n):
            dc[j0 + j] = dct[j] * gf[j]
            dh[j0 + j] = 0
        if p != NULL:
            for j in range(n):
                dc[j0 + j] = dc[j0 + j] + dzi[j] * p[j0 + j]
                dc[j0 + j] = dc[j0 + j] + dzf[j] * p[H + j0 + j]
                dp[j0 + j] += dzi[j] * cp[j]
                dp[H + j0 + j] += dzf[j] * cp[j]
                dp[2 * H + j0 + j] += dzo[j] * cc[j]
    for j in range(4 * H):
        db[j] += dz[j]


cdef void _lstm_backward(const floating* x, const floating* w_x, const floating* w_h, const floating* p,
                         const floating* h0, const floating* c0, const unsigned char* mask, const int* codes,
                         const double* ab, floating clip, bint input_forget, bint reverse, const floating* z_ws,
                         const floating* gates, const floating* cs, const floating* y, const floating* dy,
                         floating* dz_ws, floating* dx, floating* dw_x, floating* dw_h, floating* db,
                         floating* dp, floating* dh, floating* dc, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                         Py_ssize_t H) noexcept nogil:
    """dh, dc hold dhT, dcT on entry and dh0, dc0 on return."""
    cdef Py_ssize_t G = 4 * H, k, t, bi, e, row
    cdef bint fast = (codes[0] == SIGMOID and codes[1] == TANH and codes[2] == TANH and p == NULL
                      and clip <= 0 and not input_forget)
    cdef const floating *c_prev
    cdef floating *dzt
    cdef float *w_packed
    cdef float *wx_packed = NULL
    if T == 0:
        return
    # w_h^T packed once for the per-step products (float32, small batches; NULL otherwise)
    w_packed = pack_weights(<int>G, <int>H, w_h, <int>G, True, B, T)
    # with packed tiles (1 < B < PACKED_MAX_ROWS) dx is computed step by step too, dx[t] = dz_t @ w_x^T while
    # dz_t is in cache (one GEMM over all T*B rows at the end reads dz back from memory: about 10% slower)
    if I > 0 and B > 1:
        wx_packed = pack_weights(<int>G, <int>I, w_x, <int>G, True, B, T)
    for k in range(T - 1, -1, -1):
        t = _step(k, T, reverse)
        c_prev = cs + _step(k - 1, T, reverse) * B * H if k > 0 else c0
        dzt = dz_ws + t * B * G
        # dh += dy[t]
        for e in range(B * H):
            dh[e] += dy[t * B * H + e]
        for bi in range(B):
            row = t * B + bi
            if mask != NULL and mask[row] == 0:
                memset(dzt + bi * G, 0, G * sizeof(floating))      # dh, dc pass through
            elif fast:
                _bwd_row_fast(gates + row * G, cs + row * H, c_prev + bi * H, dh + bi * H, dc + bi * H,
                              dzt + bi * G, db, H)
            else:
                _bwd_row_general(z_ws + row * G, gates + row * G, cs + row * H, c_prev + bi * H, dh + bi * H,
                                 dc + bi * H, dzt + bi * G, db, p, dp, codes, ab, clip, input_forget, H)
        # dh += dz_t @ w_h^T   (valid rows were zeroed: dh_prev = dz @ w_h^T; masked rows add dz = 0)
        matmul_acc(<int>B, <int>H, <int>G, dzt, <int>G, w_h, <int>G, True, w_packed, dh, <int>H)
        if wx_packed != NULL:
            # dx[t] = dz_t @ w_x^T
            memset(dx + t * B * I, 0, B * I * sizeof(floating))
            matmul_acc(<int>B, <int>I, <int>G, dzt, <int>G, w_x, <int>G, True, wx_packed, dx + t * B * I, <int>I)
    fl_free(w_packed)
    # dx = dz @ w_x^T   (none for a projected input, I == 0)
    if I > 0 and wx_packed == NULL:
        gemm(NO_TRANS, TRANS, <int>(T * B), <int>I, <int>G, <floating>1, dz_ws, <int>G, w_x, <int>G,
             <floating>0, dx, <int>I)
    fl_free(wx_packed)
    if not _weight_grads_merged(x, h0, y, dz_ws, dw_x, dw_h, reverse, T, B, I, H):
        _weight_grads(x, h0, y, dz_ws, dw_x, dw_h, reverse, T, B, I, H)


cdef void _weight_grads(const floating* x, const floating* h0, const floating* y, const floating* dz_ws,
                        floating* dw_x, floating* dw_h, bint reverse, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                        Py_ssize_t H) noexcept nogil:
    """dw_x += x^T @ dz, dw_h += H_prev^T @ dz over all T*B rows, H_prev[t] = y[t_prev] (h0 for the first
    processed step): in memory that is y shifted by one step, so h0 takes one (B, H) GEMM and the rest one
    GEMM over (T-1)*B rows."""
    cdef Py_ssize_t G = 4 * H, first = _step(0, T, reverse)
    # dw_x += x^T @ dz
    if I > 0:
        gemm(TRANS, NO_TRANS, <int>I, <int>G, <int>(T * B), <floating>1, x, <int>I, dz_ws, <int>G,
             <floating>1, dw_x, <int>G)
    # dw_h += h0^T @ dz[first]
    gemm(TRANS, NO_TRANS, <int>H, <int>G, <int>B, <floating>1, h0, <int>H, dz_ws + first * B * G, <int>G,
         <floating>1, dw_h, <int>G)
    if T > 1:
        if reverse:
            # dw_h += y[1:]^T @ dz[:-1]
            gemm(TRANS, NO_TRANS, <int>H, <int>G, <int>((T - 1) * B), <floating>1, y + B * H, <int>H, dz_ws,
                 <int>G, <floating>1, dw_h, <int>G)
        else:
            # dw_h += y[:-1]^T @ dz[1:]
            gemm(TRANS, NO_TRANS, <int>H, <int>G, <int>((T - 1) * B), <floating>1, y, <int>H, dz_ws + B * G,
                 <int>G, <floating>1, dw_h, <int>G)


cdef bint _weight_grads_merged(const floating* x, const floating* h0, const floating* y, const floating* dz_ws,
                               floating* dw_x, floating* dw_h, bint reverse, Py_ssize_t T, Py_ssize_t B,
                               Py_ssize_t I, Py_ssize_t H) noexcept nogil:
    """The same as _weight_grads as one GEMM [dw_x; dw_h] += [x, H_prev]^T @ dz, which reads dz once instead
    of twice: [x, H_prev] is copied chunk by chunk (about WG_CHUNK_ROWS rows, which stay in cache) into a
    scratch, the sums go to a scratch (I + H, 4H) added to dw_x, dw_h at the end. False (nothing done) when
    a scratch cannot be allocated."""
    cdef Py_ssize_t G = 4 * H, K = I + H, S = max(1, WG_CHUNK_ROWS // B), k0, k1, t, t_prev, bi, e
    cdef floating *xh = <floating*>malloc(S * B * K * sizeof(floating))
    cdef floating *acc = <floating*>malloc(K * G * sizeof(floating))
    cdef const floating *hp
    cdef floating *row
    if xh == NULL or acc == NULL:
        free(xh)
        free(acc)
        return False
    # chunks of S steps in memory order t; H_prev[t] = y[t -/+ 1], h0 for the first processed step
    k0 = 0
    while k0 < T:
        k1 = min(k0 + S, T)
        for t in range(k0, k1):
            t_prev = t + 1 if reverse else t - 1
            hp = h0 if t_prev < 0 or t_prev >= T else y + t_prev * B * H
            for bi in range(B):
                row = xh + ((t - k0) * B + bi) * K
                _copy(row, x + (t * B + bi) * I, I)
                _copy(row + I, hp + bi * H, H)
        # acc (+)= xh^T @ dz[k0:k1]
        gemm(TRANS, NO_TRANS, <int>K, <int>G, <int>((k1 - k0) * B), <floating>1, xh, <int>K,
             dz_ws + k0 * B * G, <int>G, <floating>(1 if k0 > 0 else 0), acc, <int>G)
        k0 = k1
    for e in range(I * G):
        dw_x[e] += acc[e]
    for e in range(H * G):
        dw_h[e] += acc[I * G + e]
    free(xh)
    free(acc)
    return True


def lstm_backward(const floating[:, :, ::1] x, const floating[:, ::1] w_x, const floating[:, ::1] w_h,
                  const floating[::1] b, const floating[:, ::1] p, const floating[:, ::1] h0,
                  const floating[:, ::1] c0, const unsigned char[:, ::1] mask, const int[::1] act_codes,
                  const double[:, ::1] act_ab, double clip, bint input_forget, bint reverse,
                  const floating[:, :, ::1] z_ws, const floating[:, :, ::1] gates, const floating[:, :, ::1] cs,
                  const floating[:, :, ::1] y, const floating[:, :, ::1] dy, const floating[:, ::1] dhT,
                  const floating[:, ::1] dcT, floating[:, :, ::1] dz_ws, floating[:, :, ::1] dx_out,
                  floating[:, ::1] dw_x_out, floating[:, ::1] dw_h_out, floating[::1] db_out,
                  floating[:, ::1] dp_out, floating[:, ::1] dh0_out, floating[:, ::1] dc0_out):
    """Backpropagation through time for lstm_forward. Same contract as lstm_ref.lstm_backward.
    IN   the forward's inputs;  z_ws, gates (T, B, 4H), cs, y, dy (T, B, H);  dhT, dcT (B, H)
    SCRATCH dz_ws (T, B, 4H)
    OUT  dx_out (T, B, I), dh0_out, dc0_out (B, H) overwritten;  dw_x_out (I, 4H), dw_h_out (H, 4H),
         db_out (4H,), dp_out (3, H) | (0, H) accumulated
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_h.shape[0]
    cdef const floating *p_ptr = &p[0, 0] if p.shape[0] > 0 else NULL
    cdef floating *dp_ptr = &dp_out[0, 0] if p.shape[0] > 0 else NULL
    cdef const unsigned char *m_ptr = &mask[0, 0] if mask.shape[0] > 0 else NULL
    with nogil:
        _copy(&dh0_out[0, 0], &dhT[0, 0], B * H)
        _copy(&dc0_out[0, 0], &dcT[0, 0], B * H)
        _lstm_backward(&x[0, 0, 0], &w_x[0, 0], &w_h[0, 0], p_ptr, &h0[0, 0], &c0[0, 0], m_ptr, &act_codes[0],
                       &act_ab[0, 0], <floating>clip, input_forget, reverse, &z_ws[0, 0, 0], &gates[0, 0, 0],
                       &cs[0, 0, 0], &y[0, 0, 0], &dy[0, 0, 0], &dz_ws[0, 0, 0], &dx_out[0, 0, 0],
                       &dw_x_out[0, 0], &dw_h_out[0, 0], &db_out[0], dp_ptr, &dh0_out[0, 0], &dc0_out[0, 0],
                       T, B, I, H)


# ---------------------------------------------------------------------------------------------------------
# batch-1 steps for streaming sessions
# ---------------------------------------------------------------------------------------------------------

cdef class LSTMStepper(Stepper):
    """Batch-1 float32 LSTM steps over weights packed once, for streaming sessions.

        z = b + [x_t, h] @ [w_x; w_h];  then the gate pass of lstm_forward (any activations, peepholes, clip,
        input_forget)

    `packed` is a _blas.Packed64 of the (I + H, 4H) matrix [w_x; w_h] (shareable between steppers); b (4H,),
    p (3, H) | (0, H), act_codes, act_ab as for lstm_forward. The state lives in h and c, float32 C-contiguous
    arrays of H values (shape (1, H)) owned by the caller and updated in place. The stepper keeps a reference
    to every array it reads, so its pointers stay valid; one stepper must not run in two threads at once.
    """
    cdef Packed64 packed
    cdef float *xh                      # the product's input row [x_t, h]
    cdef float *z                       # pre-activations (4H,)
    cdef const float *b
    cdef const float *p
    cdef float *c
    cdef int codes[3]
    cdef double ab[6]
    cdef float clip
    cdef bint input_forget, fast, back
    cdef object _keep

    def __cinit__(self, Packed64 packed not None, const float[::1] b not None, const float[:, ::1] p not None,
                  const int[::1] act_codes not None, const double[:, ::1] act_ab not None, double clip,
                  bint input_forget, float[:, ::1] h not None, float[:, ::1] c not None):
        cdef Py_ssize_t H = h.shape[1], G = 4 * H, j
        if h.shape[0] != 1 or c.shape[0] != 1 or c.shape[1] != H or b.shape[0] != G or packed.N != G \
                or packed.K <= H or p.shape[1] != H or p.shape[0] not in (0, 3) or act_codes.shape[0] < 3 \
                or act_ab.size < 6:
            raise ValueError(f"LSTMStepper: inconsistent shapes: packed ({packed.K}, {packed.N}), b {b.shape[0]}, "
                             f"p ({p.shape[0]}, {p.shape[1]}), h ({h.shape[0]}, {h.shape[1]}), "
                             f"c ({c.shape[0]}, {c.shape[1]})")
        self.packed = packed
        self.units, self.n_in = H, packed.K - H
        self.b = &b[0]
        self.p = &p[0, 0] if p.shape[0] > 0 else NULL
        self.h, self.c = &h[0, 0], &c[0, 0]
        for j in range(3):
            self.codes[j] = act_codes[j]
        for j in range(6):
            self.ab[j] = (&act_ab[0, 0])[j]
        self.clip = <float>clip
        self.input_forget = input_forget
        self.fast = (self.codes[0] == SIGMOID and self.codes[1] == TANH and self.codes[2] == TANH
                     and self.p == NULL and clip <= 0 and not input_forget)
        self._keep = (b.base, p.base, h.base, c.base)
        self.xh = <float*>malloc(packed.K * sizeof(float))
        self.z = <float*>malloc(G * sizeof(float))
        if self.xh == NULL or self.z == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.xh)
        free(self.z)

    cdef void _advance(self, const float* x, Py_ssize_t k, float* y) noexcept nogil:
        """k steps on the rows x (k, I); y (k, H) gets every h when not NULL. With threads > 1 and at least
        STEPPER_THREADS_MIN_FLOATS of weights, each step's product is shared among the threads (panel ranges;
        the same sums, bit for bit) and the gate pass follows on this thread."""
        cdef Py_ssize_t t, I = self.n_in, H = self.units
        cdef int K = self.packed.K, N = self.packed.N
        cdef bint shared = self.threads > 1 and <Py_ssize_t>K * N >= STEPPER_THREADS_MIN_FLOATS
        for t in range(k):
            _copy(self.xh, x + t * I, I)
            _copy(self.xh + I, self.h, H)
            _copy(self.z, self.b, 4 * H)
            if shared:
                self.back = not self.back     # (alternating sweeps, as fl_gemv_packed64)
                fl_gemv_packed64_threads(kernel_team(self.threads), K, N, self.xh, self.packed.data, self.z,
                                         self.back)
            else:
                fl_gemv_packed64(K, N, self.xh, self.packed.data, self.z)
            if self.fast:
                _fwd_row_fast(self.z, self.c, self.c, self.h, <float*>NULL, H)
            else:
                # (h_prev is only read for a masked row; every row here is valid)
                _fwd_row_general(self.z, self.c, self.h, self.c, self.h, <float*>NULL, self.p, True, self.codes,
                                 self.ab, self.clip, self.input_forget, H)
            if y != NULL:
                _copy(y + t * H, self.h, H)

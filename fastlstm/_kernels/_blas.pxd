"""Row-major matrix products for the kernels.

    gemm, gemv        over scipy.linalg.cython_blas (Fortran, column-major). A row-major matrix is the
                      transpose of the same memory read column-major, so row-major C = op(A) @ op(B) is
                      computed as column-major C^T = op(B)^T @ op(A)^T: swap the operands and m, n.
    pack_weights      float32 recurrent weights packed once per kernel call into 16-column panels ...
    matmul_acc        ... for the per-step C += A @ op(W): a 6x16 AVX2/FMA register-tile kernel on the panels
                      (1 < rows < PACKED_MAX_ROWS), a one-row product over 64-column panels (rows == 1),
                      matrix-vector products (rows <= GEMV_MAX_ROWS), else gemm.
    matmul_bias       C = bias + A @ op(W): on the packed tiles they start from the bias (fl_gemm_packed_bias, C
                      not read: no pass filling C with the bias), else the fill and matmul_acc.
"""
from cython cimport floating
from libc.string cimport memcpy

cdef enum Trans:
    NO_TRANS = 0
    TRANS = 1

cdef void gemm(Trans ta, Trans tb, int m, int n, int k, floating alpha, const floating* a, int lda,
               const floating* b, int ldb, floating beta, floating* c, int ldc) noexcept nogil

cdef void gemv(Trans ta, int m, int n, floating alpha, const floating* a, int lda, const floating* x,
               floating beta, floating* y) noexcept nogil

cdef int kernel_team(int threads) noexcept nogil

# Inside an OpenMP parallel region of a threaded kernel (lstm_cy, gru_cy; built with -fopenmp): this thread's
# number, the team's size, a barrier. Compiled without OpenMP (any module that includes this), a team of one.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FL_OPENMP 1
    static inline int fl_thread_num(void) { return omp_get_thread_num(); }
    static inline int fl_num_threads(void) { return omp_get_num_threads(); }
    static inline void fl_barrier(void) {
        #pragma omp barrier
    }
    #else
    #define FL_OPENMP 0
    static inline int fl_thread_num(void) { return 0; }
    static inline int fl_num_threads(void) { return 1; }
    static inline void fl_barrier(void) { }
    #endif
    """
    int FL_OPENMP
    int fl_thread_num() noexcept nogil
    int fl_num_threads() noexcept nogil
    void fl_barrier() noexcept nogil


# Packed-weight float32 GEMM for the per-step recurrent products C += A @ W with a fixed W (the recurrent
# weights): W is packed once per kernel call into 16-column panels, then every step runs a 6x16 AVX2/FMA
# register-tile kernel over them. OpenBLAS packs W again on every call, which at these sizes (B <= 256 rows,
# W up to 512 x 2048) costs more than the multiply-adds. Without AVX2 + FMA at compile time,
# FL_PACKED_GEMM is 0 and the kernels use gemm() instead.
cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>
    #define FL_PACKED_GEMM 1
    #else
    #define FL_PACKED_GEMM 0
    #endif

    /* a buffer for packed weights, 64-byte aligned: every 32-byte load of a panel row stays within one cache line
       (malloc's 16-byte alignment splits half of them across two lines: 10-15% slower batch-1 steps); from malloc
       (aligned_alloc maps large blocks anew on every call: page faults). fl_free() it. */
    static void *fl_alloc(size_t bytes) {
        unsigned char *raw = (unsigned char *)malloc(bytes + 64), *p;
        if (raw == NULL) return NULL;
        p = (unsigned char *)(((uintptr_t)raw + 64) & ~(uintptr_t)63);   /* >= 8 bytes past raw: room for it */
        ((void **)p)[-1] = raw;
        return p;
    }
    static void fl_free(void *p) { if (p != NULL) free(((void **)p)[-1]); }

    /* floats for W (K x N) packed: ceil(N / 16) panels of K rows x 16 columns */
    static size_t fl_packed_size(int K, int N) { return (size_t)K * (size_t)((N + 15) / 16) * 16; }

    /* Wp = W (K x N, row stride ldw; trans: W[k, n] is at W[n * ldw + k]) as 16-column panels, zero padded */
    static void fl_pack(int K, int N, const float *W, int ldw, int trans, float *Wp) {
        for (int p = 0; p < (N + 15) / 16; p++) {
            float *dst = Wp + (size_t)p * K * 16;
            int n0 = p * 16, nn = N - n0 < 16 ? N - n0 : 16;
            for (int k = 0; k < K; k++) {
                for (int j = 0; j < 16; j++)
                    dst[(size_t)k * 16 + j] = j >= nn ? 0.0f
                        : trans ? W[(size_t)(n0 + j) * ldw + k] : W[(size_t)k * ldw + n0 + j];
            }
        }
    }

    #if FL_PACKED_GEMM
    /* C[0:mr, 0:16] += A[0:mr, 0:K] @ Bp (one packed panel), A row-major (row stride lda); or, given `bias` (16
       floats), C[0:mr, 0:16] = bias + A @ Bp without reading C (rounded as C filled with the bias, then +=).
       mr is a constant after inlining */
    static inline __attribute__((always_inline)) void fl_tile(const int mr, int K, const float *A, int lda,
                                                              const float *Bp, float *C, int ldc, const float *bias) {
        __m256 c0a = _mm256_setzero_ps(), c0b = c0a, c1a = c0a, c1b = c0a, c2a = c0a, c2b = c0a,
               c3a = c0a, c3b = c0a, c4a = c0a, c4b = c0a, c5a = c0a, c5b = c0a, a, b0, b1;
        if (!bias) {
            for (int i = 0; i < mr; i++) { /* the C tile is read at the end: start fetching it now */
                _mm_prefetch((const char *)(C + i * ldc), _MM_HINT_T0);
                _mm_prefetch((const char *)(C + i * ldc + 15), _MM_HINT_T0);
            }
        }
        for (int k = 0; k < K; k++) {
            b0 = _mm256_loadu_ps(Bp + 16 * k);
            b1 = _mm256_loadu_ps(Bp + 16 * k + 8);
            a = _mm256_broadcast_ss(A + k + 0 * (size_t)lda);  c0a = _mm256_fmadd_ps(a, b0, c0a);  c0b = _mm256_fmadd_ps(a, b1, c0b);
            if (mr > 1) { a = _mm256_broadcast_ss(A + k + 1 * (size_t)lda); c1a = _mm256_fmadd_ps(a, b0, c1a); c1b = _mm256_fmadd_ps(a, b1, c1b); }
            if (mr > 2) { a = _mm256_broadcast_ss(A + k + 2 * (size_t)lda); c2a = _mm256_fmadd_ps(a, b0, c2a); c2b = _mm256_fmadd_ps(a, b1, c2b); }
            if (mr > 3) { a = _mm256_broadcast_ss(A + k + 3 * (size_t)lda); c3a = _mm256_fmadd_ps(a, b0, c3a); c3b = _mm256_fmadd_ps(a, b1, c3b); }
            if (mr > 4) { a = _mm256_broadcast_ss(A + k + 4 * (size_t)lda); c4a = _mm256_fmadd_ps(a, b0, c4a); c4b = _mm256_fmadd_ps(a, b1, c4b); }
            if (mr > 5) { a = _mm256_broadcast_ss(A + k + 5 * (size_t)lda); c5a = _mm256_fmadd_ps(a, b0, c5a); c5b = _mm256_fmadd_ps(a, b1, c5b); }
        }
        /* C + sums, or bias + sums: the same roundings as filling C with the bias first */
        #define FL_ACC(i, ca, cb) { float *Ci = C + (i) * ldc; \\
            _mm256_storeu_ps(Ci, _mm256_add_ps(_mm256_loadu_ps(bias ? bias : Ci), ca)); \\
            _mm256_storeu_ps(Ci + 8, _mm256_add_ps(_mm256_loadu_ps(bias ? bias + 8 : Ci + 8), cb)); }
        FL_ACC(0, c0a, c0b)
        if (mr > 1) FL_ACC(1, c1a, c1b)
        if (mr > 2) FL_ACC(2, c2a, c2b)
        if (mr > 3) FL_ACC(3, c3a, c3b)
        if (mr > 4) FL_ACC(4, c4a, c4b)
        if (mr > 5) FL_ACC(5, c5a, c5b)
        #undef FL_ACC
    }
    #endif

    /* rows of the next register tile when `left` rows remain: 6, except that the last 7, 8 or 9 rows go as 4 + 3,
       4 + 4, 5 + 4. A tile of r rows keeps 2r accumulators; below 4 rows (8 chains) the 4-cycle FMA latency, not
       the 2 FMAs per cycle, sets its pace, so a 1- or 2-row tail tile costs as much as 4 rows (32 rows = 5 x 6 + 2:
       34 row-times; 4 x 6 + 4 + 4: 32). */
    static inline int fl_tile_rows(int left) {
        return left == 7 || left == 8 ? 4 : left == 9 ? 5 : left < 6 ? left : 6;
    }

    /* C (M x N, row stride ldc) += A (M x K, row stride lda) @ W, W packed by fl_pack into Wp (read only:
       threads may share it); or, given `bias` (N), C = bias + A @ W without reading C (no separate pass filling
       C with the bias first). A is read in place: its rows (at most PACKED_MAX_ROWS) stay in cache, and the
       tile's broadcasts need no packed copy (packing A, a strided scalar copy, cost 10-35% at these sizes). */
    static void fl_gemm_packed_bias(int M, int N, int K, const float *A, int lda, const float *Wp, float *C, int ldc,
                                    const float *bias) {
    #if FL_PACKED_GEMM
        float tmp[6 * 16], btail[16];
        int np = (N + 15) / 16;
        /* K in equal chunks of at most 384: a panel chunk (<= 24 KiB) stays in L1 while the row tiles pass over it */
        int nk = (K + 383) / 384, kstep = (K + nk - 1) / nk;
        for (int k0 = 0; k0 < K; k0 += kstep) {
            int kc = K - k0 < kstep ? K - k0 : kstep;
            for (int p = 0; p < np; p++) {
                const float *Bp = Wp + (size_t)p * K * 16 + (size_t)k0 * 16;
                int n0 = p * 16, nn = N - n0 < 16 ? N - n0 : 16;
                /* the bias for the first chunk only; later chunks accumulate */
                const float *bt = bias && k0 == 0 ? bias + n0 : NULL;
                if (bt && nn < 16) {
                    memset(btail, 0, sizeof(btail));
                    memcpy(btail, bt, nn * sizeof(float));
                    bt = btail;
                }
                for (int i = 0; i < M; i += fl_tile_rows(M - i)) {
                    int mr = fl_tile_rows(M - i);
                    const float *Ai = A + (size_t)i * lda + k0;
                    float *Ct = C + (size_t)i * ldc + n0;
                    int ldt = ldc;
                    if (nn < 16) {      /* partial panel: work on a zero-padded copy of the C tile */
                        memset(tmp, 0, sizeof(tmp));
                        if (!bt)
                            for (int r = 0; r < mr; r++) memcpy(tmp + 16 * r, Ct + (size_t)r * ldc, nn * sizeof(float));
                        Ct = tmp;
                        ldt = 16;
                    }
                    switch (mr) {
                        case 6: fl_tile(6, kc, Ai, lda, Bp, Ct, ldt, bt); break;
                        case 5: fl_tile(5, kc, Ai, lda, Bp, Ct, ldt, bt); break;
                        case 4: fl_tile(4, kc, Ai, lda, Bp, Ct, ldt, bt); break;
                        case 3: fl_tile(3, kc, Ai, lda, Bp, Ct, ldt, bt); break;
                        case 2: fl_tile(2, kc, Ai, lda, Bp, Ct, ldt, bt); break;
                        default: fl_tile(1, kc, Ai, lda, Bp, Ct, ldt, bt); break;
                    }
                    if (nn < 16)
                        for (int r = 0; r < mr; r++)
                            memcpy(C + (size_t)(i + r) * ldc + n0, tmp + 16 * r, nn * sizeof(float));
                }
            }
        }
    #else
        (void)M; (void)N; (void)K; (void)A; (void)lda; (void)Wp; (void)C; (void)ldc; (void)bias;
    #endif
    }

    static void fl_gemm_packed(int M, int N, int K, const float *A, int lda, const float *Wp, float *C, int ldc) {
        fl_gemm_packed_bias(M, N, K, A, lda, Wp, C, ldc, NULL);
    }

    #if FL_PACKED_GEMM
    /* c[0:8] (64 sums) += x[k] * w[k, 0:64] for k0 <= k < k1, w a block of 64-float rows `stride` floats apart
       (a row-major matrix's 64 columns, or a packed 64-column panel: stride 64, read as one stream, prefetched
       8 rows ahead when `prefetch`). 8 independent accumulators cover the FMA latency (4 cycles) times its
       throughput (2 per cycle). prefetch is a constant and c lives in registers after inlining. */
    static inline __attribute__((always_inline)) void fl_rows64(int k0, int k1, const float *x, const float *w,
                                                                size_t stride, const int prefetch, __m256 *c) {
        w += (size_t)k0 * stride;
        for (int k = k0; k < k1; k++, w += stride) {
            if (prefetch) {
                _mm_prefetch((const char *)(w + 8 * stride), _MM_HINT_T0);
                _mm_prefetch((const char *)(w + 8 * stride + 16), _MM_HINT_T0);
                _mm_prefetch((const char *)(w + 8 * stride + 32), _MM_HINT_T0);
                _mm_prefetch((const char *)(w + 8 * stride + 48), _MM_HINT_T0);
            }
            __m256 a = _mm256_broadcast_ss(x + k);
            for (int v = 0; v < 8; v++)
                c[v] = _mm256_fmadd_ps(a, _mm256_loadu_ps(w + 8 * v), c[v]);
        }
    }

    /* y[0:64] += x (K) @ w (fl_rows64's block) */
    static inline __attribute__((always_inline)) void fl_row64(int K, const float *x, const float *w, size_t stride,
                                                               const int prefetch, float *y) {
        __m256 c[8];
        for (int v = 0; v < 8; v++) c[v] = _mm256_loadu_ps(y + 8 * v);
        fl_rows64(0, K, x, w, stride, prefetch, c);
        for (int v = 0; v < 8; v++) _mm256_storeu_ps(y + 8 * v, c[v]);
    }
    #endif

    /* y (N) += x (K) @ W (K x N, row stride ldw), serial: for one batch row per step, where a threaded
       BLAS gemv hands every step to its worker threads (a stall when a core is busy elsewhere) */
    static void fl_gemv_rowvec(int K, int N, const float *x, const float *W, int ldw, float *y) {
        int j = 0;
    #if FL_PACKED_GEMM
        for (; j + 64 <= N; j += 64)
            fl_row64(K, x, W + j, ldw, 0, y + j);
        for (; j + 8 <= N; j += 8) {
            __m256 c = _mm256_loadu_ps(y + j);
            for (int k = 0; k < K; k++)
                c = _mm256_fmadd_ps(_mm256_broadcast_ss(x + k), _mm256_loadu_ps(W + (size_t)k * ldw + j), c);
            _mm256_storeu_ps(y + j, c);
        }
    #endif
        for (; j < N; j++) {
            float s = y[j];
            for (int k = 0; k < K; k++) s += x[k] * W[(size_t)k * ldw + j];
            y[j] = s;
        }
    }

    /* ---- one-row products y += x @ W over W packed in 64-column panels (batch-1 steps) ----
       Panel p holds W[:, 64p : 64p+64] as K contiguous rows of 64 floats (zero padded past N), so a product
       reads W as one sequential stream: at batch 1 the step is bound by how fast W streams from L2/L3, and a
       sequential stream is what the hardware prefetchers serve best (row-major W with a 64-column chunk per
       pass reads 256 bytes, then jumps a whole row: about 30% slower here). */
    static size_t fl_packed64_size(int K, int N) { return (size_t)K * (size_t)((N + 63) / 64) * 64; }

    /* Wp = op(W) (K x N, row stride ldw; trans: W[k, n] is at W[n * ldw + k]) in 64-column panels */
    static void fl_pack64(int K, int N, const float *W, int ldw, int trans, float *Wp) {
        for (int p = 0; p < (N + 63) / 64; p++) {
            float *dst = Wp + (size_t)p * K * 64;
            int n0 = p * 64, nn = N - n0 < 64 ? N - n0 : 64;
            for (int k = 0; k < K; k++) {
                float *row = dst + (size_t)k * 64;
                if (!trans && nn == 64) { memcpy(row, W + (size_t)k * ldw + n0, 64 * sizeof(float)); continue; }
                for (int j = 0; j < 64; j++)
                    row[j] = j >= nn ? 0.0f : trans ? W[(size_t)(n0 + j) * ldw + k] : W[(size_t)k * ldw + n0 + j];
            }
        }
    }

    /* y (N) += x (K) @ W, W packed by fl_pack64. Successive calls in a thread sweep the panels in alternating
       order: when W is a bit larger than the L2 cache, a sweep that always starts at the first panel finds it
       evicted by the end of the previous sweep; a back-and-forth sweep starts where the last one ended, on
       panels still cached (about 10% faster here). The panels are independent, so results do not change. */
    static __thread int fl_sweep_back;
    /* the panels p0 <= p < p1 of that product, last to first when `back` */
    static void fl_gemv_packed64_panels(int K, int N, const float *x, const float *Wp, float *y, int p0, int p1,
                                        int back) {
    #if FL_PACKED_GEMM
        float tmp[64];
        for (int q = 0; q < p1 - p0; q++) {
            int p = back ? p1 - 1 - q : p0 + q;
            int n0 = p * 64, nn = N - n0 < 64 ? N - n0 : 64;
            float *yt = y + n0;
            if (nn < 64) {          /* last, partial panel: accumulate into a zero-padded copy */
                memset(tmp, 0, sizeof(tmp));
                memcpy(tmp, yt, nn * sizeof(float));
                yt = tmp;
            }
            fl_row64(K, x, Wp + (size_t)p * K * 64, 64, 1, yt);
            if (nn < 64) memcpy(y + n0, tmp, nn * sizeof(float));
        }
    #else
        (void)K; (void)N; (void)x; (void)Wp; (void)y; (void)p0; (void)p1; (void)back;
    #endif
    }
    static void fl_gemv_packed64(int K, int N, const float *x, const float *Wp, float *y) {
        int back = fl_sweep_back;
        fl_sweep_back = !back;
        fl_gemv_packed64_panels(K, N, x, Wp, y, 0, (N + 63) / 64, back);
    }

    /* ---- batch-1 steps over unit-interleaved panels ----
       W (K x ngates*H: gate blocks of H columns) repacked so that panel q holds the columns of units
       16q..16q+15 of every gate, gate after gate (16 columns each, zero past H): K rows of 16 * ngates floats.
       A step then finishes a panel's 16 units (their gate pass) right after the panel's product, and the
       out-of-order core overlaps that arithmetic with the loads of the next panel. */
    static size_t fl_units_size(int K, int H, int ngates) { return (size_t)K * 16 * ngates * ((H + 15) / 16); }

    static void fl_pack_units(int K, int H, int ngates, const float *W, int ldw, float *Wp) {
        int width = 16 * ngates;
        for (int q = 0; q < (H + 15) / 16; q++) {
            float *dst = Wp + (size_t)q * K * width;
            int u0 = 16 * q, nu = H - u0 < 16 ? H - u0 : 16;
            for (int k = 0; k < K; k++)
                for (int g = 0; g < ngates; g++)
                    for (int j = 0; j < 16; j++)
                        dst[(size_t)k * width + 16 * g + j] = j < nu ? W[(size_t)k * ldw + (size_t)g * H + u0 + j] : 0.0f;
        }
    }
    """
    int FL_PACKED_GEMM
    void* fl_alloc(size_t bytes) noexcept nogil
    void fl_free(void* p) noexcept nogil
    size_t fl_units_size(int K, int H, int ngates) noexcept nogil
    void fl_pack_units(int K, int H, int ngates, const float* W, int ldw, float* Wp) noexcept nogil
    size_t fl_packed64_size(int K, int N) noexcept nogil
    void fl_pack64(int K, int N, const float* W, int ldw, int trans, float* Wp) noexcept nogil
    void fl_gemv_packed64(int K, int N, const float* x, const float* Wp, float* y) noexcept nogil
    void fl_gemv_packed64_panels(int K, int N, const float* x, const float* Wp, float* y, int p0, int p1,
                                 int back) noexcept nogil
    size_t fl_packed_size(int K, int N) noexcept nogil
    void fl_pack(int K, int N, const float* W, int ldw, int trans, float* Wp) noexcept nogil
    void fl_gemm_packed(int M, int N, int K, const float* A, int lda, const float* Wp, float* C,
                        int ldc) noexcept nogil
    void fl_gemm_packed_bias(int M, int N, int K, const float* A, int lda, const float* Wp, float* C, int ldc,
                             const float* bias) noexcept nogil
    void fl_gemv_rowvec(int K, int N, const float* x, const float* W, int ldw, float* y) noexcept nogil


cdef enum:
    PACKED_MAX_ROWS = 320    # from this batch size on, OpenBLAS's own packing pays for itself (measured: at 256 rows
                             # the tiles are 3-4% faster, K = 128..512; at 384 the two tie)
    GEMV_MAX_ROWS = 8        # up to here one gemv per row beats gemm, which packs all of W on every call
    ROWVEC_MIN_USES = 8      # one-row products: from this many on, packing W in 64-column panels pays (measured)


cdef enum PackKind:
    PACK_NONE = 0
    PACK_ROW64 = 1          # fl_pack64: 64-column panels for one-row products
    PACK_PANELS16 = 2       # fl_pack: 16-column panels for the register-tile kernel
    PACK_UNITS = 3          # fl_pack_units: batch-1 LSTM steps (lstm_cy)


cdef inline int pack_kind(Py_ssize_t rows, Py_ssize_t uses) noexcept nogil:
    """The packing matmul_acc takes for float32 products with `rows` rows in A, used `uses` times (AVX2/FMA
    builds only): 16-column panels for 1 < rows < PACKED_MAX_ROWS; 64-column panels for one row when
    uses >= ROWVEC_MIN_USES (packing costs a few products, so a short sequence goes without)."""
    if not FL_PACKED_GEMM:
        return PACK_NONE
    if rows == 1:
        return PACK_ROW64 if uses >= ROWVEC_MIN_USES else PACK_NONE
    return PACK_PANELS16 if rows < PACKED_MAX_ROWS else PACK_NONE


cdef inline float* pack_as(int kind, int K, int N, const float* w, int ldw, bint trans,
                           int ngates=4) noexcept nogil:
    """A copy of op(W) (K x N; trans: W is stored N x K) packed in layout `kind` (PackKind; PACK_UNITS: N = H,
    W of ngates * H columns, no trans), or NULL (PACK_NONE, or the allocation failed). fl_free() it."""
    cdef float *wp = NULL
    if kind == PACK_ROW64:
        wp = <float*>fl_alloc(fl_packed64_size(K, N) * sizeof(float))
        if wp != NULL:
            fl_pack64(K, N, w, ldw, trans, wp)
    elif kind == PACK_PANELS16:
        wp = <float*>fl_alloc(fl_packed_size(K, N) * sizeof(float))
        if wp != NULL:
            fl_pack(K, N, w, ldw, trans, wp)
    elif kind == PACK_UNITS:
        wp = <float*>fl_alloc(fl_units_size(K, N, ngates) * sizeof(float))
        if wp != NULL:
            fl_pack_units(K, N, ngates, w, ldw, wp)
    return wp


cdef inline float* pack_weights(int K, int N, const floating* w, int ldw, bint trans, Py_ssize_t rows,
                                Py_ssize_t uses=2) noexcept nogil:
    """A packed copy of op(W) (K x N; trans: W is stored N x K) for matmul_acc with `rows` rows in A, used
    `uses` times (pack_kind), when the allocation succeeds; else NULL. fl_free() it."""
    cdef float *wp = NULL
    if floating is float:
        wp = pack_as(pack_kind(rows, uses), K, N, w, ldw, trans)
    return wp


cdef inline void matmul_acc(int M, int N, int K, const floating* a, int lda, const floating* w, int ldw,
                            bint trans_w, const float* wp, floating* c, int ldc) noexcept nogil:
    """C (M x N) += A (M x K) @ op(W), op(W) = W (K x N) or, with trans_w, W^T (W stored N x K).
    The packed kernel when wp (pack_weights) is given; for M <= GEMV_MAX_ROWS one matrix-vector product per
    row (float32 without trans_w: fl_gemv_rowvec, serial; else BLAS gemv); else gemm."""
    if floating is float:
        if wp != NULL:
            if M == 1:
                fl_gemv_packed64(K, N, a, wp, c)
            else:
                fl_gemm_packed(M, N, K, a, lda, wp, c, ldc)
            return
    cdef int i
    if floating is float:
        if FL_PACKED_GEMM and M <= GEMV_MAX_ROWS and not trans_w:
            for i in range(M):
                # c[i] += a[i] @ W
                fl_gemv_rowvec(K, N, a + i * lda, w, ldw, c + i * ldc)
            return
    if M <= GEMV_MAX_ROWS:
        for i in range(M):
            if trans_w:
                # c[i] += W @ a[i]
                gemv(NO_TRANS, N, K, <floating>1, w, ldw, a + i * lda, <floating>1, c + i * ldc)
            else:
                # c[i] += W^T @ a[i]
                gemv(TRANS, K, N, <floating>1, w, ldw, a + i * lda, <floating>1, c + i * ldc)
    else:
        # C += A @ op(W)
        gemm(NO_TRANS, TRANS if trans_w else NO_TRANS, M, N, K, <floating>1, a, lda, w, ldw, <floating>1, c, ldc)


cdef inline void matmul_bias(int M, int N, int K, const floating* a, int lda, const floating* w, int ldw,
                             bint trans_w, const float* wp, const floating* bias, floating* c, int ldc) noexcept nogil:
    """C (M x N) = bias (N,) + A (M x K) @ op(W), rounded as C filled with the bias and then matmul_acc: on the
    packed tiles (float32, wp in 16-column panels: M > 1) they start from the bias and C is never read; else
    C is filled with the bias row by row first."""
    cdef int i
    if floating is float:
        if wp != NULL and M > 1:
            fl_gemm_packed_bias(M, N, K, a, lda, wp, c, ldc, bias)
            return
    for i in range(M):
        memcpy(c + i * ldc, bias, N * sizeof(floating))
    matmul_acc(M, N, K, a, lda, w, ldw, trans_w, wp, c, ldc)


cdef class WeightPacks:
    """Packed copies of float32 weight matrices kept across kernel calls, for a caller whose weights do not change
    between calls (a layer keeps one with its cast weights and drops both when its weights change). Each copy is
    made on first request (with the GIL held) and only read after that, so threads share them. Keyed by the
    source address, shape and layout: the caller must keep the source arrays alive and unchanged."""
    cdef dict _bufs
    cdef float* _get(self, int kind, const float* w, int K, int N, int ldw, int ngates)
    cdef float* units(self, const float* w, int K, int H, int ngates, int ldw)
    cdef float* packed(self, const float* w, int K, int N, int ldw, Py_ssize_t rows, Py_ssize_t uses)


cdef class Packed64:
    """W (K x N, float32) packed once in 64-column panels for one-row products (fl_gemv_packed64). Read-only
    after construction: many batch-1 steppers (sessions, threads) share one."""
    cdef float *data
    cdef readonly int K, N


cdef class Stepper:
    """Base of the batch-1 float32 steppers of the streaming sessions (lstm_cy.LSTMStepper, gru_cy.GRUStepper):
    the Python entry points step() and run(); a subclass sets n_in, units, h (its state h, H floats) and
    implements _advance. `threads`: at most this many threads per step (set by the session; 0 or 1: one)."""
    cdef float *h
    cdef readonly Py_ssize_t n_in, units     # I, H (`I` is a C macro)
    cdef public int threads
    cdef void _advance(self, const float* x, Py_ssize_t k, float* y) noexcept nogil

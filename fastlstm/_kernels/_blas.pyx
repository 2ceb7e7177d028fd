"""Row-major sgemm/dgemm and sgemv/dgemv over scipy.linalg.cython_blas (declared in _blas.pxd).

    gemm:  C (m, n) := alpha * op(A) @ op(B) + beta * C      op(A) (m, k), op(B) (k, n), row-major
    gemv:  y := alpha * op(A) @ x + beta * y                 A (m, n) row-major; y (m,) or (n,) when TRANS

Row-major C = op(A) @ op(B) has the memory of column-major C^T = op(B)^T @ op(A)^T, so the Fortran
routine gets B first and m, n swapped; a row-major A (m, n) is a column-major (n, m) matrix, so gemv
flips the transpose flag. Leading dimensions are row strides in elements, as in row-major C.
"""
from libc.string cimport memcpy
cimport numpy as cnp
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

cnp.import_array()

# whether this build has the AVX2/FMA packed paths (register tiles, kept packs, batch-1 steppers): without them
# the kernels take BLAS and the general passes, and the steppers' constructors raise
PACKED_GEMM = bool(FL_PACKED_GEMM)


cdef void gemm(Trans ta, Trans tb, int m, int n, int k, floating alpha, const floating* a, int lda,
               const floating* b, int ldb, floating beta, floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C   (row-major)"""
    cdef char ta_f = b't' if ta == TRANS else b'n'
    cdef char tb_f = b't' if tb == TRANS else b'n'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb_f, &ta_f, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb_f, &ta_f, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef void gemv(Trans ta, int m, int n, floating alpha, const floating* a, int lda, const floating* x,
               floating beta, floating* y) noexcept nogil:
    """y := alpha * op(A) @ x + beta * y   (A (m, n) row-major)"""
    # column-major view of A is (n, m): NO_TRANS here is 't' there and the other way round
    cdef char t_f = b'n' if ta == TRANS else b't'
    cdef int one = 1
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemv(&t_f, &n, &m, &alpha, <float*>a, &lda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&t_f, &n, &m, &alpha, <double*>a, &lda, <double*>x, &one, &beta, y, &one)


cdef extern from *:
    """
    #include <pthread.h>
    /* libgomp cannot run a parallel region in a child forked after the parent ran one (the child waits for a
       thread team that did not survive the fork: multiprocessing's default start method, preforking servers).
       The threaded kernels (lstm_cy, gru_cy) ask fl_team for their threads: such a child gets one. One flag for
       the process: every module's teams come from the same libgomp. */
    static int fl_team_used, fl_team_off;
    static void fl_team_after_fork(void) { if (fl_team_used) fl_team_off = 1; }
    __attribute__((constructor)) static void fl_team_watch_fork(void) { pthread_atfork(NULL, NULL, fl_team_after_fork); }
    static int fl_team(int nt) {
        if (nt <= 1 || fl_team_off) return 1;
        fl_team_used = 1;
        return nt;
    }
    """
    int fl_team(int nt) noexcept nogil


cdef int kernel_team(int threads) noexcept nogil:
    """The threads a threaded kernel may start now: `threads`, or 1 in a process forked after a team ran."""
    return fl_team(threads)


def gemm_check(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """c := alpha * op(a) @ op(b) + beta * c in place through the row-major wrapper (for tests only).

    a, b, c are C-contiguous 2-D float32 or float64 arrays of one dtype; returns c.
    """
    import numpy as np
    _gemm_check(np.ascontiguousarray(a), np.ascontiguousarray(b), c, alpha, beta, trans_a, trans_b)
    return c


def _gemm_check(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c, double alpha,
                double beta, bint trans_a, bint trans_b):
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        gemm(TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS, m, n, k, <floating>alpha,
             &a[0, 0], a.shape[1], &b[0, 0], b.shape[1], <floating>beta, &c[0, 0], c.shape[1])


def _recurrent_check(const float[:, ::1] a, const float[:, ::1] w, float[:, ::1] c, bint packed, int repeats=1,
                     const float[::1] bias=None):
    """c += a @ w, `repeats` times, through fl_gemm_packed (packed) or gemm (matmul_acc when a has one row);
    packed with `bias` (N,): c = bias + a @ w through fl_gemm_packed_bias. For tests and timing only."""
    cdef int M = a.shape[0], K = a.shape[1], N = w.shape[1], r
    cdef float *wp = NULL
    cdef const float *bp = &bias[0] if bias is not None else NULL
    if packed and FL_PACKED_GEMM:
        wp = <float*>fl_alloc(fl_packed_size(K, N) * sizeof(float))
    with nogil:
        if wp != NULL:
            fl_pack(K, N, &w[0, 0], N, 0, wp)
        if wp == NULL and bp != NULL:          # (no packed build: c = bias, then c += a @ w below)
            for r in range(M):
                memcpy(&c[r, 0], bp, N * sizeof(float))
        for r in range(repeats):
            if wp != NULL:
                fl_gemm_packed_bias(M, N, K, &a[0, 0], K, wp, &c[0, 0], N, bp)
            elif M == 1:
                matmul_acc(M, N, K, &a[0, 0], K, &w[0, 0], N, False, NULL, &c[0, 0], N)
            else:
                gemm(NO_TRANS, NO_TRANS, M, N, K, <float>1, &a[0, 0], K, &w[0, 0], N, <float>1, &c[0, 0], N)
    fl_free(wp)
    return c


cdef class _Buffer:
    """An fl_alloc buffer owned by a Python object."""
    cdef float *data

    def __dealloc__(self):
        fl_free(self.data)


cdef class WeightPacks:
    """See _blas.pxd. units(): fl_pack_units (batch-1 LSTM steps); packed(): pack_weights' layouts (matmul_acc).
    Both return NULL when the packed paths are not built or memory runs out (the kernels then
    pack per call, or not at all)."""

    def __cinit__(self):
        self._bufs = {}

    cdef float* _get(self, int kind, const float* w, int K, int N, int ldw, int ngates):
        cdef _Buffer buf
        key = (kind, <size_t>w, K, N, ldw, ngates)
        buf = self._bufs.get(key)
        if buf is not None:
            return buf.data
        if not FL_PACKED_GEMM:
            return NULL
        buf = _Buffer()
        buf.data = pack_as(kind, K, N, w, ldw, False, ngates)
        if buf.data != NULL:
            self._bufs[key] = buf
        return buf.data

    cdef float* units(self, const float* w, int K, int H, int ngates, int ldw):
        """w (K x ngates*H, row stride ldw) packed by fl_pack_units"""
        return self._get(PACK_UNITS, w, K, H, ldw, ngates)

    cdef float* packed(self, const float* w, int K, int N, int ldw, Py_ssize_t rows, Py_ssize_t uses):
        """w (K x N, row stride ldw) packed as pack_weights would for `rows` rows used `uses` times (NULL when
        it would not pack), for matmul_acc"""
        return self._get(pack_kind(rows, uses), w, K, N, ldw, 0)

    def __len__(self):
        return len(self._bufs)


cdef class Packed64:
    """W (K x N, float32, C-contiguous) packed in 64-column panels; see _blas.pxd. Needs the AVX2/FMA build
    (FL_PACKED_GEMM): without it the constructor raises RuntimeError and callers take the general kernels."""

    def __cinit__(self, const float[:, ::1] w not None):
        if not FL_PACKED_GEMM:
            raise RuntimeError("packed one-row products need a build with AVX2 and FMA")
        self.K, self.N = <int>w.shape[0], <int>w.shape[1]
        if self.K < 1 or self.N < 1:
            raise ValueError(f"Packed64 needs a non-empty matrix, got shape ({self.K}, {self.N})")
        self.data = <float*>fl_alloc(fl_packed64_size(self.K, self.N) * sizeof(float))
        if self.data == NULL:
            raise MemoryError()
        with nogil:
            fl_pack64(self.K, self.N, &w[0, 0], self.N, 0, self.data)

    def __dealloc__(self):
        fl_free(self.data)


cdef class Stepper:
    """See _blas.pxd. Not used on its own: a subclass implements _advance."""

    cdef void _advance(self, const float* x, Py_ssize_t k, float* y) noexcept nogil:
        """k steps on the rows x (k, I), updating the state; y (k, H) gets every h when not NULL"""
        pass

    def step(self, x, bint sequences):
        """Advance over x, a float32 C-contiguous array of shape (1, k, I), k >= 1. Returns a new array:
        (1, k, H) with every step's h when `sequences`, else (1, H), the last h. Returns None when x is
        anything else (the caller converts it and calls again). The GIL is released while it runs."""
        cdef cnp.ndarray a
        cdef cnp.ndarray out
        cdef cnp.npy_intp dims[3]
        cdef Py_ssize_t k
        if type(x) is not cnp.ndarray:
            return None
        a = <cnp.ndarray>x
        if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_NDIM(a) != 3 \
                or cnp.PyArray_DIM(a, 0) != 1 or cnp.PyArray_DIM(a, 2) != self.n_in or cnp.PyArray_DIM(a, 1) < 1:
            return None
        k = cnp.PyArray_DIM(a, 1)
        if sequences:
            dims[0], dims[1], dims[2] = 1, k, self.units
            out = cnp.PyArray_EMPTY(3, dims, cnp.NPY_FLOAT32, 0)
            with nogil:
                self._advance(<const float*>cnp.PyArray_DATA(a), k, <float*>cnp.PyArray_DATA(out))
        else:
            dims[0], dims[1] = 1, self.units
            out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
            with nogil:
                self._advance(<const float*>cnp.PyArray_DATA(a), k, NULL)
            memcpy(cnp.PyArray_DATA(out), self.h, self.units * sizeof(float))
        return out

    def run(self, const float[:, :, ::1] x not None, float[:, :, ::1] y not None):
        """Advance over x (k, 1, I) (time-major); y (k, 1, H) gets every step's h."""
        if x.shape[1] != 1 or x.shape[2] != self.n_in or y.shape[0] != x.shape[0] or y.shape[1] != 1 \
                or y.shape[2] != self.units:
            raise ValueError(f"{type(self).__name__}.run: expected x (k, 1, {self.n_in}) and y (k, 1, {self.units}), "
                             f"got ({x.shape[0]}, {x.shape[1]}, {x.shape[2]}) and ({y.shape[0]}, {y.shape[1]}, "
                             f"{y.shape[2]})")
        if x.shape[0] == 0:
            return
        with nogil:
            self._advance(&x[0, 0, 0], x.shape[0], &y[0, 0, 0])

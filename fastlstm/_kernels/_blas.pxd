"""Row-major BLAS for the kernels, over scipy.linalg.cython_blas (Fortran, column-major).

A row-major matrix is the transpose of the same memory read column-major, so row-major
C = op(A) @ op(B) is computed as column-major C^T = op(B)^T @ op(A)^T: swap the operands and m, n.
"""
from cython cimport floating

cdef enum Trans:
    NO_TRANS = 0
    TRANS = 1

cdef void gemm(Trans ta, Trans tb, int m, int n, int k, floating alpha, const floating* a, int lda,
               const floating* b, int ldb, floating beta, floating* c, int ldc) noexcept nogil

cdef void gemv(Trans ta, int m, int n, floating alpha, const floating* a, int lda, const floating* x,
               floating beta, floating* y) noexcept nogil

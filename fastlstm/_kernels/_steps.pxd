# Small inline helpers shared by lstm_cy.pyx and gru_cy.pyx (header only, no extension of its own).
from libc.string cimport memcpy
from cython cimport floating


cdef inline void _copy(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    memcpy(dst, src, n * sizeof(floating))


cdef inline void _add(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        dst[j] += src[j]


cdef inline Py_ssize_t _step(Py_ssize_t k, Py_ssize_t T, bint reverse) noexcept nogil:
    """time index of the k-th processed step"""
    return T - 1 - k if reverse else k

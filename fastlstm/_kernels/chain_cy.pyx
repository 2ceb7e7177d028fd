"""Compiled batch-1 chain steps for streaming sessions: [Embedding] -> recurrent/Dense ops, one call per chunk.

A chain is a plain sequence of ops, each feeding the next, run on k timesteps of one sequence (batch 1, float32):

    embed    v[t] = E[ids[t]]                                   E (V, D), ids (1, k) int32/int64 in [0, V)
    rnn      the layer's batch-1 stepper (_blas.Stepper._advance): k steps on v (k, I), state updated in place;
             v = every step's h (k, H) when return_sequences, else the last h (1, H) (and no rnn follows)
    dense    v[t] = act(v[t] @ W + b)                           W (F, U), b (U,) | none
             act: an _act.pxd code (apply_act) or SOFTMAX: e = exp(z - max(z)); e / sum(e) over the U values

The output is what the session's step returns: (1, k, U) float32 when the last recurrent op returns sequences,
else (1, U). Dense products: y = b; y += x @ W (fl_gemv_rowvec: serial AVX2/FMA, W read row-major) for float32
W; a float64 W (or b) is read as is and accumulated in float64, then rounded to float32.

Weights are never cached: every call reads the layers' current arrays (Dense and Embedding `_weights`, checked
for type, dtype, shape and contiguity, kept referenced while the GIL is released) and compares each recurrent
layer's `_cast` dict with the one its stepper was built from; on a change `renew()` (from the session) gives the
rebuilt stepper. So set_weights (new arrays), fit (in-place updates, new `_cast`) and float64 weights are all
seen on the next call. Anything the chain does not take (other input dtypes or shapes, ids out of range, a
padding id 0 of a mask_zero Embedding, weights of another dtype or layout, a layer without a stepper) is
refused before any state changes: `run` returns None and `step` hands x to `fallback` (the general path).
Each session owns its ChainStepper (steppers, scratch); the GIL is released for the whole computation.
"""
from cpython.ref cimport PyObject
from libc.math cimport expf
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy
cimport numpy as cnp

from fastlstm._kernels._act cimport GELU, apply_act
from fastlstm._kernels._blas cimport Stepper, fl_gemv_rowvec

cnp.import_array()

cdef enum:
    OP_EMBED = 0
    OP_RNN = 1
    OP_DENSE = 2
    SOFTMAX = -1            # a Dense activation code beside _act.pxd's


cdef struct ChainOp:
    int kind
    Py_ssize_t n_in, n_out          # embed: (V, D); rnn: (I, H); dense: (F, U)
    bint seq                        # rnn: return_sequences
    bint mask_zero                  # embed
    bint use_bias                   # dense
    int code                        # dense activation
    double alpha, beta
    # set on every call, with the GIL held
    const char *w                   # embed / dense weights: float32, or float64 when w64
    const char *b
    bint w64, b64
    PyObject *stepper               # rnn: borrowed from ChainStepper._steppers
    # scratch, owned
    float *out                      # (kcap, n_out)
    double *acc                     # dense with float64 weights: (n_out,)


cdef inline int _float_kind(cnp.ndarray a) noexcept:
    """0: float32, 1: float64 (native byte order, C-contiguous), -1: anything else"""
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISNOTSWAPPED(a):
        return -1
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        return 0
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT64:
        return 1
    return -1


cdef inline bint _is_array_2d(object w, Py_ssize_t n0, Py_ssize_t n1) noexcept:
    cdef cnp.ndarray a
    if not cnp.PyArray_Check(w):
        return False
    a = <cnp.ndarray>w
    return cnp.PyArray_NDIM(a) == 2 and cnp.PyArray_DIM(a, 0) == n0 and cnp.PyArray_DIM(a, 1) == n1


cdef void _dense_rows(ChainOp *op, const float *x, Py_ssize_t rows, float *y) noexcept nogil:
    """y (rows, U) = act(x (rows, F) @ W + b)"""
    cdef Py_ssize_t r, j, f, F = op.n_in, U = op.n_out
    cdef const float *w32 = <const float*>op.w
    cdef const double *w64 = <const double*>op.w
    cdef double *acc = op.acc
    cdef float *yr
    cdef const float *xr
    cdef float m, e
    cdef double s
    for r in range(rows):
        xr = x + r * F
        yr = y + r * U
        if op.w64:
            # acc = b + xr @ W   (float64)
            for j in range(U):
                acc[j] = 0.0
            if op.use_bias:
                for j in range(U):
                    acc[j] = (<const double*>op.b)[j] if op.b64 else (<const float*>op.b)[j]
            for f in range(F):
                for j in range(U):
                    acc[j] += <double>xr[f] * w64[f * U + j]
            for j in range(U):
                yr[j] = <float>acc[j]
        else:
            # yr = b + xr @ W   (float32)
            for j in range(U):
                yr[j] = 0
            if op.use_bias:
                for j in range(U):
                    yr[j] = <float>(<const double*>op.b)[j] if op.b64 else (<const float*>op.b)[j]
            fl_gemv_rowvec(<int>F, <int>U, xr, w32, <int>U, yr)
        if op.code == SOFTMAX:
            m = yr[0]
            for j in range(1, U):
                m = yr[j] if yr[j] > m else m
            s = 0.0
            for j in range(U):
                e = expf(yr[j] - m)
                yr[j] = e
                s += e
            e = <float>s
            for j in range(U):
                yr[j] = yr[j] / e
        else:
            apply_act(op.code, op.alpha, op.beta, <const float*>yr, yr, U)


cdef class ChainStepper:
    """k timesteps of a batch-1 chain model in one compiled call (see the module docstring).

    Parameters
    ----------
    ops : list of tuples, in chain order:
        ("embed", layer, V, D, mask_zero)                  first op only; layer._weights[0] is E (V, D)
        ("rnn", layer, renew, I, H, return_sequences)      renew() -> (layer._cast the stepper was made from,
                                                           the layer's _blas.Stepper or None)
        ("dense", layer, F, U, use_bias, code, alpha, beta)  layer._weights = [W (F, U), (b (U,))];
                                                           code: an _act.pxd code or -1 (softmax)
    token_input : bool
        Inputs are (1, k) token ids (the first op must be "embed"), else (1, k, n_in) float32.
    n_in : int
        Input features (float input).
    fallback : callable or None
        What `step` calls with x when the chain refuses it.
    """
    cdef ChainOp *ops
    cdef Py_ssize_t n_ops, kcap, n_in, n_out
    cdef bint token_input, seq_out
    cdef list _layers, _renew, _casts, _steppers, _held
    cdef public object fallback
    cdef readonly Py_ssize_t n_compiled, n_fallback      # calls taken here / handed to fallback

    def __cinit__(self, list ops not None, bint token_input, Py_ssize_t n_in, fallback=None):
        cdef Py_ssize_t i, width = n_in
        cdef ChainOp *op
        cdef bint seen_rnn = False
        self.n_ops = len(ops)
        if self.n_ops == 0:
            raise ValueError("ChainStepper: no ops")
        self.ops = <ChainOp*>realloc(NULL, self.n_ops * sizeof(ChainOp))
        if self.ops == NULL:
            raise MemoryError()
        for i in range(self.n_ops):
            self.ops[i].out = NULL
            self.ops[i].acc = NULL
        self.token_input, self.n_in, self.fallback = token_input, n_in, fallback
        self._layers, self._renew, self._casts, self._steppers, self._held = [], [], [], [], []
        self.seq_out = True
        for i, spec in enumerate(ops):
            op = &self.ops[i]
            kind, layer = spec[0], spec[1]
            op.stepper = NULL
            op.w = op.b = NULL
            op.w64 = op.b64 = False
            op.seq = op.mask_zero = op.use_bias = False
            op.code, op.alpha, op.beta = 0, 0.0, 0.0
            renew = None
            if kind == "embed":
                if i != 0 or not token_input:
                    raise ValueError("ChainStepper: an embed op must come first, on token input")
                op.kind = OP_EMBED
                op.n_in, op.n_out, op.mask_zero = spec[2], spec[3], spec[4]
            elif kind == "rnn":
                op.kind = OP_RNN
                renew = spec[2]
                op.n_in, op.n_out, op.seq = spec[3], spec[4], spec[5]
                if not self.seq_out:
                    raise ValueError("ChainStepper: a recurrent op after one without return_sequences")
                self.seq_out = op.seq
                seen_rnn = True
            elif kind == "dense":
                op.kind = OP_DENSE
                op.n_in, op.n_out, op.use_bias = spec[2], spec[3], spec[4]
                op.code, op.alpha, op.beta = spec[5], spec[6], spec[7]
                if op.code < SOFTMAX or op.code > GELU:
                    raise ValueError(f"ChainStepper: unknown activation code {op.code}")
            else:
                raise ValueError(f"ChainStepper: unknown op {kind!r}")
            if op.kind != OP_EMBED and op.n_in != width:
                raise ValueError(f"ChainStepper: op {i} ({kind}) takes {op.n_in} features, gets {width}")
            if op.n_out < 1 or (op.kind == OP_EMBED and op.n_in < 1):
                raise ValueError(f"ChainStepper: op {i} ({kind}) has an empty shape ({op.n_in}, {op.n_out})")
            width = op.n_out
            self._layers.append(layer)
            self._renew.append(renew)
            self._casts.append(None)
            self._steppers.append(None)
            self._held.append(None)
        if token_input and self.ops[0].kind != OP_EMBED:
            raise ValueError("ChainStepper: token input needs an embed op first")
        if not seen_rnn:
            raise ValueError("ChainStepper: no recurrent op")
        self.n_out = width
        self.kcap = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.ops != NULL:
            for i in range(self.n_ops):
                free(self.ops[i].out)
                free(self.ops[i].acc)
            free(self.ops)

    cdef bint _reserve(self, Py_ssize_t k) except -1:
        """scratch for k rows in every op"""
        cdef Py_ssize_t i
        cdef ChainOp *op
        cdef float *p
        if k <= self.kcap:
            return True
        for i in range(self.n_ops):
            op = &self.ops[i]
            p = <float*>realloc(op.out, k * op.n_out * sizeof(float))
            if p == NULL:
                raise MemoryError()
            op.out = p
        self.kcap = k
        return True

    cdef bint _bind_weights(self) except -1:
        """Point every op at its layer's current weights; False (nothing changed in the state) when some
        layer's weights cannot be taken here."""
        cdef Py_ssize_t i
        cdef ChainOp *op
        cdef object layer, ws, w, b, cast
        cdef Stepper st
        cdef int kw, kb
        for i in range(self.n_ops):
            op = &self.ops[i]
            layer = self._layers[i]
            if op.kind == OP_RNN:
                cast = layer._cast
                if cast is not self._casts[i]:         # new weights: the session rebuilds the stepper
                    cast, st_obj = self._renew[i]()
                    if st_obj is None:
                        return False
                    st = <Stepper?>st_obj
                    if st.n_in != op.n_in or st.units != op.n_out:
                        return False
                    self._casts[i] = cast
                    self._steppers[i] = st
                op.stepper = <PyObject*>self._steppers[i]
                continue
            ws = layer._weights
            if len(ws) < (2 if op.use_bias else 1):
                return False
            w = ws[0]
            if op.kind == OP_EMBED:
                if not cnp.PyArray_Check(w) or cnp.PyArray_NDIM(<cnp.ndarray>w) != 2 \
                        or cnp.PyArray_DIM(<cnp.ndarray>w, 1) != op.n_out:
                    return False
                op.n_in = cnp.PyArray_DIM(<cnp.ndarray>w, 0)      # V
            elif not _is_array_2d(w, op.n_in, op.n_out):
                return False
            kw = _float_kind(<cnp.ndarray>w)
            if kw < 0:
                return False
            op.w, op.w64 = <const char*>cnp.PyArray_DATA(<cnp.ndarray>w), kw == 1
            self._held[i] = w                           # alive while the GIL is released
            if op.kind == OP_DENSE:
                if op.use_bias:
                    b = ws[1]
                    if not cnp.PyArray_Check(b) or cnp.PyArray_NDIM(<cnp.ndarray>b) != 1 \
                            or cnp.PyArray_DIM(<cnp.ndarray>b, 0) != op.n_out:
                        return False
                    kb = _float_kind(<cnp.ndarray>b)
                    if kb < 0:
                        return False
                    op.b, op.b64 = <const char*>cnp.PyArray_DATA(<cnp.ndarray>b), kb == 1
                    self._held[i] = (w, b)
                if op.w64 and op.acc == NULL:
                    op.acc = <double*>realloc(NULL, op.n_out * sizeof(double))
                    if op.acc == NULL:
                        raise MemoryError()
        return True

    def run(self, x):
        """Advance over x ((1, k) int32/int64 ids, or (1, k, n_in) float32 C-contiguous; k >= 1). Returns a new
        float32 array, (1, k, U) or (1, U) (see the module docstring), or None, with no state changed, when the
        chain does not take x or the current weights."""
        cdef cnp.ndarray a, out
        cdef cnp.npy_intp dims[3]
        cdef Py_ssize_t k, t, i, j, rows, V, D, stride = 0
        cdef long long tok
        cdef const char *ids = NULL
        cdef const float *v
        cdef float *dst
        cdef ChainOp *op
        cdef ChainOp *first = &self.ops[0]
        cdef bint i64 = False
        cdef int typ
        if not cnp.PyArray_Check(x):
            return None
        a = <cnp.ndarray>x
        if self.token_input:
            typ = cnp.PyArray_TYPE(a)
            if cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIM(a, 0) != 1 or cnp.PyArray_DIM(a, 1) < 1 \
                    or (typ != cnp.NPY_INT and typ != cnp.NPY_LONG and typ != cnp.NPY_LONGLONG) \
                    or (cnp.PyArray_ITEMSIZE(a) != 4 and cnp.PyArray_ITEMSIZE(a) != 8) \
                    or not cnp.PyArray_ISNOTSWAPPED(a):
                return None
        elif cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a) \
                or cnp.PyArray_NDIM(a) != 3 or cnp.PyArray_DIM(a, 0) != 1 or cnp.PyArray_DIM(a, 2) != self.n_in \
                or cnp.PyArray_DIM(a, 1) < 1:
            return None
        k = cnp.PyArray_DIM(a, 1)
        if not self._bind_weights():
            return None
        if self.token_input:
            # every id in [0, V) (and no padding 0 for mask_zero) before any state changes
            ids = <const char*>cnp.PyArray_DATA(a)
            stride = cnp.PyArray_STRIDE(a, 1)
            i64 = cnp.PyArray_ITEMSIZE(a) == 8
            V = first.n_in
            for t in range(k):
                tok = (<const long long*>(ids + t * stride))[0] if i64 else (<const int*>(ids + t * stride))[0]
                if tok < 0 or tok >= V or (tok == 0 and first.mask_zero):
                    return None
        self._reserve(k)
        if self.seq_out:
            dims[0], dims[1], dims[2] = 1, k, self.n_out
            out = cnp.PyArray_EMPTY(3, dims, cnp.NPY_FLOAT32, 0)
        else:
            dims[0], dims[1] = 1, self.n_out
            out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        with nogil:
            rows = k
            v = <const float*>cnp.PyArray_DATA(a)
            for i in range(self.n_ops):
                op = &self.ops[i]
                dst = <float*>cnp.PyArray_DATA(out) if i == self.n_ops - 1 else op.out
                if op.kind == OP_EMBED:
                    D = op.n_out
                    for t in range(k):
                        tok = (<const long long*>(ids + t * stride))[0] if i64 else (<const int*>(ids + t * stride))[0]
                        if op.w64:
                            for j in range(D):
                                dst[t * D + j] = <float>(<const double*>op.w)[tok * D + j]
                        else:
                            memcpy(dst + t * D, (<const float*>op.w) + tok * D, D * sizeof(float))
                elif op.kind == OP_RNN:
                    if op.seq:
                        (<Stepper>op.stepper)._advance(v, rows, dst)
                    else:
                        (<Stepper>op.stepper)._advance(v, rows, NULL)
                        rows = 1
                        memcpy(dst, (<Stepper>op.stepper).h, op.n_out * sizeof(float))
                else:
                    _dense_rows(op, v, rows, dst)
                v = dst
        self.n_compiled += 1
        return out

    def step(self, x):
        """`run(x)`, or `fallback(x)` when the chain does not take x (None without a fallback)."""
        y = self.run(x)
        if y is None and self.fallback is not None:
            self.n_fallback += 1
            return self.fallback(x)
        return y

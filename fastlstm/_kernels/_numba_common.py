"""Jitted helpers shared by lstm_numba and gru_numba: activations by code (acts.py) and their derivatives,
row passes over contiguous 1-D views, GEMM glue, and a packed float32 GEMM for the per-step products.

float32 sigmoid/tanh avoid libm so that LLVM vectorises the gate passes (AVX2: 8 lanes):
    exp(x) = 2^n * e^r,  n = round(x / ln2),  r = x - n*ln2 (Cody-Waite split, |r| <= ln2/2),  x <= 0 only,
    e^r = Taylor series to r^7 (truncation < 5e-9, below float32 rounding),  2^n from the exponent bits.
    sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0,  e = exp(-|x|)
    tanh(x) = x P(x^2) / Q(x^2)  (rational fit, no exp: one division; relative accuracy kept near 0)
Max error against float64 math: sigmoid 2 ulp, tanh 6 ulp (near saturation). NaN propagates.
float64 keeps libm (math.exp / math.tanh). Every other code runs one element at a time in the data's precision.

Note on cache=True: Numba's cache keys on the caller's file only (a hash of its content, so touching it is not
enough); after editing this module, delete fastlstm/_kernels/__pycache__/{lstm,gru,step}_numba.*.nbi|*.nbc.
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..config import NUMBA_FLAGS
from .lstm_ref import time_major_views
from .acts import (AFFINE, ELU, EXPONENTIAL, GELU, HARD_SIGMOID, HARD_SILU, LEAKY_RELU, LINEAR, RELU, RELU6,
                   SCALED_TANH, SELU, SELU_ALPHA, SELU_SCALE, SIGMOID, SILU, SOFTPLUS, SOFTSIGN, TANH,
                   THRESHOLDED_RELU)

# float32 constants: with float32 operands they keep float32 math, with float64 ones they promote exactly
ZERO, HALF, ONE = np.float32(0), np.float32(0.5), np.float32(1)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)            # few mantissa bits: n * _LN2_HI is exact for |n| <= 128
_LN2_LO = np.float32(-2.12194440e-4)         # ln2 - _LN2_HI
_EXP_LO = np.float32(-103.97208)             # below: exp rounds to 0 (log of half the smallest subnormal)
_N_TINY, _N_SHIFT, _TWO_M32 = np.float32(-120), np.float32(32), np.float32(2.0 ** -32)
_SIG_EXP_LO, _SIG_EXP_HI = np.float32(-87.3), np.float32(80)    # the float32 sigmoid's exp argument range
_C2, _C3, _C4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
_C5, _C6, _C7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)
# tanh(x) = x P(u) / Q(u), u = x^2: rational fit of relative error 2e-8 on |x| <= 7.9053 (Sanathanan-Koerner
# iterations); float32 evaluation within 6 ulp (absolute error < 4e-7)
_TANH_CLAMP = np.float32(7.90531110763549805)
_TANH_ONE = np.float32(9.02)                 # float32 tanh is exactly +-1 from here on
_P0, _P1, _P2 = np.float32(0.9999999833794777), np.float32(0.12984654269423243), np.float32(0.0029918162233080864)
_P3, _P4 = np.float32(9.936437237956922e-06), np.float32(-1.4896948660747533e-08)
_P5 = np.float32(2.4077323468318923e-11)
_Q1, _Q2, _Q3 = np.float32(0.46317972128596807), np.float32(0.02405196196680968), np.float32(0.00023804689337359334)
_SQRT2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@intrinsic
def _pow2_f32(typingctx, n):
    """2**n as float32, n a float32 holding an integer in [-126, 127]: exponent bits (n + 127) << 23."""
    if n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.float32), codegen


@njit(**NUMBA_FLAGS)
def _exp_reduced(xc):
    """(n, p) with exp(xc) = p * 2^n: n = round(xc / ln2), p = exp(xc - n ln2) by Cody-Waite and the degree-7
    Taylor polynomial (float32 xc)."""
    n = np.floor(xc * _LOG2E + HALF)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    return n, ONE + r * (ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))


@njit(**NUMBA_FLAGS)
def _exp_f32(x):
    """exp(x) for float32 x <= 0, branch-free (vectorisable), within 2 ulp; gradual underflow to 0 like expf."""
    xc = x if x < ZERO else ZERO              # NaN -> 0 here (finite n for the bit trick), restored below
    xc = xc if xc > _EXP_LO else _EXP_LO
    n, p = _exp_reduced(xc)
    # 2^n for n in [-150, 0]: below -120 as 2^(n + 32) * 2^-32, so that the result rounds into the subnormals once
    tiny = n < _N_TINY
    e = p * _pow2_f32(n + _N_SHIFT if tiny else n)
    if tiny:
        e = e * _TWO_M32
    if x < _EXP_LO:
        e = ZERO
    if x != x:
        e = x
    return e


def sigmoid(x):
    """1 / (1 + exp(-x)) in x's precision (pure-Python body used only with NUMBA_DISABLE_JIT)."""
    e = math.exp(-abs(x))
    return type(x)(1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e))


def tanh(x):
    """tanh(x) in x's precision (pure-Python body used only with NUMBA_DISABLE_JIT)."""
    return type(x)(math.tanh(x))


@overload(sigmoid, jit_options=NUMBA_FLAGS)
def _sigmoid_impl(x):
    # e = exp(-|x|) never overflows: 1 / (1 + e) for x >= 0, e / (1 + e) below (as acts.py: keeps the subnormal tail)
    if x == types.float32:
        def impl(x):
            e = _exp_f32(-abs(x))
            d = ONE + e
            return ONE / d if x >= 0 else e / d
    else:
        def impl(x):
            e = math.exp(-abs(x))
            d = 1.0 + e
            return 1.0 / d if x >= 0 else e / d
    return impl


def sigmoid_gate(x):
    """The gate sigmoid of the default LSTM/GRU cells (pure-Python body used only with NUMBA_DISABLE_JIT)."""
    return sigmoid(x)


@overload(sigmoid_gate, jit_options=NUMBA_FLAGS)
def _sigmoid_gate_impl(x):
    # float32: 1 / (1 + exp(-x)) with the exp argument clamped to [-87.3, 80], as _act.pxd's sigmoid_fast (exactly
    # 1 from x >= 87.3, 1.8e-35 from x <= -80, NaN kept): no subnormal tail, so about half the operations of
    # sigmoid's full-range exp (the default cells' gate passes 1.4x faster). float64: sigmoid.
    if x == types.float32:
        def impl(x):
            xc = -x
            xc = _SIG_EXP_HI if xc > _SIG_EXP_HI else xc
            xc = _SIG_EXP_LO if xc < _SIG_EXP_LO else xc        # NaN fails both tests
            n, p = _exp_reduced(xc)
            return ONE / (ONE + p * _pow2_f32(n if n == n else ZERO))   # (a NaN n: undefined in the bit trick)
    else:
        def impl(x):
            return sigmoid(x)
    return impl


@overload(tanh, jit_options=NUMBA_FLAGS)
def _tanh_impl(x):
    if x == types.float32:
        def impl(x):
            # x P(x^2) / Q(x^2) on [-7.9053, 7.9053] (clamped beyond: within 6 ulp of 1), +-1 past 9.02; NaN kept
            xc = _TANH_CLAMP if x > _TANH_CLAMP else x
            xc = -_TANH_CLAMP if xc < -_TANH_CLAMP else xc
            u = xc * xc
            p = _P0 + u * (_P1 + u * (_P2 + u * (_P3 + u * (_P4 + u * _P5))))
            q = ONE + u * (_Q1 + u * (_Q2 + u * _Q3))
            r = xc * p / q
            if x >= _TANH_ONE:
                r = ONE
            if x <= -_TANH_ONE:
                r = -ONE
            return r
    else:
        def impl(x):
            return math.tanh(x)
    return impl


def cast_like(v, like):
    """v converted to the float type of `like` (an array: its dtype; a scalar: its type)."""
    return (like.dtype.type if isinstance(like, np.ndarray) else type(like))(v)


@overload(cast_like, jit_options=NUMBA_FLAGS)
def _cast_like_impl(v, like):
    ty = like.dtype if isinstance(like, types.Array) else like
    if ty == types.float32:
        return lambda v, like: np.float32(v)
    return lambda v, like: np.float64(v)


# act / dact compute in z's type, in the same operation order as acts.py under NumPy's promotion rules (a Python
# float meets a float32 array as float32), so that float32 results round like the reference's: recurrences with
# unbounded activations amplify every ulp. alpha, beta arrive as float64 (act_ab) and are cast here.
@njit(**NUMBA_FLAGS)
def act(code, alpha, beta, z):
    """a(z) for activation `code` (acts.py), one element, in z's precision."""
    al, be = cast_like(alpha, z), cast_like(beta, z)
    zero, half, one, three, six = (cast_like(0.0, z), cast_like(0.5, z), cast_like(1.0, z), cast_like(3.0, z),
                                   cast_like(6.0, z))
    if code == SIGMOID:
        return sigmoid_gate(z)
    if code == TANH:
        return tanh(z)
    if code == RELU:
        return zero if z <= 0 else z                         # -inf gives 0; NaN fails the test and stays NaN
    if code == LINEAR:
        return z
    if code == HARD_SIGMOID:
        return min(max(al * z + be, zero), one)
    if code == LEAKY_RELU:
        return z if z >= 0 else al * z
    if code == THRESHOLDED_RELU:
        return zero if z <= al else z
    if code == SCALED_TANH:
        return al * math.tanh(be * z)
    if code == AFFINE:
        return al * z + be
    if code == ELU:
        return z if z > 0 else al * math.expm1(min(z, zero))
    if code == SOFTSIGN:
        return z / (one + abs(z))
    if code == SOFTPLUS:
        return max(z, zero) + math.log1p(math.exp(-abs(z)))
    if code == SELU:
        return cast_like(SELU_SCALE, z) * (z if z > 0 else cast_like(SELU_ALPHA, z) * math.expm1(min(z, zero)))
    if code == SILU:
        return z * sigmoid(z)
    if code == EXPONENTIAL:
        return math.exp(z)
    if code == RELU6:
        return min(max(z, zero), six)
    if code == HARD_SILU:
        return z * min(max(z + three, zero), six) / six
    if code == GELU:
        return cast_like((half * z) * (1.0 + math.erf(float(z) / _SQRT2)), z)
    return cast_like(math.nan, z)


@njit(**NUMBA_FLAGS)
def dact(code, alpha, beta, z, a):
    """da/dz for activation `code` given z and a = a(z), one element, in z's precision."""
    ab64 = alpha * beta
    al, be = cast_like(alpha, z), cast_like(beta, z)
    zero, one, two, three, six = (cast_like(0.0, z), cast_like(1.0, z), cast_like(2.0, z), cast_like(3.0, z),
                                  cast_like(6.0, z))
    if code == SIGMOID:
        return a * (one - a)
    if code == TANH:
        return one - a * a
    if code == RELU:
        return one if z > 0 else zero
    if code == LINEAR:
        return one
    if code == HARD_SIGMOID:
        u = al * z + be
        return al if (u > 0 and u < 1) else zero
    if code == LEAKY_RELU:
        return one if z >= 0 else al
    if code == THRESHOLDED_RELU:
        return one if z > al else zero
    if code == SCALED_TANH:
        t = math.tanh(be * z)
        return cast_like(ab64, z) * (one - t * t)
    if code == AFFINE:
        return al
    if code == ELU:
        return one if z > 0 else a + al
    if code == SOFTSIGN:
        d = one + abs(z)
        return one / (d * d)
    if code == SOFTPLUS:
        return sigmoid(z)
    if code == SELU:
        return cast_like(SELU_SCALE, z) if z > 0 else a + cast_like(SELU_SCALE * SELU_ALPHA, z)
    if code == SILU:
        s = sigmoid(z)
        return s * (one + z * (one - s))
    if code == EXPONENTIAL:
        return a
    if code == RELU6:
        return one if (z > 0 and z < 6) else zero
    if code == HARD_SILU:
        if z <= -3:
            return zero
        if z >= 3:
            return one
        return (two * z + three) / six
    if code == GELU:
        zd = float(z)
        return cast_like(0.5 * (1.0 + math.erf(zd / _SQRT2)) + zd * math.exp(-0.5 * zd * zd) / _SQRT_2PI, z)
    return cast_like(math.nan, z)


@njit(**NUMBA_FLAGS)
def act_row(code, alpha, beta, z, out):
    """out = a(z)   (1-D views of one length; sigmoid/tanh vectorised)."""
    if code == SIGMOID:
        for j in range(z.shape[0]):
            out[j] = sigmoid_gate(z[j])
    elif code == TANH:
        for j in range(z.shape[0]):
            out[j] = tanh(z[j])
    else:
        for j in range(z.shape[0]):
            out[j] = act(code, alpha, beta, z[j])


@njit(**NUMBA_FLAGS)
def dact_row(code, alpha, beta, z, a, out):
    """out = a'(z) given the activations a = a(z)   (1-D views of one length)."""
    if code == SIGMOID:
        for j in range(z.shape[0]):
            out[j] = a[j] * (ONE - a[j])
    elif code == TANH:
        for j in range(z.shape[0]):
            out[j] = ONE - a[j] * a[j]
    else:
        for j in range(z.shape[0]):
            out[j] = dact(code, alpha, beta, z[j], a[j])


@njit(**NUMBA_FLAGS)
def clip_row(z, clip):
    """z = clip(z, -clip, clip) in place, NaN kept."""
    for j in range(z.shape[0]):
        v = z[j]
        if v > clip:
            z[j] = clip
        elif v < -clip:
            z[j] = -clip


@njit(**NUMBA_FLAGS)
def clip_grad_row(dz, z, clip):
    """dz *= (|z| < clip): no gradient through a clamped pre-activation."""
    for j in range(z.shape[0]):
        if not abs(z[j]) < clip:
            dz[j] = 0


@njit(**NUMBA_FLAGS)
def add_outer_product(out, a, b):
    """out += a.T @ b   (a (M, K), b (M, N), out (K, N); one GEMM plus an add)."""
    if a.shape[0] > 0 and a.shape[1] > 0:
        out += np.dot(a.T, b)


@njit(**NUMBA_FLAGS)
def add_hprev_outer(out, y, h0, d2, reverse):
    """out += sum over steps t of h_prev(t)^T @ d(t)   (two GEMMs over all steps).
    y (T, B, H) the forward outputs, h0 (B, H), d2 (T*B, K) rows in time order; out (H, K).
    h_prev(t) is y[t-1] (y[t+1] when reverse), h0 for the first processed step."""
    T, B, H = y.shape
    if T * B == 0:
        return
    n = (T - 1) * B
    if reverse:
        add_outer_product(out, h0, d2[n:])
        add_outer_product(out, y[1:].reshape(n, H), d2[:n])
    else:
        add_outer_product(out, h0, d2[:B])
        add_outer_product(out, y[:T - 1].reshape(n, H), d2[B:])


@njit(**NUMBA_FLAGS)
def add_column_sums(out, d2):
    """out += d2.sum(0), summed in float64."""
    acc = np.zeros(d2.shape[1])
    for n in range(d2.shape[0]):
        for j in range(d2.shape[1]):
            acc[j] += d2[n, j]
    for j in range(d2.shape[1]):
        out[j] += acc[j]


# ---- packed float32 GEMM for the per-step recurrent products ------------------------------------------------
# OpenBLAS packs its operands again on every call; for the small per-step products (B rows, B <= PACKED_MAX_ROWS)
# that costs as much as the multiply-adds. Here the fixed right operand W (K, N) is packed once per kernel call
# into 16-column panels Wp (N/16, K, 16), and each step runs a 6x16 register tile (12 AVX accumulators) over them:
#     C[i:i+6, 16p:16p+16] = A[i:i+6, :] @ Wp[p]
# A and C are padded to a multiple of 6 rows and C to a multiple of 16 columns, so every tile is full.
# One row (B == 1) is bound by how fast W streams from cache instead: W goes into 64-column panels
# (N/64, K, 64), read as one sequential stream by a 1x64 tile (8 accumulators), C padded to 64 columns.
PACKED_MAX_ROWS = 512
_PACKED_OK = not numba.config.DISABLE_JIT      # the tile is LLVM IR: no pure-Python version
TILE_ROWS, TILE_COLS = 6, 16
ROW_TILE_COLS = 64                             # the one-row tile's panel width
ONE_ROW_MIN_STEPS = 8                          # one row: packing pays from this many steps on
_K_CHUNK, _ROW_BLOCK = 256, 120


def _make_tile(accumulate, name, rows=TILE_ROWS, vecs=TILE_COLS // 8, prefetch_rows=0):
    """A rows x (8 vecs) tile as a Numba intrinsic tile(a, a0, lda, bp, b0, c, c0, ldc, k); accumulate: C +=
    instead of C =; prefetch_rows > 0: each step prefetches the Bp row that far ahead."""
    def tile(typingctx, a, a0, lda, bp, b0, c, c0, ldc, k):
        is_f32 = isinstance(a, types.Array) and a.dtype == types.float32
        return (types.void(a, a0, lda, bp, b0, c, c0, ldc, k),
                _tile_codegen(is_f32, accumulate, rows, vecs, prefetch_rows))
    tile.__name__ = tile.__qualname__ = name
    return intrinsic(tile)


def _tile_codegen(is_f32, accumulate, rows, vecs, prefetch_rows):
    """C[c0 + r*ldc + j] (+)= sum_k A[a0 + r*lda + k] * Bp[b0 + W*k + j]   for r < rows, j < W = 8 * vecs, k < K
    (float32 arrays; for other dtypes it does nothing: the kernels only call it on float32)."""
    width = 8 * vecs

    def codegen(context, builder, sig, args):
        if not is_f32:
            return context.get_dummy_value()
        i64, f32 = ir.IntType(64), ir.FloatType()
        vec = ir.VectorType(f32, 8)
        vptr = vec.as_pointer()
        a_data = context.make_array(sig.args[0])(context, builder, args[0]).data
        b_data = context.make_array(sig.args[3])(context, builder, args[3]).data
        c_data = context.make_array(sig.args[5])(context, builder, args[5]).data
        ext = [builder.sext(v, i64) if v.type.width < 64 else v for v in (args[1], args[2], args[4], args[6],
                                                                           args[7], args[8])]
        a_off, lda_v, b_off, c_off, ldc_v, k_n = ext
        a_ptr = builder.gep(a_data, [a_off])
        b_ptr = builder.gep(b_data, [b_off])
        c_ptr = builder.gep(c_data, [c_off])
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                                 "llvm.fmuladd.v8f32")
        zero = ir.Constant(vec, [0.0] * 8)
        bcast = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
        undef = ir.Constant(vec, ir.Undefined)
        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", k_n, ir.Constant(i64, 0)), loop, done)
        # for k: acc[r] += A[r, k] * Bp[k, 0:width]
        builder.position_at_end(loop)
        kk = builder.phi(i64)
        acc = [builder.phi(vec) for _ in range(rows * vecs)]
        kk.add_incoming(ir.Constant(i64, 0), entry)
        for v in acc:
            v.add_incoming(zero, entry)
        brow = builder.gep(b_ptr, [builder.mul(kk, ir.Constant(i64, width))])
        if prefetch_rows:       # the Bp row prefetch_rows ahead, line by line (read, keep in L1)
            i8, i32 = ir.IntType(8), ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0")
            for line in range(0, width, 16):
                ahead = builder.gep(brow, [ir.Constant(i64, prefetch_rows * width + line)])
                builder.call(prefetch, [builder.bitcast(ahead, i8.as_pointer()), ir.Constant(i32, 0),
                                        ir.Constant(i32, 3), ir.Constant(i32, 1)])
        b_vecs = [builder.load(builder.bitcast(builder.gep(brow, [ir.Constant(i64, 8 * h)]), vptr), align=4)
                  for h in range(vecs)]
        new = []
        for r in range(rows):
            a_rk = builder.load(builder.gep(a_ptr, [builder.add(builder.mul(ir.Constant(i64, r), lda_v), kk)]))
            a_v = builder.shuffle_vector(builder.insert_element(undef, a_rk, ir.Constant(ir.IntType(32), 0)),
                                         undef, bcast)
            for h in range(vecs):
                new.append(builder.call(fmuladd, [a_v, b_vecs[h], acc[vecs * r + h]]))
        k_next = builder.add(kk, ir.Constant(i64, 1))
        loop_end = builder.block
        kk.add_incoming(k_next, loop_end)
        for v, n in zip(acc, new):
            v.add_incoming(n, loop_end)
        builder.cbranch(builder.icmp_signed("<", k_next, k_n), loop, done)
        # C tile = acc
        builder.position_at_end(done)
        res = []
        for n in new:
            v = builder.phi(vec)
            v.add_incoming(zero, entry)
            v.add_incoming(n, loop_end)
            res.append(v)
        for r in range(rows):
            row = builder.gep(c_ptr, [builder.mul(ir.Constant(i64, r), ldc_v)])
            for h in range(vecs):
                dst = builder.bitcast(builder.gep(row, [ir.Constant(i64, 8 * h)]), vptr)
                val = res[vecs * r + h]
                if accumulate:
                    val = builder.fadd(builder.load(dst, align=4), val)
                builder.store(val, dst, align=4)
        return context.get_dummy_value()

    return codegen


_tile_6x16 = _make_tile(False, "_tile_6x16")
_tile_6x16_acc = _make_tile(True, "_tile_6x16_acc")
# one row over a 64-column panel read as one stream, prefetched 8 rows (2 KiB) ahead: 5-7% faster at H=512, where
# the weights stream from L3 (step_numba's steppers, measured)
_tile_1x64 = _make_tile(False, "_tile_1x64", rows=1, vecs=ROW_TILE_COLS // 8, prefetch_rows=8)


@njit(**NUMBA_FLAGS)
def pack_panels(w, transpose, out):
    """out[p, k, j] = W[k, Wd*p + j] (0 past N), W = w (K, N) or, with transpose, w.T (w (N, K)).
    out (ceil(N / Wd), K, Wd), Wd the panel width (16, or 64 for one row)."""
    P, K, Wd = out.shape
    N = w.shape[0] if transpose else w.shape[1]
    for p in range(P):
        for k in range(K):
            for j in range(Wd):
                n = p * Wd + j
                if n >= N:
                    out[p, k, j] = 0
                elif transpose:
                    out[p, k, j] = w[n, k]
                else:
                    out[p, k, j] = w[k, n]


@njit(**NUMBA_FLAGS)
def packed_matmul(a, wp, c):
    """c = a @ W with W packed by pack_panels: a (Mp, K), wp (P, K, 16), c (Mp, >= 16P); Mp % 6 == 0, float32.
    K in chunks of 256 (a panel chunk, 16 KiB, stays in L1 while the row tiles pass it), rows in blocks of 120
    (an A block, 120 KiB, stays in L2 while the panels pass it)."""
    Mp, K = a.shape
    P = wp.shape[0]
    ldc = c.shape[1]
    for k0 in range(0, K, _K_CHUNK):
        kc = min(_K_CHUNK, K - k0)
        for i0 in range(0, Mp, _ROW_BLOCK):
            i1 = min(i0 + _ROW_BLOCK, Mp)
            for p in range(P):
                for i in range(i0, i1, TILE_ROWS):
                    if k0 == 0:
                        _tile_6x16(a, i * K, K, wp, (p * K + k0) * TILE_COLS, c, i * ldc + p * TILE_COLS, ldc, kc)
                    else:
                        _tile_6x16_acc(a, i * K + k0, K, wp, (p * K + k0) * TILE_COLS, c, i * ldc + p * TILE_COLS,
                                       ldc, kc)


@njit(**NUMBA_FLAGS)
def padded_rows(n):
    """n rounded up to a whole number of 6-row tiles."""
    return (n + TILE_ROWS - 1) // TILE_ROWS * TILE_ROWS


@njit(**NUMBA_FLAGS)
def padded_cols(n):
    """n rounded up to whole 16-column panels."""
    return (n + TILE_COLS - 1) // TILE_COLS * TILE_COLS


NOT_PACKED, ROWS_PACKED, ONE_ROW_PACKED = 0, 1, 2


@njit(**NUMBA_FLAGS)
def use_packed(arr, B, T):
    """How the per-step products run (float32 only): ROWS_PACKED (6x16 tiles) for 2 <= B <= PACKED_MAX_ROWS and
    T >= 2, ONE_ROW_PACKED (1x64 tile) for B == 1 and T >= ONE_ROW_MIN_STEPS (packing costs a few products),
    else NOT_PACKED (np.dot). False/True are accepted wherever a mode is, as NOT_PACKED/ROWS_PACKED."""
    if not _PACKED_OK or arr.itemsize != 4:
        return NOT_PACKED
    if 2 <= B <= PACKED_MAX_ROWS and T >= 2:
        return ROWS_PACKED
    if B == 1 and T >= ONE_ROW_MIN_STEPS:
        return ONE_ROW_PACKED
    return NOT_PACKED


@njit(**NUMBA_FLAGS)
def pack_for_steps(w, transpose, packed):
    """W = w (K, N) or w.T packed into panels for step_matmul (mode `packed`, see use_packed); (0, K, 16) when
    not packed."""
    K = w.shape[1] if transpose else w.shape[0]
    N = w.shape[0] if transpose else w.shape[1]
    width = ROW_TILE_COLS if packed == ONE_ROW_PACKED else TILE_COLS
    P = (N + width - 1) // width if packed else 0
    # 64-byte aligned, so that no 32-byte load of a panel row spans two cache lines (10-15% on batch-1 steps)
    raw = np.empty(P * K * width + 64, w.dtype)
    skip = ((64 - raw.ctypes.data % 64) % 64) // raw.itemsize
    wp = raw[skip:skip + P * K * width].reshape((P, K, width))
    if packed:
        pack_panels(w, transpose, wp)
    return wp


class KeptPanels:
    """Recurrent weights packed by pack_for_steps, kept across kernel calls for a caller whose weights do not
    change between calls (the Numba twin of the Cython backend's WeightPacks; see fastlstm._kernels.kernel_kw).
    Keyed by the array's identity, layout and dtype: the caller keeps the array alive and unchanged."""

    def __init__(self):
        self._kept = {}

    def panels(self, w, like, B, T):
        """w (K, N) packed for B rows over T steps (use_packed's mode), or no_panels when not packed."""
        mode = use_packed(like, B, T)
        if not mode:
            return no_panels(like)
        key = (id(w), w.shape, w.dtype.str, mode)
        hit = self._kept.get(key)
        if hit is None:     # (w is kept with its panels, so its id cannot pass to another array meanwhile)
            hit = self._kept[key] = (w, pack_for_steps(w, False, mode))
        return hit[1]

    def __len__(self):
        return len(self._kept)


def input_on_panels(rows, N):
    """Whether an input product of `rows` rows and N columns runs on kept 16-column panels (input_matmul): a
    one-request sequence (8 < rows < 128, as the Cython kernels) and whole panels (N % 16 == 0)."""
    return 8 < rows < 128 and N % TILE_COLS == 0


@njit(**NUMBA_FLAGS)
def input_matmul(x, w, wp, out):
    """out = x @ w (x (M, K), out (M, N)): through packed_matmul when wp holds w's 16-column panels
    (input_on_panels; the last partial 6-row tile on zero-padded copies), else np.dot."""
    M = x.shape[0]
    if wp.shape[0] == 0:
        np.dot(x, w, out)
        return
    m6 = M // TILE_ROWS * TILE_ROWS
    if m6 > 0:
        packed_matmul(x[:m6], wp, out[:m6])
    if m6 < M:
        a_tail = np.zeros((TILE_ROWS, x.shape[1]), x.dtype)
        c_tail = np.empty((TILE_ROWS, out.shape[1]), out.dtype)
        a_tail[:M - m6] = x[m6:]
        packed_matmul(a_tail, wp, c_tail)
        out[m6:] = c_tail[:M - m6]


def no_panels(like):
    """The (0, 1, 16) array that tells a kernel to pack for itself."""
    return np.empty((0, 1, TILE_COLS), like.dtype)


@njit(**NUMBA_FLAGS)
def step_buffer(B, N, packed, like):
    """Output scratch of a per-step product: (B, N), or (zeros) padded to whole tiles when packed."""
    if packed == ONE_ROW_PACKED:
        return np.zeros((B, (N + ROW_TILE_COLS - 1) // ROW_TILE_COLS * ROW_TILE_COLS), like.dtype)
    if packed:
        return np.zeros((padded_rows(B), padded_cols(N)), like.dtype)
    return np.zeros((B, N), like.dtype)


@njit(**NUMBA_FLAGS)
def step_input_buffer(B, K, packed, like):
    """Left-operand scratch of a per-step product: (B, K), or (zeros) padded to whole 6-row tiles when packed
    in row tiles."""
    return np.zeros((padded_rows(B) if packed == ROWS_PACKED else B, K), like.dtype)


@njit(**NUMBA_FLAGS)
def gemv_panels(x, wp, y, back):
    """y[:64P] = x (K,) @ W, W packed (P, K, 64) by pack_panels, y padded to whole panels; the panels last to first
    when `back` (alternate it from product to product: each sweep then starts on the panels the previous one left
    in cache)."""
    P, K = wp.shape[0], wp.shape[1]
    for q in range(P):
        p = P - 1 - q if back else q
        _tile_1x64(x, 0, K, wp, p * K * ROW_TILE_COLS, y, p * ROW_TILE_COLS, 0, K)


@njit(**NUMBA_FLAGS)
def lstm_gates_general(z, c_prev, c_new, gate, p, f_code, f_a, f_b, g_code, g_a, g_b, clip, input_forget):
    """The general LSTM gate pass of one row after z (4H,) = x_t @ w_x + h_prev @ w_h + b: peepholes (p (3, H),
    else (0, H)) and clip (> 0) applied to z in place; gate (4H,) = the activated i, f, g, o; c_new = f * c_prev +
    i * g (c_new may be c_prev). The caller forms h = o * a_h(c_new)."""
    H = c_prev.shape[0]
    zi, zf, zg, zo = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:4 * H]
    gi, gf, gg, go = gate[:H], gate[H:2 * H], gate[2 * H:3 * H], gate[3 * H:4 * H]
    peep = p.shape[0] > 0
    if peep:
        for j in range(H):
            zi[j] += p[0, j] * c_prev[j]
            zf[j] += p[1, j] * c_prev[j]
    if clip > 0:
        clip_row(z[:3 * H], clip)
    act_row(f_code, f_a, f_b, zi, gi)
    if input_forget:
        for j in range(H):
            gf[j] = ONE - gi[j]
    else:
        act_row(f_code, f_a, f_b, zf, gf)
    act_row(g_code, g_a, g_b, zg, gg)
    for j in range(H):
        c_new[j] = gf[j] * c_prev[j] + gi[j] * gg[j]
    if peep:
        for j in range(H):
            zo[j] += p[2, j] * c_new[j]
    if clip > 0:
        clip_row(zo, clip)
    act_row(f_code, f_a, f_b, zo, go)


@njit(**NUMBA_FLAGS)
def step_matmul(a, w, wp, a_pad, copy_a, out, back=False):
    """out = a @ w for one step: packed tiles when wp holds panels, else np.dot. a (B, K); out (B, N), or
    (Mp, Np) when packed: rows >= B and columns >= N are padding. Packed, the tiles read a_pad (Mp, K): a is
    copied into it when copy_a, else a is a_pad already (its padding rows zero). One row: the 64-column panels
    last to first when `back` (alternate it from step to step: each sweep then starts on the panels the previous
    one left in cache)."""
    if wp.shape[0] > 0:
        if copy_a:
            a_pad[:a.shape[0]] = a
        if wp.shape[2] == ROW_TILE_COLS:      # one row: out[0, 64p:64p+64] = a[0] @ Wp[p]
            gemv_panels(a_pad[0], wp, out[0], back)
        else:
            packed_matmul(a_pad, wp, out)
    elif a.shape[0] == 1:
        np.dot(a[0], w, out[0])          # one row: a matrix-vector product (BLAS gemv)
    else:
        np.dot(a, w, out)


def as_time_major(x, z_ws, y_out, gates_out):
    """A batch_major call's (B, T, .) arrays for the njit kernels, which index C-contiguous time-major ones:
    copies of x and (projected input, I == 0) z_ws, a fresh z_ws otherwise, and a fresh y; the caller copies y
    back into y_out.transpose(1, 0, 2)."""
    xv, zv = time_major_views(True, gates_out, x, z_ws)
    z = np.ascontiguousarray(zv) if x.shape[2] == 0 else np.empty(zv.shape, z_ws.dtype)
    return np.ascontiguousarray(xv), z, np.empty(xv.shape[:2] + y_out.shape[2:], y_out.dtype)

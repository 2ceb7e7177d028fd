"""Activations a(z) and derivatives da/dz by code, inline and nogil for the kernels: same math as acts.py.

    act(code, alpha, beta, z)          a(z)          (acts.activate)
    dact(code, alpha, beta, z, a)      da/dz         (acts.derivative), given z and a = a(z)
    apply_act / apply_dact             the same over n contiguous values, the switch hoisted out of the loop
    sigmoid_fast / tanh_fast           the default activations; float32 versions are branch-free so that
                                       gcc vectorises a loop over them (libm expf/tanhf calls do not)

float32 exp (exp_f32): exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n*ln2 in [-ln2/2, ln2/2]
(Cody-Waite split of ln2), exp(r) by its degree-7 Taylor polynomial (truncation < 1e-8 relative),
2^n built in the exponent bits, for x in [-87.3, 88.37] (the caller clamps; true overflow: 88.72). Max error
about 2 ulp. float32 sigmoid (sigmoid_fast) clamps its exp argument -z to [-87.3, 80] (two min/max, cheaper than
saturating exp's result): exactly 1 from z >= 87.3, 1.8e-35 (not a subnormal) from z <= -80.
float32 tanh (tanh_fast): z P(z^2) / Q(z^2), a rational fit (no exp; the Numba backend's, 2-4% faster kernels
than 1 - 2 / (1 + exp(2z)) in A/B runs). Comparisons against the clamp bounds are written so that NaN fails
them and flows through: a NaN input gives a NaN output, as in NumPy.
float64 uses libm exp/tanh: the float64 tolerance (rtol 1e-9) leaves no room for approximations.
"""
from libc.math cimport erf, exp, expf, fmaf, expm1, expm1f, fabs, log1p, log1pf, tanh, tanhf
from cython cimport floating

cdef enum:
    SIGMOID = 0
    TANH = 1
    RELU = 2
    LINEAR = 3
    HARD_SIGMOID = 4
    LEAKY_RELU = 5
    THRESHOLDED_RELU = 6
    SCALED_TANH = 7
    AFFINE = 8
    ELU = 9
    SOFTSIGN = 10
    SOFTPLUS = 11
    SELU = 12
    SILU = 13
    EXPONENTIAL = 14
    RELU6 = 15
    HARD_SILU = 16
    GELU = 17


cdef union F32Bits:
    float f
    unsigned int u


cdef inline float exp_f32(float x) noexcept nogil:
    """exp(x) in float32 without branches for x in [-87.3, 88.37] or NaN (see the module docstring)."""
    cdef F32Bits scale
    cdef float t, n, r, p
    # 1.5 * 2^23 added: the float rounds x/ln2 to an integer held in its low mantissa bits
    t = x * <float>1.44269504088896341 + <float>12582912.0
    n = t - <float>12582912.0
    # fmaf: one rounding per step (gcc emits vfmadd and vectorises it)
    r = fmaf(n, <float>-0.693359375, x)                # ln2 = 0.693359375 - 2.12194440e-4 (Cody-Waite)
    r = fmaf(n, <float>2.12194440e-4, r)
    p = <float>(1.0 / 5040.0)
    p = fmaf(p, r, <float>(1.0 / 720.0))
    p = fmaf(p, r, <float>(1.0 / 120.0))
    p = fmaf(p, r, <float>(1.0 / 24.0))
    p = fmaf(p, r, <float>(1.0 / 6.0))
    p = fmaf(p, r, <float>0.5)
    p = fmaf(p, r, 1)
    p = fmaf(p, r, 1)
    # the low 9 bits of t's integer pattern hold n (+ 0x4B400000 whose shift drops out): 2^n = (n + 127) << 23
    scale.f = t
    scale.u = (scale.u << 23) + <unsigned int>0x3F800000
    return p * scale.f


cdef inline floating sigmoid_fast(floating z) noexcept nogil:
    """1 / (1 + exp(-z))"""
    cdef float x
    if floating is float:
        # -z clamped to [-87.3, 80] (NaN fails both tests and flows through)
        x = -z
        x = <float>80 if x > <float>80 else x
        x = <float>-87.3 if x < <float>-87.3 else x
        return <float>1 / (<float>1 + exp_f32(x))
    else:
        return 1 / (1 + exp(-z))


cdef inline floating tanh_fast(floating z) noexcept nogil:
    """tanh(z); float32: z P(z^2) / Q(z^2), a rational fit of relative error 2e-8 on |z| <= 7.9053 (clamped
    beyond, within 6 ulp of 1; exactly +-1 from 9.02 on; NaN kept), the same as the Numba backend's: no exp,
    one division, so it is cheaper than 1 - 2 / (1 + exp(2z))"""
    cdef float zc, u, p, q, r
    if floating is float:
        zc = <float>7.90531110763549805 if z > <float>7.90531110763549805 else z
        zc = <float>-7.90531110763549805 if zc < <float>-7.90531110763549805 else zc
        u = zc * zc
        p = <float>0.9999999833794777 + u * (<float>0.12984654269423243 + u * (<float>0.0029918162233080864
            + u * (<float>9.936437237956922e-06 + u * (<float>-1.4896948660747533e-08
            + u * <float>2.4077323468318923e-11))))
        q = <float>1 + u * (<float>0.46317972128596807 + u * (<float>0.02405196196680968
            + u * <float>0.00023804689337359334))
        r = zc * p / q
        r = <float>1 if z >= <float>9.02 else r
        return <float>-1 if z <= <float>-9.02 else r
    else:
        return tanh(z)


cdef inline floating _exp(floating z) noexcept nogil:
    if floating is float:
        return expf(z)
    else:
        return exp(z)


cdef inline floating _expm1(floating z) noexcept nogil:
    if floating is float:
        return expm1f(z)
    else:
        return expm1(z)


cdef inline floating _tanh(floating z) noexcept nogil:
    if floating is float:
        return tanhf(z)
    else:
        return tanh(z)


cdef inline floating _log1p(floating z) noexcept nogil:
    if floating is float:
        return log1pf(z)
    else:
        return log1p(z)


cdef inline floating sigmoid_libm(floating z) noexcept nogil:
    """1 / (1 + e^-z) as acts.py writes it: e = exp(-|z|) never overflows"""
    cdef floating e = _exp(-<floating>fabs(z))
    return <floating>1 / (<floating>1 + e) if z >= 0 else e / (<floating>1 + e)


# act and dact round like NumPy on an array of the kernel's dtype: Python-float parameters are cast to
# that dtype first (NEP 50) and every operation rounds in it; gelu alone is computed in float64 (acts.py).
# Only sigmoid and tanh take the fast versions: the general-path tests include recurrences that amplify
# single-ulp differences, so the others follow acts.py operation by operation.
cdef inline floating act(int code, double alpha, double beta, floating z) noexcept nogil:
    """a(z) for one activation code (acts.activate)."""
    cdef floating u
    if code == SIGMOID:
        return sigmoid_fast(z)
    elif code == TANH:
        return tanh_fast(z)
    elif code == RELU:
        return 0 if z <= 0 else z                      # -inf gives 0; NaN fails the test and stays NaN
    elif code == LINEAR:
        return z
    elif code == HARD_SIGMOID:
        u = <floating>alpha * z + <floating>beta
        u = 0 if u < 0 else u
        return 1 if u > 1 else u
    elif code == LEAKY_RELU:
        return z if z >= 0 else <floating>alpha * z
    elif code == THRESHOLDED_RELU:
        return 0 if z <= <floating>alpha else z
    elif code == SCALED_TANH:
        return <floating>alpha * _tanh(<floating>beta * z)
    elif code == AFFINE:
        return <floating>alpha * z + <floating>beta
    elif code == ELU:
        return z if z > 0 else <floating>alpha * _expm1(z)
    elif code == SOFTSIGN:
        return z / (<floating>1 + <floating>fabs(z))
    elif code == SOFTPLUS:
        # log(1 + e^z) = max(z, 0) + log1p(e^-|z|): no overflow (NumPy's logaddexp(0, z))
        return z + _log1p(_exp(-z)) if z > 0 else _log1p(_exp(z))
    elif code == SELU:
        return <floating>1.0507009873554804934193349852946 * (
            z if z > 0 else <floating>1.6732632423543772848170429916717 * _expm1(z))
    elif code == SILU:
        return z * sigmoid_libm(z)
    elif code == EXPONENTIAL:
        return _exp(z)
    elif code == RELU6:
        z = 0 if z < 0 else z
        return 6 if z > 6 else z
    elif code == HARD_SILU:
        u = z + <floating>3
        u = 0 if u < 0 else u
        u = 6 if u > 6 else u
        return z * u / <floating>6
    else:  # GELU, in float64
        return <floating>(0.5 * z * (1.0 + erf(<double>z / 1.4142135623730951)))


cdef inline floating dact(int code, double alpha, double beta, floating z, floating a) noexcept nogil:
    """da/dz given z and a = a(z) (acts.derivative)."""
    cdef floating u, s
    if code == SIGMOID:
        return a * (<floating>1 - a)
    elif code == TANH:
        return <floating>1 - a * a
    elif code == RELU:
        return 1 if z > 0 else 0
    elif code == LINEAR:
        return 1
    elif code == HARD_SIGMOID:
        u = <floating>alpha * z + <floating>beta
        return <floating>alpha if u > 0 and u < 1 else 0
    elif code == LEAKY_RELU:
        return 1 if z >= 0 else <floating>alpha
    elif code == THRESHOLDED_RELU:
        return 1 if z > <floating>alpha else 0
    elif code == SCALED_TANH:
        u = _tanh(<floating>beta * z)
        return <floating>(alpha * beta) * (<floating>1 - u * u)
    elif code == AFFINE:
        return <floating>alpha
    elif code == ELU:
        return 1 if z > 0 else a + <floating>alpha
    elif code == SOFTSIGN:
        u = <floating>1 + <floating>fabs(z)
        return <floating>1 / (u * u)
    elif code == SOFTPLUS:
        return sigmoid_libm(z)
    elif code == SELU:
        return (<floating>1.0507009873554804934193349852946 if z > 0 else
                a + <floating>(1.0507009873554804934193349852946 * 1.6732632423543772848170429916717))
    elif code == SILU:
        s = sigmoid_libm(z)
        return s * (<floating>1 + z * (<floating>1 - s))
    elif code == EXPONENTIAL:
        return a
    elif code == RELU6:
        return 1 if z > 0 and z < 6 else 0
    elif code == HARD_SILU:
        if z <= -3:
            return 0
        return 1 if z >= 3 else (<floating>2 * z + <floating>3) / <floating>6
    else:  # GELU: Phi(z) + z * phi(z), in float64
        return <floating>(0.5 * (1.0 + erf(<double>z / 1.4142135623730951)) +
                          <double>z * exp(-0.5 * z * z) / 2.5066282746310002)


cdef inline void apply_act(int code, double alpha, double beta, const floating* z, floating* out,
                           Py_ssize_t n) noexcept nogil:
    """out[:n] = a(z[:n]); the common codes get their own (vectorisable) loops."""
    cdef Py_ssize_t j
    cdef floating u, lo, hi, al, be
    if code == SIGMOID:
        for j in range(n):
            out[j] = sigmoid_fast(z[j])
    elif code == TANH:
        for j in range(n):
            out[j] = tanh_fast(z[j])
    elif code == HARD_SIGMOID:
        al = <floating>alpha
        be = <floating>beta
        for j in range(n):
            u = al * z[j] + be
            u = 0 if u < 0 else u
            out[j] = 1 if u > 1 else u
    elif code == LINEAR:
        for j in range(n):
            out[j] = z[j]
    else:
        for j in range(n):
            out[j] = act(code, alpha, beta, z[j])


cdef inline void apply_dact(int code, double alpha, double beta, const floating* z, const floating* a,
                            floating* out, Py_ssize_t n) noexcept nogil:
    """out[:n] = da/dz at z[:n], a[:n] = a(z[:n])."""
    cdef Py_ssize_t j
    if code == SIGMOID:
        for j in range(n):
            out[j] = a[j] * (<floating>1 - a[j])
    elif code == TANH:
        for j in range(n):
            out[j] = <floating>1 - a[j] * a[j]
    else:
        for j in range(n):
            out[j] = dact(code, alpha, beta, z[j], a[j])


cdef inline void clip_inplace(floating* z, Py_ssize_t n, floating clip) noexcept nogil:
    """z[:n] = clip(z[:n], -clip, clip)   (NaN stays NaN)"""
    cdef Py_ssize_t j
    for j in range(n):
        z[j] = -clip if z[j] < -clip else z[j]
        z[j] = clip if z[j] > clip else z[j]


cdef inline void clip_grad(floating* dz, const floating* z, Py_ssize_t n, floating clip) noexcept nogil:
    """dz[:n] *= |z[:n]| < clip   (z holds the clipped pre-activations: a clipped value has zero slope)"""
    cdef Py_ssize_t j
    for j in range(n):
        dz[j] = dz[j] * (1 if fabs(z[j]) < clip else 0)

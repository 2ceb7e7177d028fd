"""Activations a(z) and derivatives da/dz by code, inline and nogil for the kernels: same math as acts.py.

    act(code, alpha, beta, z)          a(z)          (acts.activate)
    dact(code, alpha, beta, z, a)      da/dz         (acts.derivative), given z and a = a(z)
    apply_act / apply_dact             the same over n contiguous values, the switch hoisted out of the loop
    sigmoid_fast / tanh_fast           the default activations; float32 versions are branch-free so that
                                       gcc vectorises a loop over them (libm expf/tanhf calls do not)

float32 exp (exp_f32): exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n*ln2 in [-ln2/2, ln2/2]
(Cody-Waite split of ln2), exp(r) by its degree-7 Taylor polynomial (truncation < 1e-8 relative),
2^n built in the exponent bits. Max error about 2 ulp. Comparisons against the clamp bounds are written
so that NaN fails them and flows through: a NaN input gives a NaN output, as in NumPy.
float64 uses libm exp/tanh: the float64 tolerance (rtol 1e-9) leaves no room for approximations.
"""
from libc.math cimport erf, exp, expm1, fabs, log1p, tanh
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
    """exp(x) in float32 without branches (see the module docstring)."""
    cdef F32Bits scale
    cdef float t, n, r, p
    x = <float>88.3 if x > <float>88.3 else x          # exp(88.3) < FLT_MAX; NaN fails both tests
    x = <float>-87.3 if x < <float>-87.3 else x        # keeps 2^n normal
    # 1.5 * 2^23 added: the float rounds x/ln2 to an integer held in its low mantissa bits
    t = x * <float>1.44269504088896341 + <float>12582912.0
    n = t - <float>12582912.0
    r = x - n * <float>0.693359375                      # ln2 = 0.693359375 - 2.12194440e-4 (Cody-Waite)
    r = r + n * <float>2.12194440e-4
    p = <float>(1.0 / 5040.0)
    p = p * r + <float>(1.0 / 720.0)
    p = p * r + <float>(1.0 / 120.0)
    p = p * r + <float>(1.0 / 24.0)
    p = p * r + <float>(1.0 / 6.0)
    p = p * r + <float>0.5
    p = p * r + 1
    p = p * r + 1
    # the low 9 bits of t's integer pattern hold n (+ 0x4B400000 whose shift drops out): 2^n = (n + 127) << 23
    scale.f = t
    scale.u = (scale.u << 23) + <unsigned int>0x3F800000
    return p * scale.f


cdef inline floating sigmoid_fast(floating z) noexcept nogil:
    """1 / (1 + exp(-z))"""
    if floating is float:
        return 1 / (1 + exp_f32(-z))
    else:
        return 1 / (1 + exp(-z))


cdef inline floating tanh_fast(floating z) noexcept nogil:
    """tanh(z); float32: 1 - 2 / (1 + exp(2z)) (absolute error ~1e-7 near 0, exact saturation)"""
    if floating is float:
        return 1 - 2 / (1 + exp_f32(2 * z))
    else:
        return tanh(z)


cdef inline floating act(int code, double alpha, double beta, floating z) noexcept nogil:
    """a(z) for one activation code (acts.activate)."""
    cdef double u
    if code == SIGMOID:
        return sigmoid_fast(z)
    elif code == TANH:
        return tanh_fast(z)
    elif code == RELU:
        return z if z > 0 else z * 0                   # z * 0 keeps NaN
    elif code == LINEAR:
        return z
    elif code == HARD_SIGMOID:
        u = alpha * z + beta
        u = 0.0 if u < 0.0 else u
        return <floating>(1.0 if u > 1.0 else u)
    elif code == LEAKY_RELU:
        return z if z >= 0 else <floating>(alpha * z)
    elif code == THRESHOLDED_RELU:
        return z if z > alpha else z * 0
    elif code == SCALED_TANH:
        return <floating>(alpha * tanh(beta * z))
    elif code == AFFINE:
        return <floating>(alpha * z + beta)
    elif code == ELU:
        return z if z > 0 else <floating>(alpha * expm1(z))
    elif code == SOFTSIGN:
        return z / (1 + fabs(z))
    elif code == SOFTPLUS:
        # log(1 + e^z) = max(z, 0) + log1p(e^-|z|): no overflow
        return <floating>((z if z > 0 else 0.0) + log1p(exp(-fabs(z))))
    elif code == SELU:
        return <floating>(1.0507009873554804934193349852946 *
                          (z if z > 0 else 1.6732632423543772848170429916717 * expm1(z)))
    elif code == SILU:
        return z * sigmoid_fast(z)
    elif code == EXPONENTIAL:
        return <floating>exp(z)
    elif code == RELU6:
        z = 0 if z < 0 else z
        return 6 if z > 6 else z
    elif code == HARD_SILU:
        u = z + 3.0
        u = 0.0 if u < 0.0 else u
        u = 6.0 if u > 6.0 else u
        return <floating>(z * u / 6.0)
    else:  # GELU
        return <floating>(0.5 * z * (1.0 + erf(z * 0.70710678118654752440)))


cdef inline floating dact(int code, double alpha, double beta, floating z, floating a) noexcept nogil:
    """da/dz given z and a = a(z) (acts.derivative)."""
    cdef double u, s
    if code == SIGMOID:
        return a * (1 - a)
    elif code == TANH:
        return 1 - a * a
    elif code == RELU:
        return 1 if z > 0 else 0
    elif code == LINEAR:
        return 1
    elif code == HARD_SIGMOID:
        u = alpha * z + beta
        return <floating>(alpha if u > 0.0 and u < 1.0 else 0.0)
    elif code == LEAKY_RELU:
        return 1 if z >= 0 else <floating>alpha
    elif code == THRESHOLDED_RELU:
        return 1 if z > alpha else 0
    elif code == SCALED_TANH:
        u = tanh(beta * z)
        return <floating>(alpha * beta * (1.0 - u * u))
    elif code == AFFINE:
        return <floating>alpha
    elif code == ELU:
        return 1 if z > 0 else <floating>(a + alpha)
    elif code == SOFTSIGN:
        u = 1.0 + fabs(z)
        return <floating>(1.0 / (u * u))
    elif code == SOFTPLUS:
        return sigmoid_fast(z)
    elif code == SELU:
        return <floating>(1.0507009873554804934193349852946 if z > 0 else
                          a + 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717)
    elif code == SILU:
        s = sigmoid_fast(z)
        return <floating>(s * (1.0 + z * (1.0 - s)))
    elif code == EXPONENTIAL:
        return a
    elif code == RELU6:
        return 1 if z > 0 and z < 6 else 0
    elif code == HARD_SILU:
        if z <= -3:
            return 0
        return 1 if z >= 3 else <floating>((2.0 * z + 3.0) / 6.0)
    else:  # GELU: Phi(z) + z * phi(z)
        return <floating>(0.5 * (1.0 + erf(z * 0.70710678118654752440)) +
                          z * exp(-0.5 * z * z) * 0.39894228040143267794)


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
            out[j] = a[j] * (1 - a[j])
    elif code == TANH:
        for j in range(n):
            out[j] = 1 - a[j] * a[j]
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

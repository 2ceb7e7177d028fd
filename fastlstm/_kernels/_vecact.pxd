"""AVX2 versions of _act.pxd's float32 exp_f32, sigmoid_fast and tanh_fast, 8 lanes at a time, for the hand-scheduled
LSTM code (lstm_cy: fl_lstm_units_step and the gate passes fl_lstm_fwd_row, fl_lstm_bwd_row). They perform the same operations in the same order (separate multiply and
add where _act.pxd writes a * b + c, since the extension builds with -ffp-contract=off; FMA where it calls fmaf),
so they give bit-identical results; tests/test_kernels.py checks that through the two step paths.
FL_VECACT is 0 without AVX2 + FMA at compile time; the functions are then not defined.
"""

cdef extern from *:
    """
    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>
    #define FL_VECACT 1

    /* exp_f32 for x in [-87.3, 88.37] or NaN: n = round(x / ln2) (1.5 * 2^23 trick), r = x - n ln2 (Cody-Waite),
       degree-7 Taylor polynomial, times 2^n from the exponent bits */
    static inline __attribute__((always_inline)) __m256 fl_exp8(__m256 x) {
        const __m256 big = _mm256_set1_ps(12582912.0f);
        __m256 t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps((float)1.44269504088896341)), big);
        __m256 n = _mm256_sub_ps(t, big);
        __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
        r = _mm256_fmadd_ps(n, _mm256_set1_ps((float)2.12194440e-4), r);
        __m256 p = _mm256_set1_ps((float)(1.0 / 5040.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps((float)(1.0 / 720.0)));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps((float)(1.0 / 120.0)));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps((float)(1.0 / 24.0)));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps((float)(1.0 / 6.0)));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        __m256i bits = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23), _mm256_set1_epi32(0x3F800000));
        return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    }

    /* sigmoid_fast: 1 / (1 + exp(x)), x = -z clamped to [-87.3, 80]; min/max return their second operand when
       it is NaN, as the scalar clamps do */
    static inline __attribute__((always_inline)) __m256 fl_sigmoid8(__m256 z) {
        const __m256 one = _mm256_set1_ps(1.0f);
        __m256 x = _mm256_min_ps(_mm256_set1_ps(80.0f), _mm256_xor_ps(z, _mm256_set1_ps(-0.0f)));
        x = _mm256_max_ps(_mm256_set1_ps((float)-87.3), x);
        return _mm256_div_ps(one, _mm256_add_ps(one, fl_exp8(x)));
    }

    /* tanh_fast: zc P(zc^2) / Q(zc^2), zc = z clamped to +-7.90531110763549805; exactly +-1 from |z| >= 9.02 */
    static inline __attribute__((always_inline)) __m256 fl_tanh8(__m256 z) {
        const __m256 cl = _mm256_set1_ps((float)7.90531110763549805), ncl = _mm256_set1_ps((float)-7.90531110763549805);
        __m256 zc = _mm256_max_ps(ncl, _mm256_min_ps(cl, z));
        __m256 u = _mm256_mul_ps(zc, zc);
        #define FL_MA(a, b, c) _mm256_add_ps(_mm256_mul_ps(a, b), c)
        __m256 p = FL_MA(u, _mm256_set1_ps((float)2.4077323468318923e-11), _mm256_set1_ps((float)-1.4896948660747533e-08));
        p = FL_MA(u, p, _mm256_set1_ps((float)9.936437237956922e-06));
        p = FL_MA(u, p, _mm256_set1_ps((float)0.0029918162233080864));
        p = FL_MA(u, p, _mm256_set1_ps((float)0.12984654269423243));
        p = FL_MA(u, p, _mm256_set1_ps((float)0.9999999833794777));
        __m256 q = FL_MA(u, _mm256_set1_ps((float)0.00023804689337359334), _mm256_set1_ps((float)0.02405196196680968));
        q = FL_MA(u, q, _mm256_set1_ps((float)0.46317972128596807));
        q = FL_MA(u, q, _mm256_set1_ps(1.0f));
        #undef FL_MA
        __m256 r = _mm256_div_ps(_mm256_mul_ps(zc, p), q);
        r = _mm256_blendv_ps(r, _mm256_set1_ps(1.0f), _mm256_cmp_ps(z, _mm256_set1_ps((float)9.02), _CMP_GE_OQ));
        return _mm256_blendv_ps(r, _mm256_set1_ps(-1.0f), _mm256_cmp_ps(z, _mm256_set1_ps((float)-9.02), _CMP_LE_OQ));
    }
    #else
    #define FL_VECACT 0
    #endif
    """
    int FL_VECACT

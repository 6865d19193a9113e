/* The horizontal sum of eight floats, shared by the AVX2 files (avx2.c,
 * quant_avx2.c); include only from a file compiled with -mavx2. */
#ifndef OFFLOOP_KERNELS_AVX2_HSUM_H
#define OFFLOOP_KERNELS_AVX2_HSUM_H

#include <immintrin.h>

static inline float
hsum(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

#endif /* OFFLOOP_KERNELS_AVX2_HSUM_H */

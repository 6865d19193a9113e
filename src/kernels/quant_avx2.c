/* Quantized scans, AVX2 + FMA (compiled with -mavx2 -mfma; run only when
 * dispatch.c has seen both in CPUID).
 *
 * Codes are widened to float32 in registers (int8: sign-extend and
 * convert; bfloat16: zero-extend and shift into the top half) and
 * multiplied with the float32 query by FMA.  A row's codes are widened
 * once per block of queries, which is what makes the multi-query block
 * pay: 2 rows x 6 queries use 12 accumulators of the 16 registers (every
 * loop over them fully unrolled: a rolled one indexes acc[][] at run time
 * and pins it to the stack, as avx2.c says).  The
 * last d % 8 elements take a scalar tail: a masked byte load does not
 * exist in AVX2.
 */
#include <immintrin.h>

#include "quant.h"

static float
hsum(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline __m256
load8_bf16(const void *m, size_t j)
{
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)m + j));
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float
elem_bf16(const void *m, size_t j)
{
    return ol__bf16_to_f32(((const uint16_t *)m)[j]);
}

static inline __m256
load8_int8(const void *m, size_t j)
{
    __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)m + j));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

static inline float
elem_int8(const void *m, size_t j)
{
    return (float)((const int8_t *)m)[j];
}

static inline __m256
load8_f32(const void *m, size_t j)
{
    return _mm256_loadu_ps((const float *)m + j);
}

static inline float
elem_f32(const void *m, size_t j)
{
    return ((const float *)m)[j];
}

#define RB 2
#define QB 6

#define QUANT_AVX2_FUNCS(T)                                                 \
    static inline float dot_##T(const float *q, const void *m, size_t d)   \
    {                                                                      \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;        \
        size_t j = 0;                                                      \
        float tail = 0.0f;                                                 \
        for (; j + 32 <= d; j += 32) {                                     \
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), load8_##T(m, j),  \
                                 a0);                                      \
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8),               \
                                 load8_##T(m, j + 8), a1);                 \
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 16),              \
                                 load8_##T(m, j + 16), a2);                \
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 24),              \
                                 load8_##T(m, j + 24), a3);                \
        }                                                                  \
        for (; j + 8 <= d; j += 8) {                                       \
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), load8_##T(m, j),  \
                                 a0);                                      \
        }                                                                  \
        for (; j < d; j++) {                                               \
            tail += q[j] * elem_##T(m, j);                                 \
        }                                                                  \
        return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1),                   \
                                  _mm256_add_ps(a2, a3))) +                \
               tail;                                                       \
    }                                                                      \
    static void block_##T(const void *const *mr, const float *const *qi,   \
                          size_t d, float *dots)                           \
    {                                                                      \
        __m256 acc[QB][RB];                                                \
        float tail[QB][RB] = {{0}};                                        \
        size_t j = 0;                                                      \
        int i, r;                                                          \
        _Pragma("GCC unroll 8")                                            \
        for (i = 0; i < QB; i++) {                                         \
            acc[i][0] = acc[i][1] = _mm256_setzero_ps();                   \
        }                                                                  \
        for (; j + 8 <= d; j += 8) {                                       \
            __m256 m0 = load8_##T(mr[0], j), m1 = load8_##T(mr[1], j);     \
            _Pragma("GCC unroll 6") for (i = 0; i < QB; i++)               \
            {                                                              \
                __m256 qv = _mm256_loadu_ps(qi[i] + j);                    \
                acc[i][0] = _mm256_fmadd_ps(qv, m0, acc[i][0]);            \
                acc[i][1] = _mm256_fmadd_ps(qv, m1, acc[i][1]);            \
            }                                                              \
        }                                                                  \
        for (; j < d; j++) {                                               \
            _Pragma("GCC unroll 8")                                        \
            for (i = 0; i < QB; i++) {                                     \
                _Pragma("GCC unroll 8")                                    \
                for (r = 0; r < RB; r++) {                                 \
                    tail[i][r] += qi[i][j] * elem_##T(mr[r], j);           \
                }                                                          \
            }                                                              \
        }                                                                  \
        _Pragma("GCC unroll 8")                                            \
        for (i = 0; i < QB; i++) {                                         \
            _Pragma("GCC unroll 8")                                        \
            for (r = 0; r < RB; r++) {                                     \
                dots[i * OL__RB_MAX + r] = hsum(acc[i][r]) + tail[i][r];   \
            }                                                              \
        }                                                                  \
    }

QUANT_AVX2_FUNCS(bf16)
QUANT_AVX2_FUNCS(int8)
QUANT_AVX2_FUNCS(f32)

/* Widen a row's codes to float32 (the scan's decoded tile). */
static void
decode_bf16(const void *m, size_t d, float *out)
{
    size_t j = 0;

    for (; j + 8 <= d; j += 8) {
        _mm256_storeu_ps(out + j, load8_bf16(m, j));
    }
    for (; j < d; j++) {
        out[j] = elem_bf16(m, j);
    }
}

static void
decode_int8(const void *m, size_t d, float *out)
{
    size_t j = 0;

    for (; j + 8 <= d; j += 8) {
        _mm256_storeu_ps(out + j, load8_int8(m, j));
    }
    for (; j < d; j++) {
        out[j] = elem_int8(m, j);
    }
}

static const ol__qscan_ops bf16_ops = {dot_bf16,    block_bf16, RB, QB, 2,
                                       decode_bf16, block_f32};
static const ol__qscan_ops int8_ops = {dot_int8,    block_int8, RB, QB, 1,
                                       decode_int8, block_f32};

OL__QSCAN_FUNCS(bf16_ops, int8_ops)

const ol__qkernel_table ol__qkernels_avx2 = {scan_bf16, scan_int8};

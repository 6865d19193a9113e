/* Quantized scans, AVX-512F (compiled with -mavx512f -mavx2 -mfma; run
 * only when dispatch.c has seen all three in CPUID).
 *
 * As quant_avx2.c, 16 lanes wide: codes widened to float32 in registers
 * and multiplied with the float32 query by FMA.  The 32 registers allow
 * 4 rows x 6 queries (24 accumulators).  The last d % 16 elements take a
 * scalar tail: masked byte and word loads need AVX-512BW, which this file
 * does not assume.
 */
#include <immintrin.h>

#include "quant.h"

static inline __m512
load16_bf16(const void *m, size_t j)
{
    __m256i h =
        _mm256_loadu_si256((const __m256i *)((const uint16_t *)m + j));
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline float
elem_bf16(const void *m, size_t j)
{
    return ol__bf16_to_f32(((const uint16_t *)m)[j]);
}

static inline __m512
load16_int8(const void *m, size_t j)
{
    __m128i b = _mm_loadu_si128((const __m128i *)((const int8_t *)m + j));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

static inline float
elem_int8(const void *m, size_t j)
{
    return (float)((const int8_t *)m)[j];
}

static inline __m512
load16_f32(const void *m, size_t j)
{
    return _mm512_loadu_ps((const float *)m + j);
}

static inline float
elem_f32(const void *m, size_t j)
{
    return ((const float *)m)[j];
}

#define RB 4
#define QB 6

#define QUANT_AVX512_FUNCS(T)                                               \
    static inline float dot_##T(const float *q, const void *m, size_t d)   \
    {                                                                      \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;        \
        size_t j = 0;                                                      \
        float tail = 0.0f;                                                 \
        for (; j + 64 <= d; j += 64) {                                     \
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j),                   \
                                 load16_##T(m, j), a0);                    \
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 16),              \
                                 load16_##T(m, j + 16), a1);               \
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 32),              \
                                 load16_##T(m, j + 32), a2);               \
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 48),              \
                                 load16_##T(m, j + 48), a3);               \
        }                                                                  \
        for (; j + 16 <= d; j += 16) {                                     \
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j),                   \
                                 load16_##T(m, j), a0);                    \
        }                                                                  \
        for (; j < d; j++) {                                               \
            tail += q[j] * elem_##T(m, j);                                 \
        }                                                                  \
        return _mm512_reduce_add_ps(_mm512_add_ps(                         \
                   _mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))) +        \
               tail;                                                       \
    }                                                                      \
    static void block_##T(const void *const *mr, const float *const *qi,   \
                          size_t d, float *dots)                           \
    {                                                                      \
        __m512 acc[QB][RB];                                                \
        float tail[QB][RB] = {{0}};                                        \
        size_t j = 0;                                                      \
        int i, r;                                                          \
        _Pragma("GCC unroll 8")                                            \
        for (i = 0; i < QB; i++) {                                         \
            _Pragma("GCC unroll 8")                                        \
            for (r = 0; r < RB; r++) {                                     \
                acc[i][r] = _mm512_setzero_ps();                           \
            }                                                              \
        }                                                                  \
        for (; j + 16 <= d; j += 16) {                                     \
            __m512 m0 = load16_##T(mr[0], j), m1 = load16_##T(mr[1], j);   \
            __m512 m2 = load16_##T(mr[2], j), m3 = load16_##T(mr[3], j);   \
            _Pragma("GCC unroll 6") for (i = 0; i < QB; i++)               \
            {                                                              \
                __m512 qv = _mm512_loadu_ps(qi[i] + j);                    \
                acc[i][0] = _mm512_fmadd_ps(qv, m0, acc[i][0]);            \
                acc[i][1] = _mm512_fmadd_ps(qv, m1, acc[i][1]);            \
                acc[i][2] = _mm512_fmadd_ps(qv, m2, acc[i][2]);            \
                acc[i][3] = _mm512_fmadd_ps(qv, m3, acc[i][3]);            \
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
                dots[i * OL__RB_MAX + r] =                                 \
                    _mm512_reduce_add_ps(acc[i][r]) + tail[i][r];          \
            }                                                              \
        }                                                                  \
    }

QUANT_AVX512_FUNCS(bf16)
QUANT_AVX512_FUNCS(int8)
QUANT_AVX512_FUNCS(f32)

/* Widen a row's codes to float32 (the scan's decoded tile). */
static void
decode_bf16(const void *m, size_t d, float *out)
{
    size_t j = 0;

    for (; j + 16 <= d; j += 16) {
        _mm512_storeu_ps(out + j, load16_bf16(m, j));
    }
    for (; j < d; j++) {
        out[j] = elem_bf16(m, j);
    }
}

static void
decode_int8(const void *m, size_t d, float *out)
{
    size_t j = 0;

    for (; j + 16 <= d; j += 16) {
        _mm512_storeu_ps(out + j, load16_int8(m, j));
    }
    for (; j < d; j++) {
        out[j] = elem_int8(m, j);
    }
}

static const ol__qscan_ops bf16_ops = {
    .dot = dot_bf16,
    .block = block_bf16,
    .rb = RB,
    .qb = QB,
    .esize = 2,
    .decode = decode_bf16,
    .fblock = block_f32,
};
static const ol__qscan_ops int8_ops = {
    .dot = dot_int8,
    .block = block_int8,
    .rb = RB,
    .qb = QB,
    .esize = 1,
    .decode = decode_int8,
    .fblock = block_f32,
};

OL__QSCAN_FUNCS(bf16_ops, int8_ops)

const ol__qkernel_table ol__qkernels_avx512 = {scan_bf16, scan_int8};

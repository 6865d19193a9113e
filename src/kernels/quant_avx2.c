/* Quantized scans, AVX2 + FMA (compiled with -mavx2 -mfma; run only when
 * dispatch.c has seen both in CPUID).
 *
 * Codes are widened to float32 in registers (int8: sign-extend and
 * convert; bfloat16: zero-extend and shift into the top half) and
 * multiplied with the float32 query by FMA.  A row's codes are widened
 * once per block of queries, which is what makes the multi-query block
 * pay: 3 rows x 4 queries use 12 accumulators of the 16 registers (every
 * loop over them fully unrolled: a rolled one indexes acc[][] at run time
 * and pins it to the stack, as avx2.c says).  The
 * last d % 8 elements take a scalar tail: a masked byte load does not
 * exist in AVX2.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "avx2_hsum.h"
#include "quant.h"

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

/* The multi-query block: 3 rows x 4 queries, as avx2.c's (12
 * accumulators, 3 row and 1 query registers).  2 x 6 measured 0.6-0.7x
 * float32's scan at 64 queries: GCC folded each query load into both
 * FMAs, 14 loads per 12 FMAs, past the two 256-bit loads a cycle. */
#define RB 3
#define QB 4

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
            acc[i][0] = acc[i][1] = acc[i][2] = _mm256_setzero_ps();       \
        }                                                                  \
        for (; j + 8 <= d; j += 8) {                                       \
            __m256 m0 = load8_##T(mr[0], j), m1 = load8_##T(mr[1], j);     \
            __m256 m2 = load8_##T(mr[2], j);                               \
            _Pragma("GCC unroll 4") for (i = 0; i < QB; i++)               \
            {                                                              \
                __m256 qv = _mm256_loadu_ps(qi[i] + j);                    \
                acc[i][0] = _mm256_fmadd_ps(qv, m0, acc[i][0]);            \
                acc[i][1] = _mm256_fmadd_ps(qv, m1, acc[i][1]);            \
                acc[i][2] = _mm256_fmadd_ps(qv, m2, acc[i][2]);            \
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

/* One query over int8 rows, in integers.  The float loop pays, per 8
 * codes, a widening, a conversion and an FMA whose latency chains bound
 * it; here, per 16 codes, a sign extension to 16 bits and one vpmaddwd
 * against the query rounded once to 16-bit integers, summed in 32-bit
 * lanes.  The query's step is chosen so that no lane can overflow (a
 * lane sums ceil(d / 16) pairs of products of at most 128 * qmax: codes
 * loaded from a file may hold -128, though quantize writes -127..127),
 * and qmax = 32767 up to d = 4096: the rounding moves a score by at
 * most sum|code * scale| * max|q| / (2 qmax), far below the int8 codes'
 * own error (half a code step per element).  A query with a NaN or an
 * infinity is left to the float loop (NULL). */
typedef struct {
    float unstep; /* query value = integer * unstep */
    int16_t q[];  /* d values, then zeros to a multiple of 16 */
} int8_query;

static void *
prepare_int8(const float *q, size_t d)
{
    size_t groups = (d + 15) / 16, j;
    float amax = 0.0f;
    double qmax;
    int8_query *p;

    for (j = 0; j < d; j++) {
        float a = q[j] < 0.0f ? -q[j] : q[j];
        amax = a > amax ? a : amax; /* NaN never compares greater */
    }
    for (j = 0; j < d; j++) {
        if (q[j] - q[j] != 0.0f) {
            return NULL; /* NaN or infinity */
        }
    }
    qmax = (double)INT32_MAX / (256.0 * (double)groups);
    qmax = qmax > 32767.0 ? 32767.0 : (double)(long)qmax;
    if (qmax < 1.0 ||
        (p = calloc(1, sizeof(*p) + groups * 16 * sizeof(int16_t))) == NULL) {
        return NULL;
    }
    p->unstep = (float)((double)amax / qmax);
    for (j = 0; j < d && amax > 0.0f; j++) { /* a zero query stays zeros */
        p->q[j] = (int16_t)lrint((double)q[j] * qmax / (double)amax);
    }
    return p;
}

/* The sum of eight 32-bit lanes, which may not fit 32 bits: taken in
 * double, where it is exact. */
static inline double
hsum_epi32(__m256i v)
{
    __m256d h = _mm256_add_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(v)),
                              _mm256_cvtepi32_pd(_mm256_extracti128_si256(v, 1)));
    __m128d h2 = _mm_add_pd(_mm256_castpd256_pd128(h),
                            _mm256_extractf128_pd(h, 1));
    h2 = _mm_add_sd(h2, _mm_unpackhi_pd(h2, h2));
    return _mm_cvtsd_f64(h2);
}

/* Prefetch distance of the one-query int8 loop, in bytes of codes (four
 * 768-d rows): measured 1.08-1.15x without it, 1 and 2 threads, 200,000
 * x 768.  The same in the bfloat16 loop measured 0.9x, and in the
 * float32 one-query scan 0.8x: their rows are long enough for the
 * hardware prefetcher. */
#define PF_AHEAD 3072

static float
pdot_int8(const void *prepared, const void *m, size_t d)
{
    const int8_query *p = prepared;
    const int8_t *c = m;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
    size_t j = 0;
    int64_t sum = 0;

    for (; j + 32 <= d; j += 32) {
        _mm_prefetch((const char *)(c + j) + PF_AHEAD, _MM_HINT_T0);
        __m256i c0 = _mm256_cvtepi8_epi16(
            _mm_loadu_si128((const __m128i *)(c + j)));
        __m256i c1 = _mm256_cvtepi8_epi16(
            _mm_loadu_si128((const __m128i *)(c + j + 16)));
        a0 = _mm256_add_epi32(
            a0, _mm256_madd_epi16(
                    c0, _mm256_loadu_si256((const __m256i *)(p->q + j))));
        a1 = _mm256_add_epi32(
            a1, _mm256_madd_epi16(c1, _mm256_loadu_si256(
                                          (const __m256i *)(p->q + j + 16))));
    }
    for (; j + 16 <= d; j += 16) {
        __m256i c0 = _mm256_cvtepi8_epi16(
            _mm_loadu_si128((const __m128i *)(c + j)));
        a0 = _mm256_add_epi32(
            a0, _mm256_madd_epi16(
                    c0, _mm256_loadu_si256((const __m256i *)(p->q + j))));
    }
    for (; j < d; j++) {
        sum += (int64_t)c[j] * p->q[j];
    }
    /* a0 + a1 lane by lane stays within the bound (each lane sums at
     * most ceil(d / 16) pairs). */
    return (float)((hsum_epi32(_mm256_add_epi32(a0, a1)) + (double)sum) *
                   p->unstep);
}

/* One query over bfloat16 rows.  Read as 32-bit words, 16 codes hold the
 * odd elements in their top halves (a mask makes them floats) and the
 * even ones in their bottom halves (a shift does): per 16 codes one load,
 * one mask, one shift and two FMAs, against the query reordered once to
 * match (per group of 16: its 8 even elements, then its 8 odd ones),
 * instead of two widening loads, two shifts and two FMAs. */
typedef struct {
    size_t groups;
    const float *q; /* the caller's query, for the d % 16 tail */
    float g[];      /* groups * 16 reordered values */
} bf16_query;

static void *
prepare_bf16(const float *q, size_t d)
{
    size_t groups = d / 16, g, k;
    bf16_query *p = malloc(sizeof(*p) + groups * 16 * sizeof(float));

    if (p == NULL) {
        return NULL;
    }
    p->groups = groups;
    p->q = q;
    for (g = 0; g < groups; g++) {
        for (k = 0; k < 8; k++) {
            p->g[g * 16 + k] = q[g * 16 + 2 * k];
            p->g[g * 16 + 8 + k] = q[g * 16 + 2 * k + 1];
        }
    }
    return p;
}

static float
pdot_bf16(const void *prepared, const void *m, size_t d)
{
    const bf16_query *p = prepared;
    const uint16_t *c = m;
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t g = 0, j;
    float tail = 0.0f;

    /* Four FMA chains: eight (the FMA latency times its issue rate)
     * measured no faster, within this host's noise of +-10%. */
#define BF16_STEP(v, qg, e, o)                                              \
    e = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),     \
                        _mm256_loadu_ps(qg), e);                           \
    o = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, hi)),      \
                        _mm256_loadu_ps((qg) + 8), o)
    for (; g + 2 <= p->groups; g += 2) {
        const uint16_t *cg = c + g * 16;
        const float *qg = p->g + g * 16;
        __m256i v0 = _mm256_loadu_si256((const __m256i *)cg);
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(cg + 16));
        BF16_STEP(v0, qg, a0, a1);
        BF16_STEP(v1, qg + 16, a2, a3);
    }
    for (; g < p->groups; g++) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(c + g * 16));
        BF16_STEP(v0, p->g + g * 16, a0, a1);
    }
#undef BF16_STEP
    for (j = p->groups * 16; j < d; j++) {
        tail += p->q[j] * elem_bf16(m, j);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) +
           tail;
}

static const ol__qscan_ops bf16_ops = {
    .dot = dot_bf16,
    .block = block_bf16,
    .rb = RB,
    .qb = QB,
    .esize = 2,
    .decode = decode_bf16,
    .fblock = block_f32,
    .prepare = prepare_bf16,
    .pdot = pdot_bf16,
};
static const ol__qscan_ops int8_ops = {
    .dot = dot_int8,
    .block = block_int8,
    .rb = RB,
    .qb = QB,
    .esize = 1,
    .decode = decode_int8,
    .fblock = block_f32,
    .prepare = prepare_int8,
    .pdot = pdot_int8,
};

OL__QSCAN_FUNCS(bf16_ops, int8_ops)

const ol__qkernel_table ol__qkernels_avx2 = {scan_bf16, scan_int8};

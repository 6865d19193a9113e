/* AVX2 + FMA kernels (compiled with -mavx2 -mfma; run only when
 * dispatch.c has seen both in CPUID).
 *
 * Sums keep 4 or more independent vector accumulators so that FMA latency
 * (4 cycles, 2 per cycle) is hidden, and the last d % 8 elements go
 * through a masked load so every length runs the same code, without a
 * scalar tail and without reading past the end of a row.
 */
#include <immintrin.h>

#include "avx2_hsum.h"
#include "internal.h"

/* Lanes [0, n) set, for a masked load of the last n < 8 elements. */
static __m256i
tail_mask(size_t n)
{
    static const int32_t bits[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                     0,  0,  0,  0,  0,  0,  0,  0};
    return _mm256_loadu_si256((const __m256i *)(bits + 8 - n));
}

static float
dot_sumsq(const float *q, const float *m, size_t d, float *sumsq)
{
    __m256 d0 = _mm256_setzero_ps(), d1 = d0, d2 = d0, d3 = d0;
    __m256 s0 = d0, s1 = d0, s2 = d0, s3 = d0;
    size_t j = 0;

    for (; j + 32 <= d; j += 32) {
        __m256 m0 = _mm256_loadu_ps(m + j), m1 = _mm256_loadu_ps(m + j + 8);
        __m256 m2 = _mm256_loadu_ps(m + j + 16);
        __m256 m3 = _mm256_loadu_ps(m + j + 24);
        d0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), m0, d0);
        d1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), m1, d1);
        d2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 16), m2, d2);
        d3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 24), m3, d3);
        s0 = _mm256_fmadd_ps(m0, m0, s0);
        s1 = _mm256_fmadd_ps(m1, m1, s1);
        s2 = _mm256_fmadd_ps(m2, m2, s2);
        s3 = _mm256_fmadd_ps(m3, m3, s3);
    }
    for (; j + 8 <= d; j += 8) {
        __m256 m0 = _mm256_loadu_ps(m + j);
        d0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), m0, d0);
        s0 = _mm256_fmadd_ps(m0, m0, s0);
    }
    if (j < d) {
        __m256i k = tail_mask(d - j);
        __m256 m0 = _mm256_maskload_ps(m + j, k);
        d1 = _mm256_fmadd_ps(_mm256_maskload_ps(q + j, k), m0, d1);
        s1 = _mm256_fmadd_ps(m0, m0, s1);
    }
    *sumsq = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    return hsum(_mm256_add_ps(_mm256_add_ps(d0, d1), _mm256_add_ps(d2, d3)));
}

static float
sumsq(const float *m, size_t d)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t j = 0;

    for (; j + 32 <= d; j += 32) {
        __m256 m0 = _mm256_loadu_ps(m + j), m1 = _mm256_loadu_ps(m + j + 8);
        __m256 m2 = _mm256_loadu_ps(m + j + 16);
        __m256 m3 = _mm256_loadu_ps(m + j + 24);
        s0 = _mm256_fmadd_ps(m0, m0, s0);
        s1 = _mm256_fmadd_ps(m1, m1, s1);
        s2 = _mm256_fmadd_ps(m2, m2, s2);
        s3 = _mm256_fmadd_ps(m3, m3, s3);
    }
    for (; j + 8 <= d; j += 8) {
        __m256 m0 = _mm256_loadu_ps(m + j);
        s0 = _mm256_fmadd_ps(m0, m0, s0);
    }
    if (j < d) {
        __m256 m0 = _mm256_maskload_ps(m + j, tail_mask(d - j));
        s1 = _mm256_fmadd_ps(m0, m0, s1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* The GEMM-style micro-kernel: 3 rows x 4 queries = 12 accumulators, plus
 * 3 row vectors and 1 query vector, fill the 16 ymm registers.  Per step
 * 7 loads feed 12 FMAs, so the two FMA pipes, not the loads, set the
 * pace. */
#define RB 3
#define QB 4

static void
block(const float *const *mr, const float *const *qi, size_t d,
      float *dots)
{
    __m256 acc[QB][RB];
    const float *m0 = mr[0], *m1 = mr[1], *m2 = mr[2];
    size_t j = 0;
    int i;

    /* Every loop over the block is fully unrolled: a loop left rolled
     * indexes acc[][] at run time and pins it to the stack. */
#pragma GCC unroll 4
    for (i = 0; i < QB; i++) {
        acc[i][0] = acc[i][1] = acc[i][2] = _mm256_setzero_ps();
    }
    for (; j + 8 <= d; j += 8) {
        __m256 a = _mm256_loadu_ps(m0 + j), b = _mm256_loadu_ps(m1 + j);
        __m256 c = _mm256_loadu_ps(m2 + j);
#pragma GCC unroll 4
        for (i = 0; i < QB; i++) {
            __m256 v = _mm256_loadu_ps(qi[i] + j);
            acc[i][0] = _mm256_fmadd_ps(v, a, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(v, b, acc[i][1]);
            acc[i][2] = _mm256_fmadd_ps(v, c, acc[i][2]);
        }
    }
    if (j < d) {
        __m256i k = tail_mask(d - j);
        __m256 a = _mm256_maskload_ps(m0 + j, k);
        __m256 b = _mm256_maskload_ps(m1 + j, k);
        __m256 c = _mm256_maskload_ps(m2 + j, k);
#pragma GCC unroll 4
        for (i = 0; i < QB; i++) {
            __m256 v = _mm256_maskload_ps(qi[i] + j, k);
            acc[i][0] = _mm256_fmadd_ps(v, a, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(v, b, acc[i][1]);
            acc[i][2] = _mm256_fmadd_ps(v, c, acc[i][2]);
        }
    }
#pragma GCC unroll 4
    for (i = 0; i < QB; i++) {
        dots[i * OL__RB_MAX + 0] = hsum(acc[i][0]);
        dots[i * OL__RB_MAX + 1] = hsum(acc[i][1]);
        dots[i * OL__RB_MAX + 2] = hsum(acc[i][2]);
    }
}

static const ol__scan_ops scan_ops = {block, dot_sumsq, sumsq, RB, QB};

/* Four steps of 8 per iteration: 12 independent chains (dot, |a|^2 and
 * |b|^2, four each) keep both FMA pipes busy despite their latency. */
static float
cosine(const float *a, const float *b, size_t n)
{
    __m256 dt[4], aa[4], bb[4];
    double sd, sa, sb;
    size_t j = 0;
    int u;

    for (u = 0; u < 4; u++) {
        dt[u] = aa[u] = bb[u] = _mm256_setzero_ps();
    }
    for (; j + 32 <= n; j += 32) {
#pragma GCC unroll 4
        for (u = 0; u < 4; u++) {
            __m256 x = _mm256_loadu_ps(a + j + 8 * u);
            __m256 y = _mm256_loadu_ps(b + j + 8 * u);
            dt[u] = _mm256_fmadd_ps(x, y, dt[u]);
            aa[u] = _mm256_fmadd_ps(x, x, aa[u]);
            bb[u] = _mm256_fmadd_ps(y, y, bb[u]);
        }
    }
    for (; j < n; j += 8) {
        /* At most four more steps; the last is masked if n % 8 != 0. */
        __m256i k = tail_mask(n - j < 8 ? n - j : 8);
        __m256 x = _mm256_maskload_ps(a + j, k);
        __m256 y = _mm256_maskload_ps(b + j, k);
        dt[0] = _mm256_fmadd_ps(x, y, dt[0]);
        aa[0] = _mm256_fmadd_ps(x, x, aa[0]);
        bb[0] = _mm256_fmadd_ps(y, y, bb[0]);
    }
    sd = hsum(_mm256_add_ps(_mm256_add_ps(dt[0], dt[1]),
                            _mm256_add_ps(dt[2], dt[3])));
    sa = hsum(_mm256_add_ps(_mm256_add_ps(aa[0], aa[1]),
                            _mm256_add_ps(aa[2], aa[3])));
    sb = hsum(_mm256_add_ps(_mm256_add_ps(bb[0], bb[1]),
                            _mm256_add_ps(bb[2], bb[3])));
    if (sa == 0.0 || sb == 0.0) {
        return 0.0f;
    }
    return (float)(sd / sqrt(sa * sb));
}

/* Rows of out that no later read will find in cache anyway: streaming
 * stores skip the read-for-ownership of each output line, a third of the
 * memory traffic of a large out-of-place call.  Used only when out does
 * not alias x (in place the lines are in cache already) and the call
 * writes well more than the L2 holds. */
#define STREAM_MIN_BYTES (4u << 20)

static void
scale_row(const float *x, float *o, size_t d, __m256 inv, float sc,
          int stream)
{
    size_t j = 0;

    if (stream) {
        /* Streaming stores need 32-byte alignment: a scalar head first
         * (masked stores next to streamed lines measured slow). */
        size_t head = ((32 - ((uintptr_t)o & 31)) & 31) / sizeof(float);
        if (head < d && ((uintptr_t)o & 3) == 0) {
            for (; j < head; j++) {
                o[j] = x[j] * sc;
            }
            for (; j + 8 <= d; j += 8) {
                _mm256_stream_ps(o + j,
                                 _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
            }
        }
    }
    for (; j + 32 <= d; j += 32) {
        __m256 v0 = _mm256_mul_ps(_mm256_loadu_ps(x + j), inv);
        __m256 v1 = _mm256_mul_ps(_mm256_loadu_ps(x + j + 8), inv);
        __m256 v2 = _mm256_mul_ps(_mm256_loadu_ps(x + j + 16), inv);
        __m256 v3 = _mm256_mul_ps(_mm256_loadu_ps(x + j + 24), inv);
        _mm256_storeu_ps(o + j, v0);
        _mm256_storeu_ps(o + j + 8, v1);
        _mm256_storeu_ps(o + j + 16, v2);
        _mm256_storeu_ps(o + j + 24, v3);
    }
    for (; j + 8 <= d; j += 8) {
        _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
    }
    for (; j < d; j++) {
        o[j] = x[j] * sc;
    }
}

/* Two passes per row: the norm, then the scaling, which finds the row in
 * L1, so memory sees one read (and one write) of each row. */
static void
normalize_rows(const float *x, float *out, size_t d, size_t row_begin,
               size_t row_end)
{
    size_t bytes = (row_end - row_begin) * d * sizeof(float);
    const char *xb = (const char *)(x + row_begin * d);
    const char *ob = (const char *)(out + row_begin * d);
    int stream = row_end > row_begin && bytes >= STREAM_MIN_BYTES &&
                 (ob + bytes <= xb || xb + bytes <= ob);
    size_t r;

    for (r = row_begin; r < row_end; r++) {
        const float *xr = x + r * d;
        float sc = ol__inv_sqrt(sumsq(xr, d));
        scale_row(xr, out + r * d, d, _mm256_set1_ps(sc), sc, stream);
    }
    if (stream) {
        /* Order the weakly ordered streaming stores before whatever
         * tells another thread that out is ready. */
        _mm_sfence();
    }
}

static void
cosine_rows(const float *q, const float *q_inv_norm, size_t nq,
            const float *m, size_t d, size_t row_begin, size_t row_end,
            int m_normalized, float *out, size_t out_stride)
{
    ol__scan(&scan_ops, q, q_inv_norm, nq, m, d, row_begin, row_end,
             m_normalized, out, out_stride, NULL);
}

static void
topk_rows(const float *q, const float *q_inv_norm, size_t nq,
          const float *m, size_t d, size_t row_begin, size_t row_end,
          int m_normalized, ol_topk *lists)
{
    ol__scan(&scan_ops, q, q_inv_norm, nq, m, d, row_begin, row_end,
             m_normalized, NULL, 0, lists);
}

const ol__kernel_table ol__kernels_avx2 = {
    cosine,
    normalize_rows,
    cosine_rows,
    topk_rows,
};

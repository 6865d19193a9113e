/* AVX-512F kernels (compiled with -mavx512f -mavx2 -mfma; run only when
 * dispatch.c has seen all three in CPUID).
 *
 * Besides the wider vectors, AVX-512 brings 32 registers, which allow a
 * larger register block in the multi-query micro-kernel (fewer loads per
 * FMA), and mask registers, which handle the last d % 16 elements of a
 * row with one masked step instead of a scalar tail.  Masked-off lanes are
 * never read, so no load crosses the end of a row.
 */
#include <immintrin.h>

#include "internal.h"

static __mmask16
tail_mask(size_t n)
{
    return (__mmask16)((1u << n) - 1u);
}

/* The sum of four accumulators' lanes, always in this order, so that
 * every kernel that sums a row's squares gets the same float. */
static inline float
sum4(const __m512 *v)
{
    return _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(v[0], v[1]), _mm512_add_ps(v[2], v[3])));
}

static inline void
zero4(__m512 *v)
{
    v[0] = v[1] = v[2] = v[3] = _mm512_setzero_ps();
}

/* ss[u] += p[16u .. 16u + 15] squared, u < 4: one 64-float step of a row's
 * sum of squares. */
static inline void
add_squares64(const float *p, __m512 *ss)
{
#pragma GCC unroll 4
    for (int u = 0; u < 4; u++) {
        __m512 v = _mm512_loadu_ps(p + 16 * u);
        ss[u] = _mm512_fmadd_ps(v, v, ss[u]);
    }
}

static float
dot_sumsq(const float *q, const float *m, size_t d, float *sumsq)
{
    __m512 dt[4], ss[4];
    size_t j = 0;
    int u;

    zero4(dt);
    zero4(ss);
    for (; j + 64 <= d; j += 64) {
#pragma GCC unroll 4
        for (u = 0; u < 4; u++) {
            __m512 v = _mm512_loadu_ps(m + j + 16 * u);
            dt[u] = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 16 * u), v,
                                    dt[u]);
            ss[u] = _mm512_fmadd_ps(v, v, ss[u]);
        }
    }
    for (; j < d; j += 16) {
        __mmask16 k = tail_mask(d - j < 16 ? d - j : 16);
        __m512 v = _mm512_maskz_loadu_ps(k, m + j);
        dt[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, q + j), v, dt[0]);
        ss[0] = _mm512_fmadd_ps(v, v, ss[0]);
    }
    *sumsq = sum4(ss);
    return sum4(dt);
}

static float
sumsq(const float *m, size_t d)
{
    __m512 ss[4];
    size_t j = 0;

    zero4(ss);
    for (; j + 64 <= d; j += 64) {
        add_squares64(m + j, ss);
    }
    for (; j < d; j += 16) {
        __mmask16 k = tail_mask(d - j < 16 ? d - j : 16);
        __m512 v = _mm512_maskz_loadu_ps(k, m + j);
        ss[0] = _mm512_fmadd_ps(v, v, ss[0]);
    }
    return sum4(ss);
}

/* Two accumulators to one vector of 8 partial sums each: lanes 0-7 hold
 * a's, lanes 8-15 b's (each lane the sum of lanes j and j + 8). */
static __m512
fold2(__m512 a, __m512 b)
{
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44),
                         _mm512_shuffle_f32x4(a, b, 0xee));
}

/* The horizontal sums of 16 accumulators at once, out[i] = sum(v[i]).
 * Summing 16 vectors one by one costs about 8 shuffles and adds each, as
 * much as a sixth of the micro-kernel's FMAs at d = 768; folding them
 * together halves the vector count at each of four levels instead. */
static void
reduce16(const __m512 *v, float *out)
{
    __m512 p[8], w[4], t[4], s0, s1;
    int i;

#pragma GCC unroll 8
    for (i = 0; i < 8; i++) {
        p[i] = fold2(v[2 * i], v[2 * i + 1]); /* [a:8 | b:8] */
    }
    /* 128-bit block c of w holds 4 partial sums of accumulator 4j + c. */
#pragma GCC unroll 4
    for (i = 0; i < 4; i++) {
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1],
                                                  0x88),
                             _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1],
                                                  0xdd));
    }
    /* Within each 128-bit block: [w0+w2, x0+x2, w1+w3, x1+x3]. */
#pragma GCC unroll 2
    for (i = 0; i < 2; i++) {
        t[2 * i] = _mm512_add_ps(_mm512_unpacklo_ps(w[2 * i], w[2 * i + 1]),
                                 _mm512_unpackhi_ps(w[2 * i], w[2 * i + 1]));
    }
    s0 = _mm512_add_ps(_mm512_shuffle_ps(t[0], t[2], 0x44),
                       _mm512_shuffle_ps(t[0], t[2], 0xee));
    /* Block c of s0 is [sum 4c, sum 4c + 4, sum 4c + 8, sum 4c + 12];
     * put the sums back in accumulator order. */
    s1 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13,
                                                 2, 6, 10, 14, 3, 7, 11,
                                                 15),
                               s0);
    _mm512_storeu_ps(out, s1);
}

/* 6 rows x 4 queries = 24 accumulators, plus 6 row vectors and one query
 * vector: 31 of the 32 zmm registers.  10 loads feed 24 FMAs per step,
 * and the fixed cost of a call (reduction, scoring) is spread over 24
 * pairs; 4 x 4 measured 10% slower.  Full steps use plain loads: masked
 * loads in the main loop cost another 10% (they cannot be folded into
 * the FMAs). */
#define RB 6
#define QB 4
#define NACC (((QB * RB) + 15) / 16 * 16)

static void
block(const float *const *mr, const float *const *qi, size_t d,
      float *dots)
{
    __m512 acc[NACC];
    float sums[NACC];
    const float *mp[RB], *qp[QB];
    size_t j = 0;
    int i, r;

    /* Every loop over the block is fully unrolled: a loop left rolled
     * indexes acc[] at run time and pins it to the stack. */
#pragma GCC unroll 8
    for (r = 0; r < RB; r++) {
        mp[r] = mr[r];
    }
#pragma GCC unroll 8
    for (i = 0; i < QB; i++) {
        qp[i] = qi[i];
    }
#pragma GCC unroll 32
    for (i = 0; i < NACC; i++) {
        acc[i] = _mm512_setzero_ps();
    }
    for (; j + 16 <= d; j += 16) {
        __m512 mv[RB];
#pragma GCC unroll 8
        for (r = 0; r < RB; r++) {
            mv[r] = _mm512_loadu_ps(mp[r] + j);
        }
#pragma GCC unroll 8
        for (i = 0; i < QB; i++) {
            __m512 v = _mm512_loadu_ps(qp[i] + j);
#pragma GCC unroll 8
            for (r = 0; r < RB; r++) {
                acc[i * RB + r] = _mm512_fmadd_ps(v, mv[r], acc[i * RB + r]);
            }
        }
    }
    if (j < d) {
        /* The last d % 16 elements: masked loads, which never touch the
         * memory past the end of the row. */
        __mmask16 k = tail_mask(d - j);
        __m512 mv[RB];
#pragma GCC unroll 8
        for (r = 0; r < RB; r++) {
            mv[r] = _mm512_maskz_loadu_ps(k, mp[r] + j);
        }
#pragma GCC unroll 8
        for (i = 0; i < QB; i++) {
            __m512 v = _mm512_maskz_loadu_ps(k, qp[i] + j);
#pragma GCC unroll 8
            for (r = 0; r < RB; r++) {
                acc[i * RB + r] = _mm512_fmadd_ps(v, mv[r], acc[i * RB + r]);
            }
        }
    }
#pragma GCC unroll 2
    for (i = 0; i < NACC; i += 16) {
        reduce16(acc + i, sums + i);
    }
#pragma GCC unroll 8
    for (i = 0; i < QB; i++) {
#pragma GCC unroll 8
        for (r = 0; r < RB; r++) {
            dots[i * OL__RB_MAX + r] = sums[i * RB + r];
        }
    }
}

static const ol__scan_ops scan_ops = {block, dot_sumsq, sumsq, RB, QB};

/* Two steps of 16 per iteration: 6 independent chains of 512-bit FMAs,
 * which Zen 4 and Skylake-X both issue at one per cycle. */
static float
cosine(const float *a, const float *b, size_t n)
{
    __m512 dt[2], aa[2], bb[2];
    double sd, sa, sb;
    size_t j = 0;
    int u;

    for (u = 0; u < 2; u++) {
        dt[u] = aa[u] = bb[u] = _mm512_setzero_ps();
    }
    for (; j + 32 <= n; j += 32) {
#pragma GCC unroll 2
        for (u = 0; u < 2; u++) {
            __m512 x = _mm512_loadu_ps(a + j + 16 * u);
            __m512 y = _mm512_loadu_ps(b + j + 16 * u);
            dt[u] = _mm512_fmadd_ps(x, y, dt[u]);
            aa[u] = _mm512_fmadd_ps(x, x, aa[u]);
            bb[u] = _mm512_fmadd_ps(y, y, bb[u]);
        }
    }
    for (; j < n; j += 16) {
        __mmask16 k = tail_mask(n - j < 16 ? n - j : 16);
        __m512 x = _mm512_maskz_loadu_ps(k, a + j);
        __m512 y = _mm512_maskz_loadu_ps(k, b + j);
        dt[0] = _mm512_fmadd_ps(x, y, dt[0]);
        aa[0] = _mm512_fmadd_ps(x, x, aa[0]);
        bb[0] = _mm512_fmadd_ps(y, y, bb[0]);
    }
    sd = _mm512_reduce_add_ps(_mm512_add_ps(dt[0], dt[1]));
    sa = _mm512_reduce_add_ps(_mm512_add_ps(aa[0], aa[1]));
    sb = _mm512_reduce_add_ps(_mm512_add_ps(bb[0], bb[1]));
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
scale_row(const float *x, float *o, size_t d, __m512 inv, int stream)
{
    size_t j = 0;

    if (stream) {
        /* Streaming stores need 64-byte alignment: a masked head first. */
        size_t head = ((64 - ((uintptr_t)o & 63)) & 63) / sizeof(float);
        if (head < d && ((uintptr_t)o & 3) == 0) {
            float sc = _mm512_cvtss_f32(inv);
            for (; j < head; j++) {
                o[j] = x[j] * sc;
            }
        }
        if ((((uintptr_t)(o + j)) & 63) == 0) {
            for (; j + 16 <= d; j += 16) {
                _mm512_stream_ps(o + j,
                                 _mm512_mul_ps(_mm512_loadu_ps(x + j), inv));
            }
        }
    }
    for (; j + 64 <= d; j += 64) {
        __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(x + j), inv);
        __m512 v1 = _mm512_mul_ps(_mm512_loadu_ps(x + j + 16), inv);
        __m512 v2 = _mm512_mul_ps(_mm512_loadu_ps(x + j + 32), inv);
        __m512 v3 = _mm512_mul_ps(_mm512_loadu_ps(x + j + 48), inv);
        _mm512_storeu_ps(o + j, v0);
        _mm512_storeu_ps(o + j + 16, v1);
        _mm512_storeu_ps(o + j + 32, v2);
        _mm512_storeu_ps(o + j + 48, v3);
    }
    for (; j < d; j += 16) {
        __mmask16 k = tail_mask(d - j < 16 ? d - j : 16);
        __m512 v = _mm512_maskz_loadu_ps(k, x + j);
        _mm512_mask_storeu_ps(o + j, k, _mm512_mul_ps(v, inv));
    }
}

/* Scale row x into o by inv and return the sum of squares of the row
 * `next`, summed in sumsq()'s order.  Reading the next row while storing
 * this one keeps a stream of loads from memory going during the stores:
 * in place, 10% faster with two threads and 15% with one than norm-then-
 * scale per row (measured side by side in one process). */
static float
scale_row_sumsq_next(const float *x, float *o, size_t d, __m512 inv,
                     const float *next)
{
    __m512 ss[4];
    size_t j = 0;
    int u;

    zero4(ss);
    for (; j + 64 <= d; j += 64) {
        add_squares64(next + j, ss);
#pragma GCC unroll 4
        for (u = 0; u < 4; u++) {
            _mm512_storeu_ps(o + j + 16 * u,
                             _mm512_mul_ps(_mm512_loadu_ps(x + j + 16 * u),
                                           inv));
        }
    }
    for (; j < d; j += 16) {
        __mmask16 k = tail_mask(d - j < 16 ? d - j : 16);
        __m512 v = _mm512_maskz_loadu_ps(k, next + j);
        ss[0] = _mm512_fmadd_ps(v, v, ss[0]);
        _mm512_mask_storeu_ps(o + j, k,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j),
                                            inv));
    }
    return sum4(ss);
}

/* Memory sees one read (and one write) of each row: the norm pass pulls
 * the row into L1, where the scaling finds it.  Without streaming stores,
 * the norm of row r + 1 is summed while row r is scaled. */
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

    if (row_begin >= row_end) {
        return;
    }
    if (stream) {
        for (r = row_begin; r < row_end; r++) {
            const float *xr = x + r * d;
            __m512 inv = _mm512_set1_ps(ol__inv_sqrt(sumsq(xr, d)));
            scale_row(xr, out + r * d, d, inv, 1);
        }
        /* Order the weakly ordered streaming stores before whatever
         * tells another thread that out is ready. */
        _mm_sfence();
        return;
    }
    float ss = sumsq(x + row_begin * d, d);
    for (r = row_begin; r + 1 < row_end; r++) {
        const float *xr = x + r * d;
        ss = scale_row_sumsq_next(xr, out + r * d, d,
                                  _mm512_set1_ps(ol__inv_sqrt(ss)), xr + d);
    }
    scale_row(x + r * d, out + r * d, d, _mm512_set1_ps(ol__inv_sqrt(ss)),
              0);
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

const ol__kernel_table ol__kernels_avx512 = {
    cosine,
    normalize_rows,
    cosine_rows,
    topk_rows,
};

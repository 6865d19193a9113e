/* Portable C kernels: the path every CPU can run, and the reference the
 * SIMD paths are tested against.
 *
 * This file is compiled without any -m flag, so it must not assume more
 * than the target's baseline.  Sums use several independent accumulators:
 * that hides the add latency, and without -ffast-math it is the only way a
 * compiler may vectorize a float reduction (it keeps our summation order).
 * It also shortens each accumulator's chain, which is what keeps float
 * sums within the tests' 1e-5 relative tolerance for long vectors.
 */
#include "internal.h"

#define NACC 8

static float
dot_sumsq(const float *q, const float *m, size_t d, float *sumsq)
{
    float dot[NACC] = {0}, ss[NACC] = {0};
    size_t j = 0, a;

    for (; j + NACC <= d; j += NACC) {
        for (a = 0; a < NACC; a++) {
            dot[a] += q[j + a] * m[j + a];
            ss[a] += m[j + a] * m[j + a];
        }
    }
    for (a = 0; j < d; j++, a++) {
        dot[a] += q[j] * m[j];
        ss[a] += m[j] * m[j];
    }
    *sumsq = ((ss[0] + ss[1]) + (ss[2] + ss[3])) +
             ((ss[4] + ss[5]) + (ss[6] + ss[7]));
    return ((dot[0] + dot[1]) + (dot[2] + dot[3])) +
           ((dot[4] + dot[5]) + (dot[6] + dot[7]));
}

static float
sumsq(const float *m, size_t d)
{
    float ss[NACC] = {0};
    size_t j = 0, a;

    for (; j + NACC <= d; j += NACC) {
        for (a = 0; a < NACC; a++) {
            ss[a] += m[j + a] * m[j + a];
        }
    }
    for (a = 0; j < d; j++, a++) {
        ss[a] += m[j] * m[j];
    }
    return ((ss[0] + ss[1]) + (ss[2] + ss[3])) +
           ((ss[4] + ss[5]) + (ss[6] + ss[7]));
}

/* 2 rows x 4 queries: eight independent sums, each m element loaded once
 * for four queries. */
#define RB 2
#define QB 4

static void
block(const float *const *mr, const float *const *qi, size_t d,
      float *dots)
{
    float acc[QB][RB] = {{0}};
    size_t j, i, r;

    for (j = 0; j < d; j++) {
        float mv[RB];
        for (r = 0; r < RB; r++) {
            mv[r] = mr[r][j];
        }
        for (i = 0; i < QB; i++) {
            float qv = qi[i][j];
            for (r = 0; r < RB; r++) {
                acc[i][r] += qv * mv[r];
            }
        }
    }
    for (i = 0; i < QB; i++) {
        for (r = 0; r < RB; r++) {
            dots[i * OL__RB_MAX + r] = acc[i][r];
        }
    }
}

static const ol__scan_ops scan_ops = {block, dot_sumsq, sumsq, RB, QB};

static float
cosine(const float *a, const float *b, size_t n)
{
    float dot[NACC] = {0}, aa[NACC] = {0}, bb[NACC] = {0};
    float sd, sa, sb;
    size_t j = 0, k;

    for (; j + NACC <= n; j += NACC) {
        for (k = 0; k < NACC; k++) {
            dot[k] += a[j + k] * b[j + k];
            aa[k] += a[j + k] * a[j + k];
            bb[k] += b[j + k] * b[j + k];
        }
    }
    for (k = 0; j < n; j++, k++) {
        dot[k] += a[j] * b[j];
        aa[k] += a[j] * a[j];
        bb[k] += b[j] * b[j];
    }
    sd = ((dot[0] + dot[1]) + (dot[2] + dot[3])) +
         ((dot[4] + dot[5]) + (dot[6] + dot[7]));
    sa = ((aa[0] + aa[1]) + (aa[2] + aa[3])) +
         ((aa[4] + aa[5]) + (aa[6] + aa[7]));
    sb = ((bb[0] + bb[1]) + (bb[2] + bb[3])) +
         ((bb[4] + bb[5]) + (bb[6] + bb[7]));
    if (sa == 0.0f || sb == 0.0f) {
        return 0.0f;
    }
    return (float)(sd / sqrt((double)sa * (double)sb));
}

static void
normalize_rows(const float *x, float *out, size_t d, size_t row_begin,
               size_t row_end)
{
    size_t r, j;

    for (r = row_begin; r < row_end; r++) {
        const float *xr = x + r * d;
        float *o = out + r * d;
        float inv = ol__inv_sqrt(sumsq(xr, d));
        for (j = 0; j < d; j++) {
            o[j] = xr[j] * inv;
        }
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

const ol__kernel_table ol__kernels_scalar = {
    cosine,
    normalize_rows,
    cosine_rows,
    topk_rows,
};

/* Not dispatched: it runs once per query, so its cost is negligible next
 * to a scan, and double accumulation makes it exact enough to serve as
 * the q_inv_norm input for every ISA. */
float
ol_inv_norm_f32(const float *v, size_t n)
{
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    size_t j = 0;

    for (; j + 4 <= n; j += 4) {
        s[0] += (double)v[j] * v[j];
        s[1] += (double)v[j + 1] * v[j + 1];
        s[2] += (double)v[j + 2] * v[j + 2];
        s[3] += (double)v[j + 3] * v[j + 3];
    }
    for (; j < n; j++) {
        s[0] += (double)v[j] * v[j];
    }
    s[0] = (s[0] + s[1]) + (s[2] + s[3]);
    if (s[0] == 0.0) {
        return 0.0f;
    }
    return (float)(1.0 / sqrt(s[0]));
}

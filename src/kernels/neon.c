/* NEON (Advanced SIMD) kernels for aarch64: Graviton servers and
 * Apple-silicon laptops.
 *
 * Advanced SIMD is part of the aarch64 baseline, so this file needs no
 * compiler flag and dispatch.c can always pick it there; it still goes
 * through dispatch so that tests and OFFLOOP_ISA=scalar can force the
 * portable C path.  Compiled only for aarch64 (kernels.cmake).
 *
 * The shape follows avx2.c at half the width: 4 lanes per register, FMA
 * (vfmaq_f32) with 4 or more independent accumulators per sum to hide its
 * latency, and 32 vector registers, which let the scan's micro-kernel
 * hold a 4 x 4 block.  NEON has no masked load: the last d % 4 elements
 * go through a scalar tail, so nothing reads past the end of a row.
 *
 * Only correctness is tested on this project's machines (under qemu-user,
 * benchmarks/README.md): no timing of these paths exists yet.
 */
#include <arm_neon.h>

#include "internal.h"

static float
dot_sumsq(const float *q, const float *m, size_t d, float *sumsq)
{
    float32x4_t d0 = vdupq_n_f32(0.0f), d1 = d0, d2 = d0, d3 = d0;
    float32x4_t s0 = d0, s1 = d0, s2 = d0, s3 = d0;
    float dt = 0.0f, st = 0.0f;
    size_t j = 0;

    for (; j + 16 <= d; j += 16) {
        float32x4_t m0 = vld1q_f32(m + j), m1 = vld1q_f32(m + j + 4);
        float32x4_t m2 = vld1q_f32(m + j + 8), m3 = vld1q_f32(m + j + 12);
        d0 = vfmaq_f32(d0, vld1q_f32(q + j), m0);
        d1 = vfmaq_f32(d1, vld1q_f32(q + j + 4), m1);
        d2 = vfmaq_f32(d2, vld1q_f32(q + j + 8), m2);
        d3 = vfmaq_f32(d3, vld1q_f32(q + j + 12), m3);
        s0 = vfmaq_f32(s0, m0, m0);
        s1 = vfmaq_f32(s1, m1, m1);
        s2 = vfmaq_f32(s2, m2, m2);
        s3 = vfmaq_f32(s3, m3, m3);
    }
    for (; j + 4 <= d; j += 4) {
        float32x4_t m0 = vld1q_f32(m + j);
        d0 = vfmaq_f32(d0, vld1q_f32(q + j), m0);
        s0 = vfmaq_f32(s0, m0, m0);
    }
    for (; j < d; j++) {
        dt += q[j] * m[j];
        st += m[j] * m[j];
    }
    *sumsq = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3))) +
             st;
    return vaddvq_f32(vaddq_f32(vaddq_f32(d0, d1), vaddq_f32(d2, d3))) + dt;
}

static float
sumsq(const float *m, size_t d)
{
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    float st = 0.0f;
    size_t j = 0;

    for (; j + 16 <= d; j += 16) {
        float32x4_t m0 = vld1q_f32(m + j), m1 = vld1q_f32(m + j + 4);
        float32x4_t m2 = vld1q_f32(m + j + 8), m3 = vld1q_f32(m + j + 12);
        s0 = vfmaq_f32(s0, m0, m0);
        s1 = vfmaq_f32(s1, m1, m1);
        s2 = vfmaq_f32(s2, m2, m2);
        s3 = vfmaq_f32(s3, m3, m3);
    }
    for (; j + 4 <= d; j += 4) {
        float32x4_t m0 = vld1q_f32(m + j);
        s0 = vfmaq_f32(s0, m0, m0);
    }
    for (; j < d; j++) {
        st += m[j] * m[j];
    }
    return vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3))) + st;
}

/* The GEMM-style micro-kernel: 4 rows x 4 queries = 16 accumulators, plus
 * 4 row vectors and 1 query vector: 21 of the 32 registers, so nothing
 * spills.  Per step 8 loads feed 16 FMAs. */
#define RB 4
#define QB 4

static void
block(const float *const *mr, const float *const *qi, size_t d,
      float *dots)
{
    float32x4_t acc[QB][RB];
    float tail[QB][RB];
    const float *m0 = mr[0], *m1 = mr[1], *m2 = mr[2], *m3 = mr[3];
    size_t j = 0;
    int i, r;

    /* Every loop over the block is fully unrolled: a loop left rolled
     * indexes acc[][] at run time and pins it to the stack. */
#pragma GCC unroll 4
    for (i = 0; i < QB; i++) {
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = vdupq_n_f32(0.0f);
    }
    for (; j + 4 <= d; j += 4) {
        float32x4_t a = vld1q_f32(m0 + j), b = vld1q_f32(m1 + j);
        float32x4_t c = vld1q_f32(m2 + j), e = vld1q_f32(m3 + j);
#pragma GCC unroll 4
        for (i = 0; i < QB; i++) {
            float32x4_t v = vld1q_f32(qi[i] + j);
            acc[i][0] = vfmaq_f32(acc[i][0], v, a);
            acc[i][1] = vfmaq_f32(acc[i][1], v, b);
            acc[i][2] = vfmaq_f32(acc[i][2], v, c);
            acc[i][3] = vfmaq_f32(acc[i][3], v, e);
        }
    }
    for (i = 0; i < QB; i++) {
        for (r = 0; r < RB; r++) {
            tail[i][r] = 0.0f;
        }
    }
    for (; j < d; j++) {
        for (i = 0; i < QB; i++) {
            for (r = 0; r < RB; r++) {
                tail[i][r] += qi[i][j] * mr[r][j];
            }
        }
    }
#pragma GCC unroll 4
    for (i = 0; i < QB; i++) {
        dots[i * OL__RB_MAX + 0] = vaddvq_f32(acc[i][0]) + tail[i][0];
        dots[i * OL__RB_MAX + 1] = vaddvq_f32(acc[i][1]) + tail[i][1];
        dots[i * OL__RB_MAX + 2] = vaddvq_f32(acc[i][2]) + tail[i][2];
        dots[i * OL__RB_MAX + 3] = vaddvq_f32(acc[i][3]) + tail[i][3];
    }
}

static const ol__scan_ops scan_ops = {block, dot_sumsq, sumsq, RB, QB};

/* Four steps of 4 per iteration: 12 independent chains (dot, |a|^2 and
 * |b|^2, four each).  The three sums meet in double, as in avx2.c. */
static float
cosine(const float *a, const float *b, size_t n)
{
    float32x4_t dt[4], aa[4], bb[4];
    float td = 0.0f, ta = 0.0f, tb = 0.0f;
    double sd, sa, sb;
    size_t j = 0;
    int u;

    for (u = 0; u < 4; u++) {
        dt[u] = aa[u] = bb[u] = vdupq_n_f32(0.0f);
    }
    for (; j + 16 <= n; j += 16) {
#pragma GCC unroll 4
        for (u = 0; u < 4; u++) {
            float32x4_t x = vld1q_f32(a + j + 4 * u);
            float32x4_t y = vld1q_f32(b + j + 4 * u);
            dt[u] = vfmaq_f32(dt[u], x, y);
            aa[u] = vfmaq_f32(aa[u], x, x);
            bb[u] = vfmaq_f32(bb[u], y, y);
        }
    }
    for (; j + 4 <= n; j += 4) {
        float32x4_t x = vld1q_f32(a + j), y = vld1q_f32(b + j);
        dt[0] = vfmaq_f32(dt[0], x, y);
        aa[0] = vfmaq_f32(aa[0], x, x);
        bb[0] = vfmaq_f32(bb[0], y, y);
    }
    for (; j < n; j++) {
        td += a[j] * b[j];
        ta += a[j] * a[j];
        tb += b[j] * b[j];
    }
    sd = (double)vaddvq_f32(vaddq_f32(vaddq_f32(dt[0], dt[1]),
                                      vaddq_f32(dt[2], dt[3]))) +
         td;
    sa = (double)vaddvq_f32(vaddq_f32(vaddq_f32(aa[0], aa[1]),
                                      vaddq_f32(aa[2], aa[3]))) +
         ta;
    sb = (double)vaddvq_f32(vaddq_f32(vaddq_f32(bb[0], bb[1]),
                                      vaddq_f32(bb[2], bb[3]))) +
         tb;
    if (sa == 0.0 || sb == 0.0) {
        return 0.0f;
    }
    return (float)(sd / sqrt(sa * sb));
}

/* Two passes per row: the norm, then the scaling, which finds the row in
 * L1, so memory sees one read (and one write) of each row.  No streaming
 * stores: aarch64's non-temporal pair store (STNP) is only a hint, and
 * nothing here has measured it. */
static void
normalize_rows(const float *x, float *out, size_t d, size_t row_begin,
               size_t row_end)
{
    size_t r, j;

    for (r = row_begin; r < row_end; r++) {
        const float *xr = x + r * d;
        float *o = out + r * d;
        float sc = ol__inv_sqrt(sumsq(xr, d));
        float32x4_t inv = vdupq_n_f32(sc);
        for (j = 0; j + 16 <= d; j += 16) {
            float32x4_t v0 = vmulq_f32(vld1q_f32(xr + j), inv);
            float32x4_t v1 = vmulq_f32(vld1q_f32(xr + j + 4), inv);
            float32x4_t v2 = vmulq_f32(vld1q_f32(xr + j + 8), inv);
            float32x4_t v3 = vmulq_f32(vld1q_f32(xr + j + 12), inv);
            vst1q_f32(o + j, v0);
            vst1q_f32(o + j + 4, v1);
            vst1q_f32(o + j + 8, v2);
            vst1q_f32(o + j + 12, v3);
        }
        for (; j + 4 <= d; j += 4) {
            vst1q_f32(o + j, vmulq_f32(vld1q_f32(xr + j), inv));
        }
        for (; j < d; j++) {
            o[j] = xr[j] * sc;
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

const ol__kernel_table ol__kernels_neon = {
    cosine,
    normalize_rows,
    cosine_rows,
    topk_rows,
};

/* Quantized storage, portable C: float32 rows to bfloat16 or int8 codes
 * (not dispatched: it runs once per matrix, on the pool, and is bound by
 * memory), and the portable scans every SIMD path is tested against.
 *
 * Sums use eight independent accumulators, as scalar.c does and for the
 * same reasons (latency, vectorizable without -ffast-math, shorter
 * rounding chains).
 */
#include <string.h>

#include "quant.h"

#define NACC 8

/* Round-to-nearest-even float32 -> bfloat16, for finite f (rows with a
 * NaN or an infinity never get here): branch-free, so it vectorizes. */
static inline uint16_t
f32_to_bf16(float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

size_t
ol_qtype_size(ol_qtype t)
{
    return t == OL_Q_BF16 ? 2 : 1;
}

/* Rows [row_begin, row_end): each row divided by its norm (in double, so
 * that no finite row overflows), then coded.  int8: the unit row's
 * largest magnitude maps to 127, scale = that magnitude / 127.  A row
 * holding a NaN or an infinity has no direction: bfloat16 codes it as
 * all NaN, int8 as zeros with a NaN scale, so that it scores NaN (ranked
 * after every number) and touches no other row.  A zero row codes as
 * zeros (scale 0) and scores 0. */
void
ol_quantize_rows(ol_qtype t, const float *x, void *codes, float *scales,
                 size_t d, size_t row_begin, size_t row_end)
{
    size_t r, j;

    for (r = row_begin; r < row_end; r++) {
        const float *xr = x + r * d;
        double ss[4] = {0.0, 0.0, 0.0, 0.0}, inv, sum;
        float amax = 0.0f, bad = 0.0f;
        /* Branch-free passes the compiler vectorizes: bad stays 0 only
         * if every x - x is 0 (false for NaN and +-inf). */
        for (j = 0; j < d; j++) {
            float v = xr[j], a = v < 0.0f ? -v : v;
            bad += v - v;
            amax = a > amax ? a : amax;
        }
        for (j = 0; j + 4 <= d; j += 4) {
            for (int u = 0; u < 4; u++) {
                ss[u] += (double)xr[j + u] * xr[j + u];
            }
        }
        for (; j < d; j++) {
            ss[0] += (double)xr[j] * xr[j];
        }
        sum = (ss[0] + ss[1]) + (ss[2] + ss[3]);
        inv = sum > 0.0 ? 1.0 / sqrt(sum) : 0.0;
        if (bad != 0.0f || bad != bad) {
            if (t == OL_Q_BF16) {
                uint16_t *c = (uint16_t *)codes + r * d;
                for (j = 0; j < d; j++) {
                    c[j] = 0x7fc0u;
                }
            }
            else {
                memset((int8_t *)codes + r * d, 0, d);
                scales[r] = NAN;
            }
            continue;
        }
        if (t == OL_Q_BF16) {
            uint16_t *c = (uint16_t *)codes + r * d;
            float fi = (float)inv;
            for (j = 0; j < d; j++) {
                c[j] = f32_to_bf16(xr[j] * fi);
            }
        }
        else {
            int8_t *c = (int8_t *)codes + r * d;
            float k = amax > 0.0f ? 127.0f / amax : 0.0f;
            for (j = 0; j < d; j++) {
                float v = xr[j] * k; /* |v| <= 127 (rounding: 127.00002) */
                int iv = (int)(v + (v < 0.0f ? -0.5f : 0.5f));
                c[j] = (int8_t)(iv > 127 ? 127 : iv < -127 ? -127 : iv);
            }
            scales[r] = (float)((double)amax * inv / 127.0);
        }
    }
}

static float
dot_bf16(const float *q, const void *mv, size_t d)
{
    const uint16_t *m = mv;
    float acc[NACC] = {0};
    size_t j = 0, a;

    for (; j + NACC <= d; j += NACC) {
        for (a = 0; a < NACC; a++) {
            acc[a] += q[j + a] * ol__bf16_to_f32(m[j + a]);
        }
    }
    for (a = 0; j < d; j++, a++) {
        acc[a] += q[j] * ol__bf16_to_f32(m[j]);
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
           ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static float
dot_int8(const float *q, const void *mv, size_t d)
{
    const int8_t *m = mv;
    float acc[NACC] = {0};
    size_t j = 0, a;

    for (; j + NACC <= d; j += NACC) {
        for (a = 0; a < NACC; a++) {
            acc[a] += q[j + a] * (float)m[j + a];
        }
    }
    for (a = 0; j < d; j++, a++) {
        acc[a] += q[j] * (float)m[j];
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
           ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* 2 rows x 4 queries, each code widened once for four queries. */
#define RB 2
#define QB 4

static void
block_bf16(const void *const *mr, const float *const *qi, size_t d,
           float *dots)
{
    float acc[QB][RB] = {{0}};
    size_t j, i, r;

    for (j = 0; j < d; j++) {
        float mv[RB];
        for (r = 0; r < RB; r++) {
            mv[r] = ol__bf16_to_f32(((const uint16_t *)mr[r])[j]);
        }
        for (i = 0; i < QB; i++) {
            for (r = 0; r < RB; r++) {
                acc[i][r] += qi[i][j] * mv[r];
            }
        }
    }
    for (i = 0; i < QB; i++) {
        for (r = 0; r < RB; r++) {
            dots[i * OL__RB_MAX + r] = acc[i][r];
        }
    }
}

static void
block_int8(const void *const *mr, const float *const *qi, size_t d,
           float *dots)
{
    float acc[QB][RB] = {{0}};
    size_t j, i, r;

    for (j = 0; j < d; j++) {
        float mv[RB];
        for (r = 0; r < RB; r++) {
            mv[r] = (float)((const int8_t *)mr[r])[j];
        }
        for (i = 0; i < QB; i++) {
            for (r = 0; r < RB; r++) {
                acc[i][r] += qi[i][j] * mv[r];
            }
        }
    }
    for (i = 0; i < QB; i++) {
        for (r = 0; r < RB; r++) {
            dots[i * OL__RB_MAX + r] = acc[i][r];
        }
    }
}

static void
decode_bf16(const void *m, size_t d, float *out)
{
    for (size_t j = 0; j < d; j++) {
        out[j] = ol__bf16_to_f32(((const uint16_t *)m)[j]);
    }
}

static void
decode_int8(const void *m, size_t d, float *out)
{
    for (size_t j = 0; j < d; j++) {
        out[j] = (float)((const int8_t *)m)[j];
    }
}

static void
block_f32(const void *const *mr, const float *const *qi, size_t d,
          float *dots)
{
    float acc[QB][RB] = {{0}};
    size_t j, i, r;

    for (j = 0; j < d; j++) {
        float mv[RB];
        for (r = 0; r < RB; r++) {
            mv[r] = ((const float *)mr[r])[j];
        }
        for (i = 0; i < QB; i++) {
            for (r = 0; r < RB; r++) {
                acc[i][r] += qi[i][j] * mv[r];
            }
        }
    }
    for (i = 0; i < QB; i++) {
        for (r = 0; r < RB; r++) {
            dots[i * OL__RB_MAX + r] = acc[i][r];
        }
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

const ol__qkernel_table ol__qkernels_scalar = {scan_bf16, scan_int8};

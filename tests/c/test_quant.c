/* Tests of the quantized kernels (src/kernels/quant*.c): quantize's codes
 * and NaN rows, then every ISA this CPU runs against the portable path,
 * forced with ol_kernels_force(), for both code types, one and several
 * queries, scores and top-k.  SIMD and portable paths differ in
 * summation order (and AVX2's one-query int8 scan rounds the query to 16
 * bits): scores agree to 1e-5 relative to the sum of |terms|.
 * Exit status 0 means every check passed.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static int failures, checks;
static const char *cur = "?";

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        checks++;                                                        \
        if (!(cond) && ++failures <= 40) {                               \
            fprintf(stderr, "FAIL %s:%d [%s] %s: ", __FILE__, __LINE__,  \
                    cur, #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
        }                                                                \
    } while (0)

static uint64_t rng = 0x243f6a8885a308d3u;

static float
frand(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((double)((rng * 0x2545f4914f6cdd1dULL) >> 11) /
                       (double)(1ULL << 53) * 2.0 - 1.0);
}

static const size_t dims[] = {1, 7, 16, 17, 33, 100, 768};
#define N 203
#define NQ 13
#define K 7

/* Score of query q against row r from the codes, in double. */
static double
ref_score(ol_qtype t, const float *q, const void *codes, const float *sc,
          size_t d, size_t r)
{
    double dot = 0.0, qq = 0.0;
    for (size_t j = 0; j < d; j++) {
        double c;
        if (t == OL_Q_BF16) {
            uint32_t u = (uint32_t)((const uint16_t *)codes)[r * d + j] << 16;
            float f;
            memcpy(&f, &u, 4);
            c = f;
        }
        else {
            c = ((const int8_t *)codes)[r * d + j] * (double)sc[r];
        }
        dot += q[j] * c;
        qq += (double)q[j] * q[j];
    }
    return qq > 0 ? dot / sqrt(qq) : 0.0;
}

static void
test_quantize(ol_qtype t, size_t d)
{
    float *x = malloc(3 * d * sizeof(float)), sc[3];
    void *codes = malloc(3 * d * 2);
    for (size_t j = 0; j < 3 * d; j++) {
        x[j] = frand() * 100.0f;
    }
    x[d] = NAN;             /* row 1: NaN */
    memset(x + 2 * d, 0, d * sizeof(float)); /* row 2: zeros */
    ol_quantize_rows(t, x, codes, sc, d, 0, 3);
    /* Row 0 decodes to the unit row within the code's step. */
    double nn = 0.0;
    for (size_t j = 0; j < d; j++) {
        nn += (double)x[j] * x[j];
    }
    for (size_t j = 0; j < d; j++) {
        double u = x[j] / sqrt(nn), c;
        if (t == OL_Q_BF16) {
            uint32_t v = (uint32_t)((uint16_t *)codes)[j] << 16;
            float f;
            memcpy(&f, &v, 4);
            c = f;
            CHECK(fabs(c - u) <= fabs(u) / 256.0, "d=%zu j=%zu %g vs %g", d,
                  j, c, u);
        }
        else {
            c = ((int8_t *)codes)[j] * (double)sc[0];
            CHECK(fabs(c - u) <= sc[0] * 0.5001, "d=%zu j=%zu %g vs %g", d,
                  j, c, u);
        }
    }
    float q[768];
    for (size_t j = 0; j < d; j++) {
        q[j] = 1.0f;
    }
    float inv = ol_inv_norm_f32(q, d), out[3];
    ol_qscan_rows(t, q, &inv, 1, codes, sc, d, 0, 3, out, 3, NULL);
    CHECK(isnan(out[1]), "d=%zu NaN row scored %g", d, out[1]);
    CHECK(out[2] == 0.0f, "d=%zu zero row scored %g", d, out[2]);
    CHECK(!isnan(out[0]), "d=%zu good row scored NaN", d);
    free(x);
    free(codes);
}

/* ISA `isa` against the double reference, and its top-k against its
 * own scores. */
static void
test_scan(ol_qtype t, size_t d)
{
    float *x = malloc(N * d * sizeof(float)), *q = malloc(NQ * d * 4);
    float sc[N], inv[NQ], *out = malloc(NQ * N * 4);
    void *codes = malloc(N * d * 2);
    float ls[NQ][K];
    int64_t li[NQ][K];
    ol_topk lists[NQ];

    for (size_t j = 0; j < N * d; j++) {
        x[j] = frand() + (j % 2 ? 0.3f : 0.0f);
    }
    for (size_t j = 0; j < NQ * d; j++) {
        q[j] = frand() + (j % 2 ? 0.3f : 0.0f);
    }
    ol_quantize_rows(t, x, codes, sc, d, 0, N);
    for (size_t i = 0; i < NQ; i++) {
        inv[i] = ol_inv_norm_f32(q + i * d, d);
    }
    for (size_t nq = 1; nq <= NQ; nq += NQ - 1) {
        memset(out, 0, NQ * N * 4);
        ol_qscan_rows(t, q, inv, nq, codes, sc, d, 3, N, out, N, NULL);
        for (size_t i = 0; i < nq; i++) {
            for (size_t r = 3; r < N; r++) {
                double ref = ref_score(t, q + i * d, codes, sc, d, r);
                CHECK(fabs(out[i * N + r] - ref) <= 1e-5 * (1 + sqrt(d)),
                      "t=%d d=%zu nq=%zu i=%zu r=%zu %g vs %g", t, d, nq, i,
                      r, out[i * N + r], ref);
            }
            CHECK(out[i * N + 2] == 0.0f, "row outside the range written");
        }
        for (size_t i = 0; i < nq; i++) {
            ol_topk_init(&lists[i], ls[i], li[i], K);
        }
        ol_qscan_rows(t, q, inv, nq, codes, sc, d, 3, N, NULL, 0, lists);
        for (size_t i = 0; i < nq; i++) {
            ol_topk_sort(&lists[i]);
            CHECK(lists[i].count == K, "count %zu", lists[i].count);
            for (size_t a = 0; a < K; a++) {
                size_t better = 0;
                float s = ls[i][a];
                CHECK(s == out[i * N + li[i][a]], "top-k score differs");
                for (size_t r = 3; r < N; r++) {
                    better += out[i * N + r] > s;
                }
                CHECK(better <= a, "t=%d d=%zu entry %zu has %zu better", t,
                      d, a, better);
            }
        }
    }
    free(x);
    free(q);
    free(out);
    free(codes);
}

/* int8 at its extremes: rows of all +-127 codes, and of all -128 (a
 * code quantize never writes but a loaded file may hold), against
 * queries of one value, so that every 32-bit lane of AVX2's one-query
 * integer scan holds its largest sum, for d around the size where the
 * query's 16-bit range starts to shrink (4096) and far past it.  Scores
 * must match the double reference to float rounding.  A zero query
 * scores 0 and a NaN query NaN, without changing the scores of the
 * queries scanned with them. */
static void
test_int8_extremes(void)
{
    static const size_t big[] = {768, 4096, 4112, 70001};
    enum { NQX = 8, NR = 4 };

    for (size_t b = 0; b < sizeof(big) / sizeof(big[0]); b++) {
        size_t d = big[b];
        float *x = malloc(NR * d * 4), *q = malloc(NQX * d * 4);
        float sc[NR], inv[NQX], out[NQX * NR];
        int8_t *codes = malloc(NR * d);
        for (size_t j = 0; j < d; j++) {
            x[j] = 3.0f;          /* row 0: all +127 */
            x[d + j] = -2.0f;     /* row 1: all -127 */
            x[2 * d + j] = 0.5f;  /* row 2: +127 */
            x[3 * d + j] = -7.0f; /* row 3: -127, then -128 below */
        }
        for (size_t i = 0; i < NQX; i++) {
            for (size_t j = 0; j < d; j++) {
                q[i * d + j] = i == 5 ? 0.0f : (float)(i + 1) * 0.25f;
            }
        }
        ol_quantize_rows(OL_Q_INT8, x, codes, sc, d, 0, NR);
        memset(codes + 3 * d, -128, d);
        for (size_t nq = 1; nq <= NQX; nq += NQX - 1) {
            for (int with_nan = 0; with_nan <= (nq > 1); with_nan++) {
                q[6 * d + d / 2] = with_nan ? NAN : 7.0f * 0.25f;
                for (size_t i = 0; i < nq; i++) {
                    inv[i] = ol_inv_norm_f32(q + i * d, d);
                }
                ol_qscan_rows(OL_Q_INT8, q, inv, nq, codes, sc, d, 0, NR,
                              out, NR, NULL);
                for (size_t i = 0; i < nq; i++) {
                    for (size_t r = 0; r < NR; r++) {
                        float got = out[i * NR + r];
                        if (i == 6 && with_nan) {
                            CHECK(isnan(got), "d=%zu NaN query scored %g",
                                  d, got);
                            continue;
                        }
                        double want = ref_score(OL_Q_INT8, q + i * d,
                                                codes, sc, d, r);
                        CHECK(i != 5 || want == 0.0, "zero query");
                        /* float sums of d terms: test_scan's bound; an
                         * overflow would be off by far more */
                        CHECK(fabs(got - want) <= 1e-5 * (1 + sqrt(d)),
                              "d=%zu nq=%zu i=%zu r=%zu nan=%d: %g vs %g",
                              d, nq, i, r, with_nan, got, want);
                    }
                }
            }
        }
        free(x);
        free(q);
        free(codes);
    }
}

int
main(void)
{
    static const ol_isa isas[] = {OL_ISA_SCALAR, OL_ISA_AVX2, OL_ISA_AVX512};
    int ran = 0;

    for (size_t a = 0; a < sizeof(isas) / sizeof(isas[0]); a++) {
        if (ol_kernels_force(isas[a]) != 0) {
            printf("quant: %s not supported here, skipped\n",
                   ol_isa_name(isas[a]));
            continue;
        }
        cur = ol_isa_name(isas[a]);
        ran++;
        for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
            test_quantize(OL_Q_BF16, dims[i]);
            test_quantize(OL_Q_INT8, dims[i]);
            test_scan(OL_Q_BF16, dims[i]);
            test_scan(OL_Q_INT8, dims[i]);
        }
        test_int8_extremes();
    }
    printf("quant: %d ISAs, %d checks, %d failed\n", ran, checks, failures);
    return failures != 0;
}

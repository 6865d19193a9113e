/* Tests of the vector kernels (src/kernels) on every ISA this CPU runs:
 * the portable C path always, AVX2 and AVX-512 on x86-64, NEON on aarch64
 * (CI runs that build under qemu-user, .ci/run).
 *
 * Each kernel is compared with a double-precision reference computed here.
 * Similarities must agree to a relative 1e-5; "relative" is taken against
 * max(|ref|, sum|a_i b_i| / (|a| |b|)), the scale of what the kernel
 * summed: a cosine near 0 is the difference of large terms, and no float
 * summation can give it a small error relative to itself.  Top-k results
 * are checked exactly against a sort of the same ISA's own scores, since
 * float rounding may reorder scores closer than 1e-7.
 *
 * Checks stay on with NDEBUG.  Exit status 0 means every check passed.
 * With OFFLOOP_ISA set, the first check is that the choice honoured it.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static int failures;
static int checks;
static const char *cur_isa = "?";

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        checks++;                                                        \
        if (!(cond)) {                                                   \
            if (++failures <= 40) {                                      \
                fprintf(stderr, "FAIL %s:%d [%s] %s: ", __FILE__,        \
                        __LINE__, cur_isa, #cond);                       \
                fprintf(stderr, __VA_ARGS__);                            \
                fputc('\n', stderr);                                     \
            }                                                            \
        }                                                                \
    } while (0)

static const size_t dims[] = {1, 3, 7, 15, 16, 17, 31, 33, 384, 768, 1000};
#define NDIMS (sizeof(dims) / sizeof(dims[0]))

static uint64_t rng = 0x9e3779b97f4a7c15u;

/* Uniform in [-1, 1): xorshift64*, reproducible across runs. */
static float
frand(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((double)((rng * 0x2545f4914f6cdd1dULL) >> 11) /
                       (double)(1ULL << 53) * 2.0 -
                   1.0);
}

/* Rows of random data with a positive bias on half the columns, so that
 * cosines spread over (-1, 1) instead of clustering near 0.  One float of
 * padding in front makes the rows misaligned for vector loads. */
static float *
alloc_rows(size_t n, size_t d, float **base)
{
    size_t i;
    float *p = malloc((n * d + 1) * sizeof(float));

    if (p == NULL) {
        abort();
    }
    *base = p;
    for (i = 0; i < n * d; i++) {
        p[1 + i] = frand() + ((i % d) % 2 ? 0.5f : 0.0f);
    }
    return p + 1;
}

static double
ref_dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    size_t i;

    for (i = 0; i < n; i++) {
        s += (double)a[i] * b[i];
    }
    return s;
}

static double
ref_abs_dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    size_t i;

    for (i = 0; i < n; i++) {
        s += fabs((double)a[i] * b[i]);
    }
    return s;
}

/* |got - ref| within 1e-5 of the larger of |ref| and the summed scale. */
static int
close_to(float got, double ref, double scale)
{
    double tol = 1e-5 * (fabs(ref) > scale ? fabs(ref) : scale) + 1e-30;
    return fabs((double)got - ref) <= tol;
}

static void
test_cosine(void)
{
    size_t di, i;
    float *ba, *bb;

    for (di = 0; di < NDIMS; di++) {
        size_t d = dims[di];
        float *a = alloc_rows(1, d, &ba), *b = alloc_rows(1, d, &bb);
        double na = sqrt(ref_dot(a, a, d)), nb = sqrt(ref_dot(b, b, d));
        double ref = ref_dot(a, b, d) / (na * nb);
        float got = ol_cosine_f32(a, b, d);
        CHECK(close_to(got, ref, ref_abs_dot(a, b, d) / (na * nb)),
              "d=%zu got %.9g want %.9g", d, got, ref);
        got = ol_cosine_f32(a, a, d);
        CHECK(fabs(got - 1.0) <= 1e-5, "d=%zu self %.9g", d, got);
        CHECK(ol_inv_norm_f32(a, d) == (float)(1.0 / na),
              "d=%zu inv_norm %.9g want %.9g", d, ol_inv_norm_f32(a, d),
              1.0 / na);

        memset(b, 0, d * sizeof(float));
        CHECK(ol_cosine_f32(a, b, d) == 0.0f, "d=%zu zero b", d);
        CHECK(ol_cosine_f32(b, a, d) == 0.0f, "d=%zu zero a", d);
        CHECK(ol_inv_norm_f32(b, d) == 0.0f, "d=%zu inv_norm zero", d);

        a[d / 2] = NAN;
        for (i = 0; i < d; i++) {
            b[i] = 1.0f;
        }
        got = ol_cosine_f32(a, b, d);
        CHECK(isnan(got), "d=%zu NaN input gave %g", d, got);
        a[d / 2] = INFINITY;
        (void)ol_cosine_f32(a, b, d); /* any value; no crash */
        free(ba);
        free(bb);
    }
}

static void
test_normalize(void)
{
    size_t di, r, i;
    const size_t n = 23;

    for (di = 0; di < NDIMS; di++) {
        size_t d = dims[di];
        float *bx, *bo, *bi;
        float *x = alloc_rows(n, d, &bx);
        float *out = alloc_rows(n, d, &bo);
        float *inplace = alloc_rows(n, d, &bi);

        memset(x + 4 * d, 0, d * sizeof(float)); /* a zero row */
        memcpy(inplace, x, n * d * sizeof(float));
        ol_normalize_rows_f32(x, out, d, 0, n);
        /* In place, and in three ranges: must equal the one call. */
        ol_normalize_rows_f32(inplace, inplace, d, 0, 5);
        ol_normalize_rows_f32(inplace, inplace, d, 5, 6);
        ol_normalize_rows_f32(inplace, inplace, d, 6, n);
        CHECK(memcmp(out, inplace, n * d * sizeof(float)) == 0,
              "d=%zu in-place ranges differ from one call", d);
        for (r = 0; r < n; r++) {
            const float *xr = x + r * d, *o = out + r * d;
            double nr = sqrt(ref_dot(xr, xr, d));
            int bad = 0;
            for (i = 0; i < d; i++) {
                double want = nr == 0.0 ? 0.0 : xr[i] / nr;
                bad += !close_to(o[i], want, fabs(want));
            }
            CHECK(bad == 0, "d=%zu row %zu: %d elements off", d, r, bad);
        }

        /* NaN and inf rows: no crash; the NaN row is NaN, others intact. */
        x[2 * d] = NAN;
        x[3 * d + d - 1] = INFINITY;
        ol_normalize_rows_f32(x, x, d, 0, n);
        CHECK(isnan(x[2 * d + d - 1]), "d=%zu NaN row", d);
        CHECK(memcmp(x + 5 * d, out + 5 * d, d * sizeof(float)) == 0,
              "d=%zu NaN/inf leaked into other rows", d);
        free(bx);
        free(bo);
        free(bi);
    }
}

/* A call large enough (over 4 MB) for the streaming-store path of an
 * out-of-place normalize, with rows that start unaligned: it must give
 * the same bits as the in-place path. */
static void
test_normalize_big(void)
{
    const size_t n = 1500, d = 1000;
    float *bx, *bo;
    float *x = alloc_rows(n, d, &bx), *out = alloc_rows(n, d, &bo);

    ol_normalize_rows_f32(x, out, d, 0, n);
    ol_normalize_rows_f32(x, x, d, 0, n);
    CHECK(memcmp(x, out, n * d * sizeof(float)) == 0,
          "large out-of-place normalize differs from in place");
    free(bx);
    free(bo);
}

/* Reference scores of nq queries against n rows, with the scale that the
 * tolerance uses.  Zero queries and rows score 0.  If m_normalized, the
 * rows count as unit length whatever they hold. */
static void
ref_scores(const float *q, size_t nq, const float *m, size_t n, size_t d,
           int m_normalized, double *ref, double *scale)
{
    size_t i, r;

    for (i = 0; i < nq; i++) {
        const float *qi = q + i * d;
        double nqi = sqrt(ref_dot(qi, qi, d));
        for (r = 0; r < n; r++) {
            const float *mr = m + r * d;
            double nm = m_normalized ? 1.0 : sqrt(ref_dot(mr, mr, d));
            double den = nqi * nm;
            ref[i * n + r] = den == 0.0 ? 0.0 : ref_dot(qi, mr, d) / den;
            scale[i * n + r] = den == 0.0 ? 0.0 : ref_abs_dot(qi, mr, d) / den;
        }
    }
}

/* Is (sa, ia) ranked before (sb, ib)?  NaN last, ties by index. */
static int
ranks_before(float sa, int64_t ia, float sb, int64_t ib)
{
    if (isnan(sa) || isnan(sb)) {
        return isnan(sb) && (!isnan(sa) || ia < ib);
    }
    return sa > sb || (sa == sb && ia < ib);
}

/* The expected top k of one query's scores, by insertion sort. */
static size_t
expected_topk(const float *s, size_t n, size_t k, float *es, int64_t *ei)
{
    size_t r, c = 0;

    for (r = 0; r < n; r++) {
        size_t at = c < k ? c : k;
        if (at == k && !ranks_before(s[r], (int64_t)r, es[k - 1], ei[k - 1])) {
            continue;
        }
        if (at == k) {
            at = k - 1;
        }
        while (at > 0 &&
               ranks_before(s[r], (int64_t)r, es[at - 1], ei[at - 1])) {
            if (at < k) {
                es[at] = es[at - 1];
                ei[at] = ei[at - 1];
            }
            at--;
        }
        es[at] = s[r];
        ei[at] = (int64_t)r;
        if (c < k) {
            c++;
        }
    }
    return c;
}

static int
same_list(const ol_topk *t, size_t c, const float *es, const int64_t *ei)
{
    size_t j;

    if (t->count != c) {
        return 0;
    }
    for (j = 0; j < c; j++) {
        int same = t->scores[j] == es[j] ||
                   (isnan(t->scores[j]) && isnan(es[j]));
        if (!same || t->indices[j] != ei[j]) {
            return 0;
        }
    }
    return 1;
}

/* Top-k of nq queries over n rows, with k = 1, 5 and n, three ways: the
 * whole range at once; two ranges into the same lists, later range first;
 * two ranges into separate lists, the first sorted, then merged, and the
 * result merged again into an empty list.  All must equal a sort of the
 * scores that ol_cosine_rows_f32 gave. */
static void
check_topk(const float *q, const float *qinv, size_t nq, const float *m,
           size_t n, size_t d, int mn, const float *scores)
{
    size_t ks[3] = {1, 5, n}, ki, i, j, c;
    size_t cut = n / 3;
    float *sc = malloc((5 * nq + 1) * n * sizeof(float));
    int64_t *ix = malloc((5 * nq + 1) * n * sizeof(int64_t));
    ol_topk *lists = malloc(5 * nq * sizeof(ol_topk));

    if (sc == NULL || ix == NULL || lists == NULL) {
        abort();
    }
    for (ki = 0; ki < 3; ki++) {
        size_t k = ks[ki] < n ? ks[ki] : n;
        ol_topk *way[5];
        float *es = sc + 5 * nq * n;
        int64_t *ei = ix + 5 * nq * n;
        for (j = 0; j < 5; j++) {
            way[j] = lists + j * nq;
        }
        for (i = 0; i < 5 * nq; i++) {
            ol_topk_init(&lists[i], sc + i * n, ix + i * n, k);
        }
        ol_topk_rows_f32(q, qinv, nq, m, d, 0, n, mn, way[0]);
        ol_topk_rows_f32(q, qinv, nq, m, d, cut, n, mn, way[1]);
        ol_topk_rows_f32(q, qinv, nq, m, d, 0, cut, mn, way[1]);
        ol_topk_rows_f32(q, qinv, nq, m, d, 0, cut, mn, way[2]);
        ol_topk_rows_f32(q, qinv, nq, m, d, cut, n, mn, way[3]);
        for (i = 0; i < nq; i++) {
            ol_topk_sort(&way[2][i]);
            ol_topk_merge(&way[2][i], &way[3][i]);
            ol_topk_merge(&way[4][i], &way[2][i]);
            c = expected_topk(scores + i * n, n, k, es, ei);
            for (j = 0; j < 5; j++) {
                if (j == 3) {
                    continue; /* a part only */
                }
                ol_topk_sort(&way[j][i]);
                if (j == 1) {
                    ol_topk_sort(&way[j][i]); /* a no-op when sorted */
                }
                CHECK(same_list(&way[j][i], c, es, ei),
                      "d=%zu n=%zu nq=%zu q=%zu k=%zu way %zu (got [0] = "
                      "%lld %.9g)",
                      d, n, nq, i, k, j, (long long)way[j][i].indices[0],
                      way[j][i].scores[0]);
            }
        }
    }
    free(sc);
    free(ix);
    free(lists);
}

static void
test_rows(size_t d, size_t n, size_t nq, int mn, int special)
{
    size_t stride = n + 3, i, r;
    float *bq, *bm;
    float *q = alloc_rows(nq, d, &bq), *m = alloc_rows(n, d, &bm);
    float *qinv = malloc(nq * sizeof(float));
    float *out = malloc(nq * stride * sizeof(float));
    float *out2 = malloc(nq * stride * sizeof(float));
    double *ref = malloc(nq * n * sizeof(double));
    double *scale = malloc(nq * n * sizeof(double));
    float *dense = malloc(nq * n * sizeof(float));

    if (!qinv || !out || !out2 || !ref || !scale || !dense) {
        abort();
    }
    if (mn) {
        ol_normalize_rows_f32(m, m, d, 0, n);
    }
    if (n > 2) {
        memset(m + 1 * d, 0, d * sizeof(float)); /* zero row */
    }
    if (n > 6) {
        memcpy(m + 6 * d, m + 2 * d, d * sizeof(float)); /* tie */
        memcpy(m + (n - 1) * d, m + 2 * d, d * sizeof(float));
    }
    if (nq > 1) {
        memset(q + (nq - 1) * d, 0, d * sizeof(float)); /* zero query */
    }
    if (special && n > 5) {
        m[3 * d + d / 2] = NAN;
        m[5 * d] = INFINITY;
    }
    for (i = 0; i < nq; i++) {
        qinv[i] = ol_inv_norm_f32(q + i * d, d);
    }
    ref_scores(q, nq, m, n, d, mn, ref, scale);
    for (i = 0; i < nq * stride; i++) {
        out[i] = out2[i] = -7.0f;
    }
    ol_cosine_rows_f32(q, qinv, nq, m, d, 0, n, mn, out, stride);
    ol_cosine_rows_f32(q, qinv, nq, m, d, n / 2, n, mn, out2, stride);
    ol_cosine_rows_f32(q, qinv, nq, m, d, 0, n / 2, mn, out2, stride);
    CHECK(memcmp(out, out2, nq * stride * sizeof(float)) == 0,
          "d=%zu n=%zu nq=%zu: ranges differ from one call", d, n, nq);
    for (i = 0; i < nq; i++) {
        int bad = 0;
        for (r = 0; r < n; r++) {
            float got = out[i * stride + r];
            double want = ref[i * n + r];
            dense[i * n + r] = got;
            if (special && n > 5 && (r == 3 || r == 5)) {
                bad += r == 3 && i + 1 < nq && !isnan(got);
                continue;
            }
            if (!close_to(got, want, scale[i * n + r])) {
                if (bad++ == 0) {
                    fprintf(stderr, "  q %zu row %zu: got %.9g want %.9g\n",
                            i, r, got, want);
                }
            }
        }
        for (r = n; r < stride; r++) {
            bad += out[i * stride + r] != -7.0f;
        }
        CHECK(bad == 0, "d=%zu n=%zu nq=%zu mn=%d q=%zu: %d scores off", d,
              n, nq, mn, i, bad);
    }
    check_topk(q, qinv, nq, m, n, d, mn, dense);
    free(bq);
    free(bm);
    free(qinv);
    free(out);
    free(out2);
    free(ref);
    free(scale);
    free(dense);
}

static void
test_scans(void)
{
    static const size_t ns[] = {1, 2, 7, 13, 50, 131};
    static const size_t nqs[] = {1, 2, 3, 4, 5, 9};
    size_t di, ni, qi;

    for (di = 0; di < NDIMS; di++) {
        for (ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
            for (qi = 0; qi < sizeof(nqs) / sizeof(nqs[0]); qi++) {
                test_rows(dims[di], ns[ni], nqs[qi], 0, 0);
                test_rows(dims[di], ns[ni], nqs[qi], 1, 0);
            }
            test_rows(dims[di], ns[ni], 1, 0, 1);
            test_rows(dims[di], ns[ni], 6, 0, 1);
        }
    }
    /* Enough rows for several L2 tiles, and many queries. */
    test_rows(768, 600, 17, 0, 0);
    test_rows(33, 5000, 8, 1, 1);
}

/* Top-k order rules on hand-made lists: ties by index, NaN last. */
static void
test_topk_order(void)
{
    float s[6];
    int64_t ix[6];
    ol_topk t;
    static const float in[8] = {0.5f, NAN, 0.5f, 1.0f, NAN, -1.0f, 0.5f,
                                INFINITY};
    static const int64_t want[6] = {7, 3, 0, 2, 6, 5};
    size_t i;

    ol_topk_init(&t, s, ix, 6);
    for (i = 8; i-- > 0;) { /* out of index order on purpose */
        ol_topk_merge(&t, &(ol_topk){(float *)&in[i], (int64_t[]){(int64_t)i},
                                     1, 1});
    }
    ol_topk_sort(&t);
    CHECK(t.count == 6, "count %zu", t.count);
    for (i = 0; i < 6; i++) {
        CHECK(t.indices[i] == want[i], "rank %zu: index %lld want %lld", i,
              (long long)t.indices[i], (long long)want[i]);
    }
}

int
main(void)
{
    static const ol_isa isas[] = {OL_ISA_SCALAR, OL_ISA_AVX2, OL_ISA_AVX512,
                                  OL_ISA_NEON};
    const size_t nisas = sizeof(isas) / sizeof(isas[0]);
    const char *env = getenv("OFFLOOP_ISA");
    ol_isa first = ol_kernels_isa();
    size_t i;
    int ran = 0;

    printf("best ISA: %s; in use at start: %s\n",
           ol_isa_name(ol_kernels_best_isa()), ol_isa_name(first));
    if (env != NULL) {
        int ok = 0;
        for (i = 0; i < nisas; i++) {
            if (strcmp(env, ol_isa_name(isas[i])) == 0) {
                ok = 1;
                CHECK(first == isas[i] ||
                          ol_kernels_force(isas[i]) == -ENOTSUP,
                      "OFFLOOP_ISA=%s not honoured", env);
            }
        }
        if (!ok) {
            CHECK(first == ol_kernels_best_isa(), "bad OFFLOOP_ISA");
        }
    }
    CHECK(ol_kernels_force((ol_isa)7) == -ENOTSUP, "bogus ISA accepted");
    CHECK(ol_kernels_isa() == first, "failed force changed the ISA");
#if defined(__aarch64__)
    /* NEON is the aarch64 baseline: a build that cannot pick it there
     * lost neon.c (kernels.cmake). */
    CHECK(ol_kernels_best_isa() == OL_ISA_NEON, "aarch64 without NEON");
#else
    CHECK(ol_kernels_force(OL_ISA_NEON) == -ENOTSUP, "NEON off aarch64");
#endif
    for (i = 0; i < nisas; i++) {
        if (ol_kernels_force(isas[i]) != 0) {
            printf("%s: not supported here, skipped\n",
                   ol_isa_name(isas[i]));
            continue;
        }
        cur_isa = ol_isa_name(isas[i]);
        CHECK(ol_kernels_isa() == isas[i], "force did not stick");
        test_cosine();
        test_normalize();
        test_normalize_big();
        test_scans();
        test_topk_order();
        printf("%s: done, %d failures so far\n", cur_isa, failures);
        ran++;
    }
    CHECK(ran >= 1, "no ISA ran");
    printf("%d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}

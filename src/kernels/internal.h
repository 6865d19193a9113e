/* Shared between the kernel files, never included outside src/kernels.
 *
 * Each ISA file (scalar.c, avx2.c, avx512.c, neon.c) exports one
 * ol__kernel_table;
 * only dispatch.c reads the tables.  The row-scan driver below is
 * `static inline` on purpose: every ISA file compiles its own copy with its
 * own -m flags and its own micro-kernels inlined, so the tiling and top-k
 * logic is written once yet never calls across an ISA boundary in the hot
 * loop.  Static (not extern) inline also keeps the AVX copies from being
 * merged by the linker into code that runs on a CPU without AVX.
 */
#ifndef OFFLOOP_KERNELS_INTERNAL_H
#define OFFLOOP_KERNELS_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#if defined(__GNUC__)
#define OL__INLINE static inline __attribute__((always_inline))
/* Into L2 (and L3), not L1: the line is needed only by the next tile. */
#define OL__PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
#else
#define OL__INLINE static inline
#define OL__PREFETCH_L2(p) ((void)(p))
#endif

/* One implementation of the dispatched kernels.  Arguments and semantics
 * are those of the public functions of the same names in kernels.h. */
typedef struct {
    float (*cosine)(const float *a, const float *b, size_t n);
    void (*normalize_rows)(const float *x, float *out, size_t d,
                           size_t row_begin, size_t row_end);
    void (*cosine_rows)(const float *q, const float *q_inv_norm, size_t nq,
                        const float *m, size_t d, size_t row_begin,
                        size_t row_end, int m_normalized, float *out,
                        size_t out_stride);
    void (*topk_rows)(const float *q, const float *q_inv_norm, size_t nq,
                      const float *m, size_t d, size_t row_begin,
                      size_t row_end, int m_normalized, ol_topk *lists);
} ol__kernel_table;

extern const ol__kernel_table ol__kernels_scalar;
#if defined(OL_HAVE_X86_SIMD)
extern const ol__kernel_table ol__kernels_avx2;
extern const ol__kernel_table ol__kernels_avx512;
#endif
#if defined(OL_HAVE_NEON)
extern const ol__kernel_table ol__kernels_neon;
#endif

/* topk.c: the slow path of an insertion (full comparison, heap update),
 * and the repair of a list that ol_topk_sort() left best-first. */
void ol__topk_push(ol_topk *t, float score, int64_t index);
void ol__topk_prepare(ol_topk *t);

/* A list is kept as a binary heap whose root scores[0] is its worst entry,
 * so the common case of a scan -- a full list and a score below the
 * current k-th best -- costs one comparison.  `s >= worst` is necessary
 * for s to enter a full list whose worst is a number, and it is false for
 * a NaN s, which can then only displace a NaN worst (tie on index). */
OL__INLINE void
ol__topk_offer(ol_topk *t, float s, int64_t index)
{
    if (t->count == t->k) {
        float worst = t->scores[0];
        if (!(s >= worst) && worst == worst) {
            return;
        }
    }
    ol__topk_push(t, s, index);
}

/* 1/sqrt(ss) for a sum of squares accumulated in float; the root and the
 * division run in double so they add no error of their own.  0 for a
 * zero vector so that zero rows and queries score 0, not NaN. */
OL__INLINE float
ol__inv_sqrt(float ss)
{
    if (ss == 0.0f) {
        return 0.0f;
    }
    return (float)(1.0 / sqrt((double)ss));
}

/* Largest register block a micro-kernel may use (rows x queries). */
#define OL__RB_MAX 8
#define OL__QB_MAX 8
/* Rows of m scanned per tile: the tile stays in L2 while every query
 * block passes over it, so m is read from memory once per call. */
#define OL__TILE_BYTES (96 * 1024)
#define OL__TILE_ROWS_MAX 512

/* Rows of a tile of rows of row_bytes each (at most OL__TILE_BYTES and
 * OL__TILE_ROWS_MAX), a multiple of the block's rb rows, at least rb. */
OL__INLINE size_t
ol__tile_rows(size_t row_bytes, size_t rb)
{
    size_t tile = OL__TILE_BYTES / (row_bytes + 1);

    if (tile > OL__TILE_ROWS_MAX) {
        tile = OL__TILE_ROWS_MAX;
    }
    tile -= tile % rb;
    return tile < rb ? rb : tile;
}

/* What a scan needs from an ISA.
 *
 * block: dots[i * OL__RB_MAX + r] = dot(qi[i], mr[r]) for r < rb and
 *        i < qb (rb and qb are the ISA's fixed block sizes; the driver
 *        repeats the last row or query pointer to pad short blocks).
 * dot_sumsq: dot(q, m) and, in *sumsq, |m|^2, in one pass over m.
 * sumsq: |m|^2. */
typedef struct {
    void (*block)(const float *const *mr, const float *const *qi, size_t d,
                  float *dots);
    float (*dot_sumsq)(const float *q, const float *m, size_t d,
                       float *sumsq);
    float (*sumsq)(const float *m, size_t d);
    size_t rb;
    size_t qb;
} ol__scan_ops;

OL__INLINE void
ol__emit(const float *s, size_t qi, size_t n, size_t r0, size_t stride,
         float *out, ol_topk *lists)
{
    size_t r;

    if (lists != NULL) {
        ol_topk *t = &lists[qi];
        if (t->count == t->k && t->scores[0] == t->scores[0]) {
            /* The usual case once the list is full: no score of the block
             * reaches the worst entry.  Test them together, branch-free,
             * instead of one branch per score. */
            float worst = t->scores[0];
            int any = 0;
            for (r = 0; r < n; r++) {
                any |= s[r] >= worst;
            }
            if (!any) {
                return;
            }
        }
        for (r = 0; r < n; r++) {
            ol__topk_offer(t, s[r], (int64_t)(r0 + r));
        }
    }
    else {
        float *o = out + qi * stride + r0;
        for (r = 0; r < n; r++) {
            o[r] = s[r];
        }
    }
}

/* One query against raw or unit rows: one pass per row reads m once and
 * computes the dot and the row's norm together (the memory-bound case). */
OL__INLINE void
ol__scan_one(const ol__scan_ops *ops, const float *q, float qinv,
             const float *m, size_t d, size_t row_begin, size_t row_end,
             int m_normalized, float *out, ol_topk *list)
{
    size_t r;

    for (r = row_begin; r < row_end; r++) {
        float ss;
        float dot = ops->dot_sumsq(q, m + r * d, d, &ss);
        float minv = m_normalized ? 1.0f : ol__inv_sqrt(ss);
        float s = dot * qinv * minv;
        if (list != NULL) {
            ol__topk_offer(list, s, (int64_t)r);
        }
        else {
            out[r] = s;
        }
    }
}

/* The body of ol_cosine_rows_f32 and ol_topk_rows_f32 (lists != NULL
 * selects top-k).  Several queries: the rows are cut into tiles that fit
 * in L2; the row norms of a tile are computed first (that pass is what
 * pulls the tile in from memory), then each block of queries sweeps the
 * tile block by block, so every m vector loaded into a register feeds
 * ops->qb queries and every query vector feeds ops->rb rows. */
OL__INLINE void
ol__scan(const ol__scan_ops *ops, const float *q, const float *qinv,
         size_t nq, const float *m, size_t d, size_t row_begin,
         size_t row_end, int m_normalized, float *out, size_t out_stride,
         ol_topk *lists)
{
    const size_t rb = ops->rb, qb = ops->qb;
    float minv[OL__TILE_ROWS_MAX];
    float dots[OL__QB_MAX * OL__RB_MAX];
    float s[OL__RB_MAX];
    size_t tile, t0, i, r;

    if (lists != NULL) {
        for (i = 0; i < nq; i++) {
            ol__topk_prepare(&lists[i]);
        }
    }
    if (nq == 0 || row_begin >= row_end) {
        return;
    }
    if (nq == 1) {
        ol__scan_one(ops, q, qinv[0], m, d, row_begin, row_end,
                     m_normalized, out, lists);
        return;
    }
    tile = ol__tile_rows(d * sizeof(float), rb);
    for (t0 = row_begin; t0 < row_end; t0 += tile) {
        size_t nt = row_end - t0 < tile ? row_end - t0 : tile;
        size_t q0, r0, calls, step;
        /* While the queries sweep this tile, prefetch the next one a few
         * lines per micro-kernel call: otherwise the norm pass would wait
         * for all of it from memory, a tenth of the time at nq = 64. */
        const char *pf = (const char *)(m + (t0 + nt) * d);
        const char *pf_end = (const char *)(m + row_end * d);
        if (pf_end - pf > (ptrdiff_t)(tile * d * sizeof(float))) {
            pf_end = pf + tile * d * sizeof(float);
        }
        calls = ((nq + qb - 1) / qb) * ((nt + rb - 1) / rb);
        step = ((size_t)(pf_end - pf) / calls + 63) & ~(size_t)63;
        for (r = 0; r < nt; r++) {
            minv[r] = m_normalized
                          ? 1.0f
                          : ol__inv_sqrt(ops->sumsq(m + (t0 + r) * d, d));
        }
        for (q0 = 0; q0 < nq; q0 += qb) {
            size_t nqb = nq - q0 < qb ? nq - q0 : qb;
            const float *qi[OL__QB_MAX];
            for (i = 0; i < qb; i++) {
                qi[i] = q + (q0 + (i < nqb ? i : nqb - 1)) * d;
            }
            for (r0 = 0; r0 < nt; r0 += rb) {
                size_t nrb = nt - r0 < rb ? nt - r0 : rb;
                const float *mr[OL__RB_MAX];
                size_t b;
                for (b = 0; b < step && pf < pf_end; b += 64, pf += 64) {
                    OL__PREFETCH_L2(pf);
                }
                for (r = 0; r < rb; r++) {
                    mr[r] = m + (t0 + r0 + (r < nrb ? r : nrb - 1)) * d;
                }
                ops->block(mr, qi, d, dots);
                for (i = 0; i < nqb; i++) {
                    float qv = qinv[q0 + i];
                    for (r = 0; r < nrb; r++) {
                        s[r] = dots[i * OL__RB_MAX + r] * qv * minv[r0 + r];
                    }
                    ol__emit(s, q0 + i, nrb, t0 + r0, out_stride, out,
                             lists);
                }
            }
        }
    }
}

#endif /* OFFLOOP_KERNELS_INTERNAL_H */

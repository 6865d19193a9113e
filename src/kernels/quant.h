/* Shared between the quantized-scan files (quant_scalar.c, quant_avx2.c,
 * quant_avx512.c), never included outside src/kernels.
 *
 * A quantized matrix stores unit rows (quantize divides every row by its
 * L2 norm first): bfloat16 codes, or int8 codes with one float scale per
 * row (code * scale is the unit row's value).  A score is therefore
 * dot(q, decoded row) * (1/|q|) * scale, the cosine of q with the row up
 * to the quantization error; no row norm is computed during a scan.
 *
 * The driver is `static inline` for the reason internal.h gives: every
 * ISA file compiles its own copy with its micro-kernels inlined.  Queries
 * stay float32 and the codes are widened to float32 in registers, so the
 * portable and SIMD paths differ only in summation order.
 */
#ifndef OFFLOOP_KERNELS_QUANT_H
#define OFFLOOP_KERNELS_QUANT_H

#include <stdlib.h>

#include "internal.h"

/* One ISA's scan over one code type.
 *
 * dot:   dot(q, decoded row m), d elements.
 * block: dots[i * OL__RB_MAX + r] = dot(qi[i], decoded mr[r]) for r < rb,
 *        i < qb (the driver pads short blocks by repeating a pointer).
 * esize: bytes per code.
 * decode: out[0..d) = the decoded row m (exact: codes widen exactly).
 * fblock: block over float32 rows (decoded ones).
 * prepare, pdot (optional): a one-query scan may convert the query once
 *        (prepare returns it, malloc'd, or NULL to use dot) and score
 *        each row from the converted query with pdot. */
typedef struct {
    float (*dot)(const float *q, const void *m, size_t d);
    void (*block)(const void *const *mr, const float *const *qi, size_t d,
                  float *dots);
    size_t rb;
    size_t qb;
    size_t esize;
    void (*decode)(const void *m, size_t d, float *out);
    void (*fblock)(const void *const *mr, const float *const *qi, size_t d,
                   float *dots);
    void *(*prepare)(const float *q, size_t d);
    float (*pdot)(const void *prepared, const void *m, size_t d);
} ol__qscan_ops;

/* One implementation: a scan function per code type, with the arguments
 * of ol_qscan_rows in kernels.h. */
typedef void (*ol__qscan_fn)(const float *q, const float *q_inv_norm,
                             size_t nq, const void *codes,
                             const float *scales, size_t d, size_t row_begin,
                             size_t row_end, float *out, size_t out_stride,
                             ol_topk *lists);
typedef struct {
    ol__qscan_fn bf16;
    ol__qscan_fn int8;
} ol__qkernel_table;

extern const ol__qkernel_table ol__qkernels_scalar;
#if defined(OL_HAVE_X86_SIMD)
extern const ol__qkernel_table ol__qkernels_avx2;
extern const ol__qkernel_table ol__qkernels_avx512;
#endif

/* bfloat16 is the top half of a float32: widening is a shift. */
OL__INLINE float
ol__bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}

/* The body of every quantized scan (lists != NULL selects top-k).  Rows
 * are cut into tiles that stay in L2 while every block of queries sweeps
 * them, as in ol__scan; one query reads each row once.
 *
 * Several queries: each tile is first decoded to float32 in a scratch
 * buffer, then swept by the float block.  Widening the codes inside the
 * block instead costs the widening once per block of queries (11 times
 * for 64 queries in 6-query blocks) and measured 0.6-0.7x the float32
 * scan at 64 queries; decoded once, the widening is paid once per row.
 * Without the scratch (malloc failed) the scan widens in the block.  An
 * integer block for int8 (codes widened to 16 bits, queries rounded to
 * 16 bits, vpmaddwd: 16 multiply-adds an instruction) was tried on AVX2
 * in both block shapes and measured no faster than this (0.96-1.06x
 * float32 at 64 queries, C microbenchmark); a prefetch of the next tile
 * likewise. */
OL__INLINE void
ol__qscan(const ol__qscan_ops *ops, const float *q, const float *qinv,
          size_t nq, const void *codes, const float *scales, size_t d,
          size_t row_begin, size_t row_end, float *out, size_t out_stride,
          ol_topk *lists)
{
    const char *m = (const char *)codes;
    const size_t rb = ops->rb, qb = ops->qb, row_bytes = d * ops->esize;
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
        void *pq = ops->prepare != NULL ? ops->prepare(q, d) : NULL;
        for (r = row_begin; r < row_end; r++) {
            const void *row = m + r * row_bytes;
            float sc = (pq != NULL ? ops->pdot(pq, row, d)
                                   : ops->dot(q, row, d)) *
                       qinv[0] * (scales != NULL ? scales[r] : 1.0f);
            if (lists != NULL) {
                ol__topk_offer(lists, sc, (int64_t)r);
            }
            else {
                out[r] = sc;
            }
        }
        free(pq);
        return;
    }
    tile = ol__tile_rows(d * sizeof(float), rb);
    float *scratch = malloc(tile * d * sizeof(float));
    for (t0 = row_begin; t0 < row_end; t0 += tile) {
        size_t nt = row_end - t0 < tile ? row_end - t0 : tile;
        size_t q0, r0;
        if (scratch != NULL) {
            for (r = 0; r < nt; r++) {
                ops->decode(m + (t0 + r) * row_bytes, d, scratch + r * d);
            }
        }
        for (q0 = 0; q0 < nq; q0 += qb) {
            size_t nqb = nq - q0 < qb ? nq - q0 : qb;
            const float *qi[OL__QB_MAX];
            for (i = 0; i < qb; i++) {
                qi[i] = q + (q0 + (i < nqb ? i : nqb - 1)) * d;
            }
            for (r0 = 0; r0 < nt; r0 += rb) {
                size_t nrb = nt - r0 < rb ? nt - r0 : rb;
                const void *mr[OL__RB_MAX];
                for (r = 0; r < rb; r++) {
                    size_t at = r0 + (r < nrb ? r : nrb - 1);
                    mr[r] = scratch != NULL
                                ? (const void *)(scratch + at * d)
                                : (const void *)(m + (t0 + at) * row_bytes);
                }
                (scratch != NULL ? ops->fblock : ops->block)(mr, qi, d, dots);
                for (i = 0; i < nqb; i++) {
                    float qv = qinv[q0 + i];
                    for (r = 0; r < nrb; r++) {
                        s[r] = dots[i * OL__RB_MAX + r] * qv *
                               (scales != NULL ? scales[t0 + r0 + r] : 1.0f);
                    }
                    ol__emit(s, q0 + i, nrb, t0 + r0, out_stride, out,
                             lists);
                }
            }
        }
    }
    free(scratch);
}

/* The two scan functions of one ISA file, from its ops. */
#define OL__QSCAN_FUNCS(bf16_ops, int8_ops)                                \
    static void scan_bf16(const float *q, const float *qinv, size_t nq,    \
                          const void *codes, const float *scales,          \
                          size_t d, size_t r0, size_t r1, float *out,      \
                          size_t stride, ol_topk *lists)                   \
    {                                                                      \
        (void)scales;                                                      \
        ol__qscan(&bf16_ops, q, qinv, nq, codes, NULL, d, r0, r1, out,     \
                  stride, lists);                                          \
    }                                                                      \
    static void scan_int8(const float *q, const float *qinv, size_t nq,    \
                          const void *codes, const float *scales,          \
                          size_t d, size_t r0, size_t r1, float *out,      \
                          size_t stride, ol_topk *lists)                   \
    {                                                                      \
        ol__qscan(&int8_ops, q, qinv, nq, codes, scales, d, r0, r1, out,   \
                  stride, lists);                                          \
    }

#endif /* OFFLOOP_KERNELS_QUANT_H */

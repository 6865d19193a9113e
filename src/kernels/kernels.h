/* offloop vector kernels: float32 math on raw pointers.
 *
 * Pure C; never includes Python.h and knows nothing of jobs or threads.
 * Every function works on a row range [row_begin, row_end) so the binding
 * can split one call into chunks that run on different workers.  All
 * matrices are row-major and C-contiguous: row r of an N x D matrix m
 * starts at m + r * d.  Functions are thread-safe as long as the output
 * ranges written by concurrent calls do not overlap.
 *
 * NaN and inf follow IEEE arithmetic: they propagate into the results;
 * no kernel crashes or loops forever on them.  top-k orders NaN scores
 * after every number (a NaN is never "better" than a number).
 */
#ifndef OFFLOOP_KERNELS_H
#define OFFLOOP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Which implementation the kernels use.  Chosen once from the CPU at the
 * first call (or by ol_kernels_force()). */
typedef enum {
    OL_ISA_SCALAR = 0,  /* portable C, always available */
    OL_ISA_AVX2 = 1,    /* AVX2 + FMA */
    OL_ISA_AVX512 = 2,  /* AVX-512F */
    OL_ISA_NEON = 3,    /* aarch64 Advanced SIMD (baseline there) */
} ol_isa;

/* The best ISA this CPU and build support. */
ol_isa ol_kernels_best_isa(void);
/* The ISA in use now. */
ol_isa ol_kernels_isa(void);
/* Use `isa` from now on.  Returns 0, or -ENOTSUP if this CPU or build
 * cannot run it (the current choice is then unchanged).  Not meant to be
 * called while kernels run on other threads (tests and benchmarks only). */
int ol_kernels_force(ol_isa isa);
/* "scalar", "avx2", "avx512", "neon". */
const char *ol_isa_name(ol_isa isa);

/* Cosine similarity of two n-vectors: dot(a, b) / (|a| |b|), computed in
 * one pass.  Returns 0 when either vector is all zeros. */
float ol_cosine_f32(const float *a, const float *b, size_t n);

/* Scale rows [row_begin, row_end) of x (N x d) to unit L2 norm, writing
 * out (which may be x itself).  Zero rows stay zero. */
void ol_normalize_rows_f32(const float *x, float *out, size_t d,
                           size_t row_begin, size_t row_end);

/* Cosine scores of `nq` queries q (nq x d) against rows [row_begin,
 * row_end) of m (N x d).  q_inv_norm[i] is 1/|q_i| (0 for a zero query).
 * If m_normalized, the rows of m are taken as unit length and their norms
 * are not computed; otherwise each row's norm is computed in the same pass
 * as its dot products.  Writes out[i * out_stride + r] for each query i and
 * row r in range (a zero row scores 0). */
void ol_cosine_rows_f32(const float *q, const float *q_inv_norm, size_t nq,
                        const float *m, size_t d, size_t row_begin,
                        size_t row_end, int m_normalized, float *out,
                        size_t out_stride);

/* A bounded "best k so far" list for one query.  Better = higher score;
 * equal scores: lower index is better; NaN is worse than any number. */
typedef struct {
    float *scores;    /* capacity k */
    int64_t *indices; /* capacity k */
    size_t k;         /* capacity */
    size_t count;     /* entries held, <= k */
} ol_topk;

/* Initialise a list over caller-provided arrays of length k (k >= 1). */
void ol_topk_init(ol_topk *t, float *scores, int64_t *indices, size_t k);

/* Scan rows [row_begin, row_end) of m for each of the nq queries, keeping
 * the k best rows of query i in lists[i].  Same arguments and scores as
 * ol_cosine_rows_f32; the scores are not materialised for the whole range.
 * The lists may already hold entries (from earlier ranges). */
void ol_topk_rows_f32(const float *q, const float *q_inv_norm, size_t nq,
                      const float *m, size_t d, size_t row_begin,
                      size_t row_end, int m_normalized, ol_topk *lists);

/* Merge src into dst (same query, same k). */
void ol_topk_merge(ol_topk *dst, const ol_topk *src);

/* Sort a list best first (ties: lower index first).  After this,
 * scores[0..count) and indices[0..count) are the result. */
void ol_topk_sort(ol_topk *t);

/* 1/|v| for an n-vector (0 for a zero vector), accumulated in double. */
float ol_inv_norm_f32(const float *v, size_t n);


/* ---- quantized storage (quant_scalar.c, quant_*.c, quant.h) ---------
 *
 * A quantized matrix holds unit rows (each row divided by its L2 norm)
 * as bfloat16 codes (uint16, the top half of a float32) or as int8 codes
 * with one float32 scale per row (code * scale is the unit row's value).
 * Queries stay float32; a score is the cosine of the query with the
 * decoded row.  A row holding NaN or inf is coded so that it scores NaN
 * (ranked after every number) without touching any other row. */
typedef enum {
    OL_Q_BF16 = 1,
    OL_Q_INT8 = 2,
} ol_qtype;

/* Bytes per code: 2 for bfloat16, 1 for int8. */
size_t ol_qtype_size(ol_qtype t);

/* Code rows [row_begin, row_end) of x (N x d) into codes (N x d codes)
 * and, for int8, scales (N).  Not dispatched (portable C). */
void ol_quantize_rows(ol_qtype t, const float *x, void *codes, float *scales,
                      size_t d, size_t row_begin, size_t row_end);

/* As ol_cosine_rows_f32 and ol_topk_rows_f32 over a quantized matrix
 * (scales: NULL for bfloat16).  lists == NULL writes out[i * out_stride
 * + r]; otherwise the k best rows of query i go to lists[i]. */
void ol_qscan_rows(ol_qtype t, const float *q, const float *q_inv_norm,
                   size_t nq, const void *codes, const float *scales,
                   size_t d, size_t row_begin, size_t row_end, float *out,
                   size_t out_stride, ol_topk *lists);

/* bandwidth.c: read nbytes at p (8-byte multiple) with variant `variant`
 * (0: portable C, 1: AVX2, 2: AVX2 + prefetch, 3: AVX2 non-temporal,
 * 4: AVX-512F, 5: AVX-512F non-temporal), OR of every word in *sink.
 * Returns 0, or -ENOTSUP if the CPU, build or p's alignment does not
 * allow the variant.  For the benchmarks' bandwidth reference. */
int ol_stream_read(const void *p, size_t nbytes, int variant, uint64_t *sink);
/* The variant's name, or NULL past the last one. */
const char *ol_stream_read_name(int variant);

#endif /* OFFLOOP_KERNELS_H */

/* The vector kernels' binding, shared by its files: the job payload, the
 * chunk plan (vec_plan.c), coalesced runs (vec_batch.c) and test gates
 * (vec_testing.c).  vectors.c holds the kinds and the entry points. */
#ifndef OFFLOOP_VECTORS_H
#define OFFLOOP_VECTORS_H

#include "binding.h"
#include "kernels.h"
#include "vec_args.h"

typedef struct vec_batch_s vec_batch;

/* Work (multiply-adds) up to which a call runs inline on the loop
 * thread: about 5 us of one core, well under a pool round trip. */
#define INLINE_WORK (1u << 16)
/* Rows of m per chunk: about this many bytes. */
#define CHUNK_BYTES (256u * 1024u)
/* Queries per chunk: at most this many bytes of q, and at most
 * QBLOCK_MAX (their inverse norms live on the worker's stack). */
#define QBLOCK_BYTES (256u * 1024u)
#define QBLOCK_MAX 256u
/* Split big calls into at least this many chunks per worker, so a
 * worker slowed by a neighbour does not hold up the others. */
#define CHUNKS_PER_WORKER 4u
/* top_k: entries of partial lists (rows blocks x queries x k) kept
 * before the row blocks are made coarser (12 bytes an entry). */
#define TOPK_PARTIAL_MAX (1u << 18)

typedef struct {
    vec_buf in[2];     /* (a, b), (x), (q, m) */
    vec_buf out[2];    /* normalized rows; scores; (scores, indices) */
    PyObject *result;  /* strong: what complete() returns, or NULL */
    size_t nq, n, d;   /* queries, rows, dimensions */
    size_t qb, qblocks; /* queries per chunk, query blocks */
    size_t rb, rblocks; /* rows per chunk, row blocks */
    size_t k;
    int normalized;
    double value;      /* cosine_similarity */
    ol_topk *lists;    /* top_k: rblocks x nq partial lists (malloc) */
    void *storage;     /* their entries (malloc): indices, then scores */
    int64_t *pindices; /* into storage, k per list */
    float *pscores;
    vec_batch *batch;  /* a batch's leader: the shared run (vec_batch.c) */
    int qtype;         /* 0: float32 m; OL_Q_*: in[1] holds its codes */
    vec_buf scales;    /* int8: m's per-row scales */
    vec_buf rerank;    /* top_k(rerank=): float32 rows, held if used */
    size_t kc;         /* top_k: entries per partial list (k, or the
                        * re-rank candidates) */
} vec_payload;

#define PAYLOAD(job) OL_PAYLOAD((ol_pyjob *)(job), vec_payload)

/* True if the call is small enough to run inline. */
int vec_tiny(size_t nq, size_t n, size_t d);
/* Cut nq queries x n rows of d floats into chunks.  `entries_per_row_block`
 * is the top-k partial-list cost of one row block (0: none). */
void vec_plan(vec_payload *p, int inline_run, size_t entries_per_row_block);
/* Chunk `c` -> its rows [*r0, *r1) and queries [*q0, *q1). */
void vec_chunk_range(const vec_payload *p, size_t c, size_t *r0, size_t *r1,
                     size_t *q0, size_t *q1);

/* vec_batch.c: one-query top_k and cosine_similarities calls on the same
 * matrix (same k, same `normalized`, same plan) coalesce into one
 * multi-query scan.  vec_make_batchable() sets the job's key;
 * vec_batch_work() and vec_batch_finish() replace the kind's work and
 * finish for a leader (p->batch set); vec_batch_release() frees it. */
void vec_make_batchable(ol_pyjob *job, const ol_jobkind *kind);
int vec_batch_work(vec_payload *p, size_t chunk, int topk);
int vec_batch_finish(vec_payload *p);
void vec_batch_release(vec_payload *p);

/* quantize.c: quantized matrices in top_k and cosine_similarities.
 * vec_get_quantized(): 1 if `m` is a QuantizedMatrix (in[1] and scales
 * then hold its arrays, qtype, n and d set), 0 if not, -1 on error.
 * vec_parse_rerank(): top_k's rerank= against m; sets kc.
 * vec_scan_topk() / vec_scan_sims(): one chunk's scan, float32 or
 * quantized (sims: the matrix rows start at row `off`, out is indexed
 * from there).  vec_topk_write(): a query's merged list -> its outputs
 * (re-ranked first if asked), row qi of p's result. */
int vec_get_quantized(vec_payload *p, PyObject *m, const char *fname);
int vec_parse_rerank(vec_payload *p, PyObject *rerank, const char *fname);
void vec_scan_topk(const vec_payload *p, const float *q, const float *inv,
                   size_t nq, size_t r0, size_t r1, ol_topk *lists);
void vec_scan_sims(const vec_payload *p, const float *q, const float *inv,
                   size_t nq, size_t off, size_t r0, size_t r1, float *out,
                   size_t stride);
void vec_topk_write(const vec_payload *p, size_t qi, const float *q,
                    ol_topk *merged);
/* offloop._core._quantize(m, codes, scales, result) and its blocking
 * twin: fill a QuantizedMatrix's arrays from m on the pool. */
PyObject *vec_quantize(PyObject *module, PyObject *const *args,
                       Py_ssize_t nargs, PyObject *kwnames);
PyObject *vec_quantize_blocking(PyObject *module, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames);

/* vec_testing.c: chunk gates of batch_normalize and of coalesced runs,
 * and the ISA switch. */
void vec_pass_normalize_gate(void);
void vec_pass_batch_gate(void);
extern PyMethodDef ol_vector_testing_methods[];

#endif /* OFFLOOP_VECTORS_H */

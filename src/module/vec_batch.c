/* Coalesced runs of the vector kernels: concurrent one-query calls on the
 * same matrix share one multi-query scan.
 *
 * DESIGN
 *
 * A one-query top_k or cosine_similarities job that goes to the pool gets
 * a batch key: its kind, the matrix's address and shape, k, `normalized`
 * and its row blocks (the plan); for a QuantizedMatrix also its code type
 * (beside d) and the re-rank matrix's address (beside `normalized`), so
 * that calls on the same codes with another rerank= never mix.  Jobs
 * with equal keys that wait in the queue together are taken as one batch
 * by the pool (src/core/batch.c):
 * the first is the leader.  Measured on this project's 2-core machine, 64
 * one-query scans of 200,000 x 768 cost 5.4x to 6.8x one 64-query scan:
 * each reads the 614 MB matrix alone, while the multi-query kernel keeps a
 * tile of rows in L2 for every query.  No timer: a job with no companions
 * runs at once, and companions exist only while the pool is busy.
 *
 * The leader's batch_begin (on the worker that formed the batch, before
 * any chunk) copies every member's query into one contiguous block and
 * re-plans the run for nb queries: row blocks as a call with nb queries
 * would have them, never finer than the members' own (so each member's
 * storage, one partial list per row block, still fits).  Measured over
 * 100,000 x 768 with 64 queries, keeping the one-query blocks (85 rows)
 * cost 1.31x one 64-query call: every short block starts its 64 lists
 * empty, and filling a list is the slow path of the scan.  Its chunks then scan their rows for every query at once;
 * its finish merges each member's lists and writes each member's result
 * into that member's own output arrays.  The pool delivers each member to
 * its own port or waiter, so a batch may span loops, threads and blocking
 * callers.
 *
 * Arithmetic.  The multi-query kernel sums each dot product in another
 * order than the one-query kernel, so a coalesced member's scores match
 * the same call made alone to float32 rounding (a few ulps), and they are
 * exactly those of one top_k / cosine_similarities call over the members'
 * queries stacked into a matrix.
 *
 * The batch is written by batch_begin before the chunks run and read-only
 * while they run, except the list entries (each owned by the one chunk of
 * its row block, then by finish).
 */
#include <stdlib.h>
#include <string.h>

#include "vectors.h"

struct vec_batch_s {
    size_t nb;              /* members, leader first */
    size_t rb;              /* rows per chunk of the shared run */
    size_t blocks;          /* its chunks: n / rb, rounded up */
    vec_payload **members;  /* their payloads */
    float *queries;         /* nb x d */
    ol_topk *lists;         /* top_k: rblocks x nb, over members' storage */
};

static int vec_batch_begin(ol_job_t *leader);

void
vec_make_batchable(ol_pyjob *job, const ol_jobkind *kind)
{
    vec_payload *p = OL_PAYLOAD(job, vec_payload);
    ol_batch_key_t *key = &job->core.batch;

    if (p->nq != 1 || job->core.nchunks != p->rblocks) {
        return; /* only one-query calls over several row blocks */
    }
    key->tag = kind;
    key->words[0] = (uint64_t)(uintptr_t)p->in[1].data;
    key->words[1] = p->n;
    /* d < 2^56 and qtype < 4; a float32 buffer's address is 4-aligned,
     * so its low bit is free for `normalized`. */
    key->words[2] = p->d | (uint64_t)p->qtype << 56;
    key->words[3] = p->k;
    key->words[4] = (uint64_t)(uintptr_t)(p->rerank.held ? p->rerank.data
                                                         : NULL) |
                    (uint64_t)p->normalized;
    key->words[5] = p->rblocks;
    job->core.batch_begin = vec_batch_begin;
}

static int
vec_batch_begin(ol_job_t *leader)
{
    vec_payload *lp = OL_PAYLOAD((ol_pyjob *)leader, vec_payload);
    size_t nb = leader->batch_size, d = lp->d, j = 0;
    vec_batch *b = calloc(1, sizeof(*b));

    if (b == NULL) {
        return OL_ENOMEM;
    }
    lp->batch = b; /* freed with the leader, whatever happens next */
    b->nb = nb;
    if (lp->lists != NULL) { /* top_k: the plan of an nb-query call */
        vec_payload plan = {.nq = nb, .n = lp->n, .d = d};
        vec_plan(&plan, 0, nb * lp->kc);
        b->rb = plan.rb > lp->rb ? plan.rb : lp->rb;
    }
    else {
        b->rb = lp->rb;
    }
    /* The pool reads nchunks only once this returns (see batch_begin). */
    b->blocks = lp->n / b->rb + (lp->n % b->rb != 0);
    leader->nchunks = b->blocks;
    b->members = malloc(nb * sizeof(*b->members));
    b->queries = malloc(nb * d * sizeof(float));
    if (lp->lists != NULL) { /* top_k */
        b->lists = malloc(lp->rblocks * nb * sizeof(ol_topk));
    }
    if (b->members == NULL || b->queries == NULL ||
        (lp->lists != NULL && b->lists == NULL)) {
        return OL_ENOMEM;
    }
    for (ol_job_t *m = leader; m != NULL; m = m->batch_next, j++) {
        b->members[j] = OL_PAYLOAD((ol_pyjob *)m, vec_payload);
        memcpy(b->queries + j * d, b->members[j]->in[0].data,
               d * sizeof(float));
    }
    return 0;
}

/* Chunk `chunk` (a row block) of a leader, for every member. */
int
vec_batch_work(vec_payload *p, size_t chunk, int topk)
{
    vec_batch *b = p->batch;
    float stack[QBLOCK_MAX], *inv = stack, *scores = NULL;
    size_t r0, r1, j, nr;
    int rc = 0;

    vec_pass_batch_gate();
    r0 = chunk * b->rb;
    r1 = r0 + b->rb < p->n ? r0 + b->rb : p->n;
    nr = r1 - r0;
    if (b->nb > QBLOCK_MAX) {
        inv = malloc(b->nb * sizeof(float));
    }
    if (!topk) {
        scores = malloc(b->nb * nr * sizeof(float));
    }
    if (inv == NULL || (!topk && scores == NULL)) {
        rc = OL_ENOMEM;
        goto done;
    }
    for (j = 0; j < b->nb; j++) {
        inv[j] = ol_inv_norm_f32(b->queries + j * p->d, p->d);
    }
    if (topk) {
        ol_topk *lists = b->lists + chunk * b->nb;
        for (j = 0; j < b->nb; j++) {
            vec_payload *m = b->members[j];
            ol_topk_init(&lists[j], m->pscores + chunk * p->kc,
                         m->pindices + chunk * p->kc, p->kc);
        }
        vec_scan_topk(p, b->queries, inv, b->nb, r0, r1, lists);
    }
    else {
        /* Rows [0, nr) of the block's own start: scores land in a
         * block-sized scratch, then in each member's output. */
        vec_scan_sims(p, b->queries, inv, b->nb, r0, 0, nr, scores, nr);
        for (j = 0; j < b->nb; j++) {
            memcpy(b->members[j]->out[0].data + r0, scores + j * nr,
                   nr * sizeof(float));
        }
    }
done:
    if (inv != stack) {
        free(inv);
    }
    free(scores);
    return rc;
}

/* top_k, on the last worker: each member's lists merged, sorted, written
 * into its own output arrays. */
int
vec_batch_finish(vec_payload *p)
{
    vec_batch *b = p->batch;

    for (size_t j = 0; j < b->nb; j++) {
        vec_payload *m = b->members[j];
        ol_topk *dst = &b->lists[j];
        for (size_t r = 1; r < b->blocks; r++) {
            ol_topk_merge(dst, &b->lists[r * b->nb + j]);
        }
        vec_topk_write(m, 0, m->in[0].data, dst);
    }
    return 0;
}

void
vec_batch_release(vec_payload *p)
{
    vec_batch *b = p->batch;

    if (b != NULL) {
        free(b->members);
        free(b->queries);
        free(b->lists);
        free(b);
        p->batch = NULL;
    }
}

/* The vector kernels' chunk plan: how a call is cut into chunks of rows
 * (and of queries) so that every worker gets several, and when a call is
 * small enough to run inline.  The reasons are in vectors.c's DESIGN.
 */
#include <time.h>

#include "vectors.h"

int
vec_tiny(size_t nq, size_t n, size_t d)
{
    size_t w;

    return !__builtin_mul_overflow(nq, n, &w) &&
           !__builtin_mul_overflow(w, d, &w) && w <= INLINE_WORK;
}

static size_t
ceil_div(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

/* The pool size, read at most every 100 ms: ol_pool_stats() takes the
 * pool lock, which busy workers take per chunk, and a loop thread waiting
 * for it behind a preempted worker is lag.  A stale value after
 * configure() only makes the chunks a little too big or too small.  GIL
 * held (the cache is a plain static). */
static size_t
pool_threads(void)
{
    static size_t threads;
    static struct timespec last;
    struct timespec now;
    ol_pool_stats_t ps;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (threads == 0 || now.tv_sec - last.tv_sec > 1 ||
        (now.tv_sec - last.tv_sec) * 1000000000L + now.tv_nsec -
                last.tv_nsec > 100000000L) {
        ol_pool_stats(&ps);
        threads = ps.threads ? ps.threads : 1;
        last = now;
    }
    return threads;
}

void
vec_plan(vec_payload *p, int inline_run, size_t entries_per_row_block)
{
    size_t min_chunks, rmin, row_bytes = p->d * sizeof(float);

    if (p->qtype) { /* a QuantizedMatrix: its codes' bytes */
        row_bytes = p->d * ol_qtype_size((ol_qtype)p->qtype);
    }

    if (inline_run) {
        p->qb = p->nq;
        p->qblocks = 1;
        p->rb = p->n;
        p->rblocks = 1;
        return;
    }
    min_chunks = pool_threads() * CHUNKS_PER_WORKER;
    p->qb = QBLOCK_BYTES / row_bytes;
    p->qb = p->qb < 1 ? 1 : p->qb > QBLOCK_MAX ? QBLOCK_MAX : p->qb;
    p->qb = p->qb > p->nq ? p->nq : p->qb;
    p->qblocks = ceil_div(p->nq, p->qb);

    p->rb = CHUNK_BYTES / row_bytes;
    /* top_k: a row block of fewer rows than about 8 list entries inserts
     * most of its rows into the list (nothing is rejected until the list
     * is full), and that is the slow path of a scan.  It matters for
     * rerank=, whose lists hold 4k + 64 candidates: measured 1.7x the
     * scan's time with 85-row blocks of int8 rows. */
    if (p->qtype && p->kc > 0 && p->rb < 8 * p->kc) {
        p->rb = 8 * p->kc;
    }
    p->rblocks = ceil_div(p->n, p->rb ? p->rb : 1);
    if (entries_per_row_block > 0 &&
        p->rblocks > TOPK_PARTIAL_MAX / entries_per_row_block) {
        p->rblocks = TOPK_PARTIAL_MAX / entries_per_row_block;
    }
    /* Enough chunks for every worker, even past the partial-list budget:
     * idle workers cost more than a few more lists. */
    rmin = ceil_div(min_chunks, p->qblocks);
    if (p->rblocks < rmin) {
        p->rblocks = rmin;
    }
    if (p->rblocks > p->n) {
        p->rblocks = p->n;
    }
    p->rb = ceil_div(p->n, p->rblocks);
    p->rblocks = ceil_div(p->n, p->rb);
}

void
vec_chunk_range(const vec_payload *p, size_t c, size_t *r0, size_t *r1,
            size_t *q0, size_t *q1)
{
    size_t rblock = c / p->qblocks, qblock = c % p->qblocks;

    *r0 = rblock * p->rb;
    *r1 = *r0 + p->rb < p->n ? *r0 + p->rb : p->n;
    *q0 = qblock * p->qb;
    *q1 = *q0 + p->qb < p->nq ? *q0 + p->qb : p->nq;
}


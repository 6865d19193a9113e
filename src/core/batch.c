/* Coalescing: a job with a batch key takes the queued jobs with an equal
 * key along, and the batch's run stops only once every one is cancelled.
 *
 * DESIGN
 *
 * Coalescing.  A job with a batch key (ol_batch_key_t) taken from the
 * queue takes the queued jobs with an equal key along (ol__batch_form,
 * under the pool lock, at most max_batch of them); its worker (worker.c)
 * calls batch_begin (ol__batch_begin), runs the leader's chunks for all,
 * and ol__job_end() (deliver.c) delivers each member with its own status.
 * No timer: companions exist only while the pool is busy.
 */
#include "pool_state.h"

#include <string.h>

/* The run should stop: the job is cancelled and, if it leads a batch,
 * so is every member. */
int
ol_job_stopped(ol_job_t *job)
{
    if (!ol_job_cancelled(job)) {
        return 0;
    }
    for (ol_job_t *m = job->batch_next; m != NULL; m = m->batch_next) {
        if (!ol_job_cancelled(m)) {
            return 0;
        }
    }
    return 1;
}

static int
same_batch_key(const ol_job_t *a, const ol_job_t *b)
{
    return a->batch.tag == b->batch.tag &&
           memcmp(a->batch.words, b->batch.words, sizeof(a->batch.words)) ==
               0;
}

/* Pool lock held.  `leader` was just taken: take the queued jobs with its
 * key along (queue order), up to the batch bound.  Returns 1 if a batch
 * of two or more was formed.  The scan looks at BATCH_SCAN_MAX queue
 * entries at most, which bounds the time the lock is held behind a long
 * queue of other work. */
#define BATCH_SCAN_MAX 4096
int
ol__batch_form(ol_job_t *leader)
{
    size_t max = pool.max_batch, seen = 0;
    ol__qnode_t *n = pool.queue.next;
    ol_job_t **tail = &leader->batch_next;

    if (leader->batch.max != 0 && leader->batch.max < max) {
        max = leader->batch.max;
    }
    while (n != &pool.queue && leader->batch_size < max &&
           seen++ < BATCH_SCAN_MAX) {
        ol_job_t *job = container_of(n, ol_job_t, node);
        n = n->next;
        if (job->state != OL_JOB_QUEUED || !same_batch_key(job, leader) ||
            job->generation != leader->generation) {
            continue;
        }
        queue_unlink(job);
        start_job(job);
        job->batch_member = 1;
        *tail = job;
        tail = &job->batch_next;
        leader->batch_size++;
    }
    if (leader->batch_size < 2) {
        return 0;
    }
    pool.batches++;
    pool.batched += leader->batch_size;
    return 1;
}

/* Without locks, on the worker that formed the batch, before its chunks
 * run (so before share() can show the leader to another worker). */
void
ol__batch_begin(ol_job_t *leader)
{
    if (leader->batch_begin != NULL) {
        int err = leader->batch_begin(leader);
        if (err != 0) {
            set_status(leader, err);
        }
    }
}

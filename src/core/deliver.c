/* A job's end: its status settled and the job handed to its owner (a
 * port, a blocking caller's waiter, or the orphan list once that caller
 * stopped waiting); and the inline run, which settles the status alike
 * on the calling thread and delivers nowhere.
 */
#include "pool_state.h"

static void deliver(ol_job_t *job);

/* The mark ol_job_abandon() leaves in a job's waiter field; never waited
 * on. */
static ol_waiter_t abandoned;

/* The job's last worker: settle its status, then deliver it, and every
 * member of its batch (each with its own status: cancelled members get
 * OL_ECANCELED, the others the run's outcome). */
void
ol__job_end(ol_job_t *job)
{
    ol_job_t *member = job->batch_next;
    int err = ol_job_status(job);

    if (err == 0 && (atomic_load(&job->next_chunk) < job->nchunks ||
                     ol_job_stopped(job))) {
        err = OL_ECANCELED; /* stopped, or cancelled in time */
    }
    if (err == 0 && job->finish != NULL) {
        err = job->finish(job);
    }
    /* Members first: the leader's owner may free it (and what its
     * payload shares with the members) once it is delivered. */
    while (member != NULL) {
        ol_job_t *next = member->batch_next;
        set_status(member, ol_job_cancelled(member) ? OL_ECANCELED : err);
        deliver(member); /* member may be freed by its owner from here */
        ol__pool_note_delivered();
        member = next;
    }
    set_status(job, ol_job_cancelled(job) ? OL_ECANCELED : err);
    deliver(job);
}

/* Hand a finished job to its port or waiter. */
static void
deliver(ol_job_t *job)
{
    if (job->port != NULL) {
        ol__port_push(job->port, job);
    }
    else {
        ol_waiter_t *w = atomic_exchange(&job->waiter, NULL);

        if (w == &abandoned) {
            ol__orphan_push(job); /* its caller stopped waiting */
        }
        else if (w != NULL) {
            ol__waiter_wake(w);
        }
    }
}

int
ol_job_abandon(ol_job_t *job)
{
    ol_waiter_t *w = atomic_exchange(&job->waiter, &abandoned);

    if (w == NULL) { /* the worker took the waiter: it is waking it */
        atomic_store(&job->waiter, NULL);
        return 0;
    }
    return 1;
}

void
ol_job_run_inline(ol_job_t *job)
{
    atomic_store_explicit(&job->status, 0, memory_order_relaxed);
    atomic_store_explicit(&job->next_chunk, 0, memory_order_relaxed);
    for (size_t i = 0; i < job->nchunks; i++) {
        int err = job->work(job, i);
        if (err != 0) {
            set_status(job, err);
            return;
        }
    }
    atomic_store(&job->next_chunk, job->nchunks);
    if (job->finish != NULL) {
        int err = job->finish(job);
        if (err != 0) {
            set_status(job, err);
        }
    }
}

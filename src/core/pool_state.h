/* Private to the pool's own files (pool.c, worker.c, batch.c, deliver.c):
 * the pool's state, the queue helpers, and the functions they call in each
 * other.  Nothing else includes it: the rest of the core reaches the pool
 * through offloop-core.h and internal.h.  pool.c's DESIGN block says how
 * the pieces fit (ownership, lock order, wake-ups, room, fork). */
#ifndef OFFLOOP_CORE_POOL_STATE_H
#define OFFLOOP_CORE_POOL_STATE_H

#include "internal.h"

/* The pool: one per process, defined in pool.c.  Fields marked (lock)
 * are guarded by pool.lock; the atomic ones are read, and some written,
 * without it. */
struct ol__pool_state {
    pthread_mutex_t lock;
    pthread_cond_t work_cond; /* idle workers wait here */
    pthread_cond_t idle_cond; /* ol_pool_wait_idle(), shutdown */
    pthread_cond_t space_cond; /* blocking submitters waiting for room */
    ol__qnode_t queue;        /* (lock) circular, head node */
    size_t queued;            /* (lock) jobs in OL_JOB_QUEUED */
    /* Jobs started and not yet delivered.  Atomic: the worker decrements
     * it after delivery, without the lock, so that ol_pool_wait_idle()
     * returning means every job has reached its port or waiter. */
    atomic_size_t running;
    size_t max_queue;         /* (lock) 0: unbounded */
    unsigned target;          /* (lock) configured size */
    unsigned alive;           /* (lock) workers running */
    /* Workers waiting on work_cond: written under the lock, read without
     * it as a hint (a worker sharing a chunked job skips the lock when no
     * worker is idle). */
    atomic_uint idle;
    atomic_uint idle_waiters; /* threads waiting on idle_cond */
    atomic_uint space_waiters; /* threads waiting on space_cond */
    int stopping;             /* (lock) ol_pool_shutdown() was called */
    uint64_t submitted;       /* (lock) */
    uint64_t started;         /* (lock) */
    size_t max_batch;         /* (lock) 1: coalescing off */
    uint64_t batches;         /* (lock) batches of two or more formed */
    uint64_t batched;         /* (lock) jobs taken in those batches */
    atomic_size_t pending;    /* queue length, for the spinner */
    atomic_int spinning;      /* a worker is spinning */
    atomic_long spin_ns;      /* current spin budget */
    atomic_uint_fast64_t chunks; /* chunks run (stats): workers, no lock */
    atomic_uint generation;   /* fork generation: bumped in the child */
    /* Set once by the binding, before the first submit; read by each
     * worker as it leaves. */
    void (*exit_hook)(void);
};

extern struct ol__pool_state ol__pool;
/* The short name the pool's files use; the linked symbol keeps the
 * core's ol__ prefix. */
#define pool ol__pool

/* ---- queue (pool lock held) ---------------------------------------- */

static inline int
queue_empty(void)
{
    return pool.queue.next == &pool.queue;
}

static inline void
queue_link(ol_job_t *job, int front)
{
    ol__qnode_t *n = &job->node;
    ol__qnode_t *at = front ? &pool.queue : pool.queue.prev;

    n->prev = at;
    n->next = at->next;
    at->next->prev = n;
    at->next = n;
    job->in_queue = 1;
    atomic_fetch_add_explicit(&pool.pending, 1, memory_order_release);
}

static inline void
queue_unlink(ol_job_t *job)
{
    job->node.prev->next = job->node.next;
    job->node.next->prev = job->node.prev;
    job->node.prev = job->node.next = NULL;
    job->in_queue = 0;
    atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_relaxed);
}

/* The bound is set and reached. */
static inline int
queue_full(void)
{
    return pool.max_queue != 0 && pool.queued >= pool.max_queue;
}

static inline ol_job_t *
queue_pop(void)
{
    ol_job_t *job = container_of(pool.queue.next, ol_job_t, node);

    queue_unlink(job);
    return job;
}

/* Pool lock held.  A queued job leaves the queue for a worker. */
static inline void
start_job(ol_job_t *job)
{
    job->state = OL_JOB_RUNNING;
    pool.queued--;
    atomic_fetch_add(&pool.running, 1);
    pool.started++;
}

/* Any lock or none: the first error a job meets is its status. */
static inline void
set_status(ol_job_t *job, int err)
{
    int expected = 0;

    atomic_compare_exchange_strong(&job->status, &expected, err);
}

/* ---- what the pool's files call in each other ---------------------- */

/* worker.c.  Pool lock held: start workers up to the target.  Returns 0,
 * or OL_ENOTHREAD if no worker runs at all. */
int ol__workers_start(void);

/* batch.c.  Pool lock held: the leader just taken takes the queued jobs
 * with its key along; 1 if a batch of two or more was formed. */
int ol__batch_form(ol_job_t *leader);
/* batch.c.  No lock, on the worker that formed the batch, before any of
 * its chunks runs: the leader's batch_begin. */
void ol__batch_begin(ol_job_t *leader);

/* deliver.c.  No lock (the job is its caller's alone): settle the job's
 * status and deliver it and every member of its batch.  The caller then
 * calls ol__pool_note_delivered() once, for the leader. */
void ol__job_end(ol_job_t *job);

/* pool.c.  Without the pool lock: a job left the running set after its
 * delivery; wakes the threads waiting on idle_cond if it was the last. */
void ol__pool_note_delivered(void);
/* pool.c.  Without the pool lock: a slot of a bounded queue was freed;
 * wakes the blocking submitters and the ports waiting for room. */
void ol__pool_note_space(void);

#endif /* OFFLOOP_CORE_POOL_STATE_H */

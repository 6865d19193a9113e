/* The worker pool: one per process, shared by every event loop.
 *
 * This file holds the pool's state, its start-up and fork handlers, and
 * the calls that reach it from outside (configure, submit, kick, cancel,
 * the waits for room and idle, shutdown, stats).  The workers are in
 * worker.c, coalescing in batch.c, a job's end in deliver.c; the state
 * and what those files call in each other are in pool_state.h.
 *
 * DESIGN
 *
 * Ownership.  A job belongs to its submitter until ol_pool_submit()
 * succeeds, then to the pool until it is delivered (to a port or a waiter),
 * then to its owner again.  ol_job_cancel() can also hand a job back early:
 * when it returns 1 the pool has forgotten the job.
 *
 * Locking.  One mutex, pool.lock, guards the queue, every job's state,
 * in_queue and active fields, and the fields of the pool's state marked
 * (lock) (pool_state.h, which also says under which lock each function
 * shared by the pool's files is called).  A worker runs chunks and
 * delivers jobs without it.  A worker never holds the pool lock and a port
 * lock at once.
 *
 * Lock order, the whole core: pool.lock, then port.c's orphans.lock,
 * then its space.lock; that whole chain is taken only by before_fork().
 * Everywhere else each of these locks is taken alone: a worker delivers
 * and notifies space without the pool lock, and port.c releases
 * space.lock before it takes a port's lock.  A port's lock and a
 * waiter's lock are leaves, never held with another lock.
 *
 * Coalescing.  Queued jobs with an equal batch key run as one batch:
 * batch.c.
 *
 * Chunks.  A chunked job's workers share its chunks: worker.c.
 *
 * Wake-ups.  An idle worker waits on work_cond.  One worker at a time may
 * spin for a short, adaptive time after its job before it sleeps (spin(),
 * worker.c), so that a caller awaiting one job at a time does not pay a
 * second cross-thread wake-up.  A submitter signals unless a spinning
 * worker will take its job (the only one queued), or defers the signal to
 * ol_pool_kick() (the binding calls it once per loop tick).  The spinner
 * clears `spinning` before it takes the lock to look at the queue, so a
 * job pushed while it spins is never missed.
 *
 * Room.  With max_queue set, a submit past the bound fails with OL_EAGAIN
 * and is never delivered.  Whoever frees a slot (a worker starting a job,
 * a cancel) wakes the blocking submitters on space_cond and the ports
 * registered with ol_port_wait_space() (port.c keeps that list).
 *
 * Priority.  Each worker sets its own scheduling priority when it starts
 * (priority.c, whose DESIGN block gives the measured reasons).
 *
 * Fork.  pthread_atfork() holds the lock across fork(); the child empties
 * the queue (those jobs are the parent's), forgets the workers (only the
 * forking thread survives) and bumps the fork generation.  Its first
 * submit starts new workers.
 */
#include "pool_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sched.h>
#endif

struct ol__pool_state ol__pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .queue = {&pool.queue, &pool.queue},
    .spin_ns = OL__SPIN_MAX_NS, /* spin at most (worker.c) */
    .max_batch = OL_DEFAULT_MAX_BATCH,
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
atomic_int ol__stopping;

void
ol__fatal(const char *what, int err)
{
    fprintf(stderr, "offloop: fatal: %s: %s\n", what, strerror(err));
    abort();
}

/* ---- start-up, fork ------------------------------------------------ */

static void
before_fork(void)
{
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    ol__ports_lock_for_fork();
}

static void
after_fork_parent(void)
{
    ol__ports_unlock_for_fork();
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
}

static void
after_fork_child(void)
{
    /* Only this thread exists now.  Everything queued is the parent's. */
    ol__ports_unlock_for_fork();
    ol__ports_reset_after_fork();
    pool.queue.next = pool.queue.prev = &pool.queue;
    pool.queued = 0;
    atomic_store(&pool.running, 0);
    atomic_store(&pool.idle_waiters, 0);
    pool.alive = 0;
    atomic_store(&pool.idle, 0);
    pool.stopping = 0;
    atomic_store(&ol__stopping, 0);
    atomic_store(&pool.pending, 0);
    atomic_store(&pool.spinning, 0);
    atomic_fetch_add(&pool.generation, 1);
    ol__cond_init(&pool.work_cond);
    ol__cond_init(&pool.idle_cond);
    ol__cond_init(&pool.space_cond);
    atomic_store(&pool.space_waiters, 0);
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
}

static void
init(void)
{
    ol__priority_init();
    ol__cond_init(&pool.work_cond);
    ol__cond_init(&pool.idle_cond);
    ol__cond_init(&pool.space_cond);
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    if (pool.target == 0) {
        pool.target = ol_default_threads();
    }
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    OL__CHECK(pthread_atfork(before_fork, after_fork_parent,
                             after_fork_child));
}

unsigned
ol_default_threads(void)
{
#ifdef __linux__
    cpu_set_t set;

    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) {
            return (unsigned)n;
        }
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

unsigned
ol_fork_generation(void)
{
    return atomic_load(&pool.generation);
}

/* ---- room and idle: telling who waits ------------------------------ */

/* Pool lock held.  Called when a job leaves the running or queued set. */
static void
note_idle_maybe(void)
{
    if (atomic_load(&pool.idle_waiters) > 0 && pool.queued == 0 &&
        atomic_load(&pool.running) == 0) {
        OL__CHECK(pthread_cond_broadcast(&pool.idle_cond));
    }
}

/* A queue slot was freed (a job started or was cancelled while queued):
 * tell whoever waits for room.  Without the pool lock.  The waiters'
 * counters are read after the slot was freed and set before the waiters
 * look at the queue, so one side always sees the other. */
void
ol__pool_note_space(void)
{
    if (atomic_load(&pool.space_waiters) > 0) {
        OL__CHECK(pthread_mutex_lock(&pool.lock));
        OL__CHECK(pthread_cond_broadcast(&pool.space_cond));
        OL__CHECK(pthread_mutex_unlock(&pool.lock));
    }
    if (ol__ports_waiting_for_space()) {
        ol__ports_notify_space(0);
    }
}

/* A worker delivered a job: it leaves the running set.  The decrement and
 * the load of idle_waiters pair with the waiter's increment and load of
 * running (both sequentially consistent), so one of them sees the other. */
void
ol__pool_note_delivered(void)
{
    if (atomic_fetch_sub(&pool.running, 1) == 1 &&
        atomic_load(&pool.idle_waiters) > 0) {
        OL__CHECK(pthread_mutex_lock(&pool.lock));
        note_idle_maybe();
        OL__CHECK(pthread_mutex_unlock(&pool.lock));
    }
}

/* ---- public -------------------------------------------------------- */

int
ol_pool_configure(unsigned threads, size_t max_queue)
{
    if (threads == 0) {
        return OL_EINVAL;
    }
    OL__CHECK(pthread_once(&init_once, init));
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    pool.target = threads;
    pool.max_queue = max_queue;
    /* Extra workers leave when they wake; missing ones start on submit. */
    OL__CHECK(pthread_cond_broadcast(&pool.work_cond));
    OL__CHECK(pthread_cond_broadcast(&pool.space_cond));
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    ol__ports_notify_space(1); /* the bound may have grown */
    return 0;
}

int
ol_pool_set_max_batch(size_t max_batch)
{
    if (max_batch == 0 || max_batch > OL_MAX_BATCH_LIMIT) {
        return OL_EINVAL;
    }
    OL__CHECK(pthread_once(&init_once, init));
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    pool.max_batch = max_batch;
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    return 0;
}

int
ol_pool_submit(ol_job_t *job, int defer_wake)
{
    int rc = 0;

    OL__CHECK(pthread_once(&init_once, init));
    if (job->nchunks == 0 || job->work == NULL) {
        return OL_EINVAL;
    }
    job->generation = atomic_load(&pool.generation);
    job->state = OL_JOB_QUEUED;
    job->active = 0;
    job->batch_next = NULL;
    job->batch_size = 1;
    job->batch_member = 0;
    atomic_store_explicit(&job->cancel, 0, memory_order_relaxed);
    atomic_store_explicit(&job->status, 0, memory_order_relaxed);
    atomic_store_explicit(&job->next_chunk, 0, memory_order_relaxed);

    OL__CHECK(pthread_mutex_lock(&pool.lock));
    if (pool.stopping) {
        rc = OL_ESHUTDOWN;
        goto done;
    }
    if (queue_full()) {
        rc = OL_EAGAIN;
        goto done;
    }
    if (pool.alive < pool.target) {
        rc = ol__workers_start();
        if (rc < 0) {
            goto done;
        }
    }
    if (job->port != NULL) {
        ol_port_incref(job->port);
    }
    queue_link(job, 0);
    pool.queued++;
    pool.submitted++;
    /* A spinning worker takes one job: wake another for the rest. */
    if (atomic_load(&pool.idle) > 0 &&
        (!atomic_load(&pool.spinning) || atomic_load(&pool.pending) > 1)) {
        if (defer_wake) {
            rc = 1;
        }
        else {
            OL__CHECK(pthread_cond_signal(&pool.work_cond));
        }
    }
done:
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    if (rc < 0) {
        job->state = OL_JOB_NEW;
    }
    return rc;
}

void
ol_pool_kick(void)
{
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    size_t n = atomic_load(&pool.idle);
    if (n >= pool.queued) {
        n = pool.queued;
    }
    if (n >= atomic_load(&pool.idle)) {
        OL__CHECK(pthread_cond_broadcast(&pool.work_cond));
    }
    else {
        while (n-- > 0) {
            OL__CHECK(pthread_cond_signal(&pool.work_cond));
        }
    }
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
}

int
ol_job_cancel(ol_job_t *job)
{
    int ended = 0, freed_slot = 0;

    if (job->generation != ol_fork_generation()) {
        return 0;
    }
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    if (job->state == OL_JOB_RUNNING &&
        (job->batch_member || job->batch_size > 1)) {
        /* Inside a running batch: delivered when the batch ends. */
        atomic_store(&job->cancel, 1);
    }
    else if (job->state == OL_JOB_QUEUED || job->state == OL_JOB_RUNNING) {
        atomic_store(&job->cancel, 1);
        if (job->in_queue) {
            queue_unlink(job);
        }
        if (job->active == 0) {
            if (job->state == OL_JOB_QUEUED) {
                pool.queued--;
                freed_slot = pool.max_queue != 0;
            }
            else {
                atomic_fetch_sub(&pool.running, 1);
            }
            job->state = OL_JOB_DONE;
            set_status(job, OL_ECANCELED);
            note_idle_maybe();
            ended = 1;
        }
    }
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    if (freed_slot) {
        ol__pool_note_space();
    }
    return ended;
}

int
ol_pool_has_space(void)
{
    int room;

    OL__CHECK(pthread_once(&init_once, init));
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    room = pool.stopping || !queue_full();
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    return room;
}

int
ol_pool_wait_space(long timeout_ms)
{
    struct timespec deadline;
    int rc = 0;

    OL__CHECK(pthread_once(&init_once, init));
    ol__deadline_after(&deadline, timeout_ms);
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    atomic_fetch_add(&pool.space_waiters, 1);
    while (rc == 0 && !pool.stopping && queue_full()) {
        rc = ol__cond_timedwait(&pool.space_cond, &pool.lock, &deadline);
    }
    atomic_fetch_sub(&pool.space_waiters, 1);
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    return rc == 0 ? 0 : -ETIMEDOUT;
}

int
ol_pool_wait_idle(long timeout_ms)
{
    struct timespec deadline;
    int rc = 0;

    OL__CHECK(pthread_once(&init_once, init));
    ol__deadline_after(&deadline, timeout_ms);
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    atomic_fetch_add(&pool.idle_waiters, 1);
    while (rc == 0 && (pool.queued > 0 || atomic_load(&pool.running) > 0)) {
        rc = ol__cond_timedwait(&pool.idle_cond, &pool.lock, &deadline);
    }
    atomic_fetch_sub(&pool.idle_waiters, 1);
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    return rc == 0 ? 0 : -ETIMEDOUT;
}

int
ol_pool_shutdown(long timeout_ms, size_t *dropped)
{
    struct timespec deadline;
    size_t n = 0;
    int rc = 0;

    OL__CHECK(pthread_once(&init_once, init));
    ol__deadline_after(&deadline, timeout_ms);
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    pool.stopping = 1;
    atomic_store(&ol__stopping, 1);
    /* Queued jobs never start.  Their owners are going away with the
     * interpreter, so they are forgotten, not delivered.  A started job
     * put back for idle workers, with no worker inside, is ended here. */
    ol_job_t *orphaned = NULL;
    while (!queue_empty()) {
        ol_job_t *job = queue_pop();
        atomic_store(&job->cancel, 1);
        if (job->state == OL_JOB_QUEUED) {
            job->state = OL_JOB_DONE;
            pool.queued--;
            n++;
        }
        else if (job->active == 0) {
            job->state = OL_JOB_DONE;
            job->done_next = orphaned;
            orphaned = job;
        }
    }
    OL__CHECK(pthread_cond_broadcast(&pool.work_cond));
    OL__CHECK(pthread_cond_broadcast(&pool.space_cond));
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    while (orphaned != NULL) {
        ol_job_t *next = orphaned->done_next;
        ol__job_end(orphaned);
        ol__pool_note_delivered();
        orphaned = next;
    }
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    atomic_fetch_add(&pool.idle_waiters, 1);
    while (rc == 0 && pool.alive > 0) {
        rc = ol__cond_timedwait(&pool.idle_cond, &pool.lock, &deadline);
    }
    atomic_fetch_sub(&pool.idle_waiters, 1);
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    if (dropped != NULL) {
        *dropped = n;
    }
    return rc == 0 ? 0 : -ETIMEDOUT;
}

void
ol_pool_stats(ol_pool_stats_t *out)
{
    OL__CHECK(pthread_once(&init_once, init));
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    out->threads = pool.target;
    out->threads_alive = pool.alive;
    out->max_queue = pool.max_queue;
    out->queued = pool.queued;
    out->running = atomic_load(&pool.running);
    out->submitted = pool.submitted;
    out->started = pool.started;
    out->batches = pool.batches;
    out->batched = pool.batched;
    out->max_batch = pool.max_batch;
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    out->chunks = atomic_load(&pool.chunks);
}

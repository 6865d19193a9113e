/* The workers: each thread's loop (take a job, run its chunks, leave
 * it, spin a little, sleep), chunk sharing with idle workers, the
 * adaptive spin, and a worker's start and exit.
 *
 * DESIGN
 *
 * Chunks.  A job has nchunks pieces of work and a single queue node.  The
 * worker that takes a job claims chunks with an atomic counter; while
 * chunks remain and some worker is idle it puts the node back at the front
 * of the queue, so idle workers join in.  The worker that leaves a job
 * with no other worker inside and the node out of the queue ends it.
 */
#include "pool_state.h"

#include <signal.h>
#include <time.h>

#define OL_SPIN_MAX_NS OL__SPIN_MAX_NS /* spin at most 50 us after a job */
#define OL_SPIN_MIN_NS OL__SPIN_MIN_NS
/* A worker woken this soon after it fell asleep resets the spin budget. */
#define OL_SPIN_RETRY_NS (2 * OL_SPIN_MAX_NS)

static _Thread_local int tls_in_worker;

int
ol_in_worker(void)
{
    return tls_in_worker;
}

void
ol_pool_set_thread_exit_hook(void (*on_exit)(void))
{
    pool.exit_hook = on_exit;
}

/* Put the job back for an idle worker to join, if one is idle. */
static void
share(ol_job_t *job)
{
    if (atomic_load_explicit(&pool.idle, memory_order_relaxed) == 0) {
        return; /* every worker is busy: keep the lock free for submits */
    }
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    if (atomic_load(&pool.idle) > 0 && !job->in_queue &&
        !ol_job_stopped(job)) {
        queue_link(job, 1);
        OL__CHECK(pthread_cond_signal(&pool.work_cond));
    }
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
}

static void
run_chunks(ol_job_t *job)
{
    for (;;) {
        if (ol_job_stopped(job) || ol_job_status(job) != 0) {
            return;
        }
        size_t i = atomic_fetch_add(&job->next_chunk, 1);
        if (i >= job->nchunks) {
            return;
        }
        if (i + 1 < job->nchunks) {
            share(job);
        }
        int err = job->work(job, i);
        atomic_fetch_add_explicit(&pool.chunks, 1, memory_order_relaxed);
        if (err != 0) {
            set_status(job, err);
        }
    }
}

static long
now_ns(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void
spin(void)
{
    struct timespec t0, t;
    long budget = atomic_load(&pool.spin_ns);
    int found = 0;

    if (atomic_exchange(&pool.spinning, 1)) {
        return; /* another worker is already spinning */
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) {
            found = 1;
            break;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        long ns = (t.tv_sec - t0.tv_sec) * 1000000000L +
                  (t.tv_nsec - t0.tv_nsec);
        if (ns >= budget) {
            break;
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    /* Adapt: a spin that found work resets the budget to the most; each
     * one that found none trims it by an eighth, so a caller awaiting one
     * job at a time keeps its spinner while an idle pool stops burning
     * CPU after a few dozen jobs. */
    budget = found ? OL_SPIN_MAX_NS : budget - budget / 8;
    budget = budget < OL_SPIN_MIN_NS ? OL_SPIN_MIN_NS : budget;
    budget = budget > OL_SPIN_MAX_NS ? OL_SPIN_MAX_NS : budget;
    atomic_store(&pool.spin_ns, budget);
    atomic_store(&pool.spinning, 0);
}

long
ol__pool_spin_budget_ns(void)
{
    return atomic_load(&pool.spin_ns);
}

unsigned
ol__pool_idle_workers(void)
{
    return atomic_load(&pool.idle);
}

static int
must_leave(void)
{
    return pool.stopping || pool.alive > pool.target;
}

/* Pool lock held.  Pop the next job and count it as running; sets
 * *freed_slot when that freed a slot of a bounded queue, and *formed when
 * the job leads a batch just formed (the caller then runs its
 * batch_begin before any chunk). */
static ol_job_t *
take_job(int *freed_slot, int *formed)
{
    ol_job_t *job = queue_pop();

    job->active++;
    *freed_slot = 0;
    *formed = 0;
    if (job->state == OL_JOB_QUEUED) {
        start_job(job);
        *freed_slot = pool.max_queue != 0;
        if (job->batch.tag != NULL && pool.max_batch > 1) {
            *formed = ol__batch_form(job);
        }
    }
    return job;
}

/* Pool lock held.  This worker is done with the job: is it the last? */
static int
leave_job(ol_job_t *job)
{
    int last = --job->active == 0 && !job->in_queue &&
               job->state != OL_JOB_DONE;

    if (last) {
        job->state = OL_JOB_DONE;
    }
    return last;
}

static void *
worker(void *arg)
{
    (void)arg;
    tls_in_worker = 1;
    ol__priority_apply();
    OL__CHECK(pthread_mutex_lock(&pool.lock));
    for (;;) {
        if (queue_empty() && !must_leave()) {
            long slept_at = now_ns();
            do {
                atomic_fetch_add(&pool.idle, 1);
                OL__CHECK(pthread_cond_wait(&pool.work_cond, &pool.lock));
                atomic_fetch_sub(&pool.idle, 1);
            } while (queue_empty() && !must_leave());
            if (now_ns() - slept_at < OL_SPIN_RETRY_NS) {
                /* Work came back soon after the spin gave up: a caller
                 * awaiting one job at a time whose round trip outgrew the
                 * shrunken budget.  Without this the budget could only
                 * shrink, and such a caller stayed on the slow path of two
                 * sleeping threads for good. */
                atomic_store(&pool.spin_ns, OL_SPIN_MAX_NS);
            }
        }
        if (must_leave()) {
            break;
        }
        int freed_slot, formed;
        ol_job_t *job = take_job(&freed_slot, &formed);
        OL__CHECK(pthread_mutex_unlock(&pool.lock));
        /* Back to back: leaving one job and taking the next is one turn
         * of the lock, which small jobs feel. */
        while (job != NULL) {
            if (freed_slot) {
                ol__pool_note_space();
            }
            if (formed) {
                ol__batch_begin(job);
            }
            run_chunks(job);
            OL__CHECK(pthread_mutex_lock(&pool.lock));
            int last = leave_job(job);
            ol_job_t *next = NULL;
            if (!queue_empty() && !must_leave()) {
                next = take_job(&freed_slot, &formed);
            }
            OL__CHECK(pthread_mutex_unlock(&pool.lock));
            if (last) {
                ol__job_end(job); /* its owner may free it from here on */
                ol__pool_note_delivered();
            }
            job = next;
        }
        if (atomic_load(&pool.pending) == 0) {
            spin();
        }
        OL__CHECK(pthread_mutex_lock(&pool.lock));
    }
    pool.alive--;
    OL__CHECK(pthread_cond_broadcast(&pool.idle_cond));
    OL__CHECK(pthread_mutex_unlock(&pool.lock));
    if (pool.exit_hook != NULL) {
        pool.exit_hook();
    }
    return NULL;
}

/* Pool lock held.  Start workers up to the target.  Returns 0, or
 * OL_ENOTHREAD if pthread_create() failed and no worker runs at all. */
int
ol__workers_start(void)
{
    pthread_attr_t attr;
    sigset_t all, old;
    int err = 0;

    OL__CHECK(pthread_attr_init(&attr));
    OL__CHECK(pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED));
    /* Workers must not take signals meant for the interpreter's thread. */
    sigfillset(&all);
    OL__CHECK(pthread_sigmask(SIG_SETMASK, &all, &old));
    while (pool.alive < pool.target) {
        pthread_t tid;
        err = pthread_create(&tid, &attr, worker, NULL);
        if (err != 0) {
            break;
        }
        pool.alive++;
    }
    OL__CHECK(pthread_sigmask(SIG_SETMASK, &old, NULL));
    OL__CHECK(pthread_attr_destroy(&attr));
    (void)err;
    return pool.alive > 0 ? 0 : OL_ENOTHREAD;
}

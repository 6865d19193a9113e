/* offloop core: a pthread pool and per-event-loop completion ports.
 *
 * This header never includes Python.h: the core knows nothing of Python,
 * the GIL or asyncio.  The binding (src/module/) embeds an ol_job_t in its
 * own job record, submits it, and later takes finished jobs back from a
 * port (asynchronous callers) or a waiter (blocking callers).
 *
 * Errors are negative errno values (OL_E* aliases).  The contract, from
 * libuv: if a submit fails, the job is never delivered anywhere.
 */
#ifndef OFFLOOP_CORE_H
#define OFFLOOP_CORE_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define OL_ECANCELED (-ECANCELED)
#define OL_EAGAIN (-EAGAIN)          /* queue full (max_queue reached) */
#define OL_ESHUTDOWN (-ESHUTDOWN)    /* the pool is shutting down */
#define OL_EINVAL (-EINVAL)
#define OL_ENOMEM (-ENOMEM)
#define OL_ENOTHREAD (-10001)        /* no worker thread could be started */

typedef struct ol_job_s ol_job_t;
typedef struct ol_port_s ol_port_t;
typedef struct ol_waiter_s ol_waiter_t;

/* Runs chunk `chunk` (0 <= chunk < nchunks) of a job on a worker, without
 * the GIL.  Returns 0 or a negative errno; the first error is kept in the
 * job's status and the remaining chunks are skipped.  A long chunk may poll
 * ol_job_cancelled() and return OL_ECANCELED. */
typedef int (*ol_work_cb)(ol_job_t *job, size_t chunk);

/* Runs once on the worker that ran the last chunk, if no chunk failed and
 * the job was not cancelled (e.g. to merge per-chunk results). */
typedef int (*ol_finish_cb)(ol_job_t *job);

/* What may share a run (coalescing).  Jobs whose keys are equal (same
 * non-NULL tag, same words) and that wait in the queue together may be
 * taken by one worker as one batch: the first (the leader) runs its
 * chunks once for every member, and each member is still delivered on
 * its own (its port or waiter), with its own status.  A tag of NULL: the
 * job always runs alone. */
#define OL_BATCH_KEY_WORDS 6
typedef struct {
    const void *tag; /* e.g. the job kind; NULL: never batched */
    uint64_t words[OL_BATCH_KEY_WORDS];
    size_t max;      /* members at most, leader included (0: the pool's) */
} ol_batch_key_t;

/* Called once on the worker that formed a batch of two or more, before
 * any chunk of the leader runs, without locks: prepare the shared run
 * (e.g. gather the members' inputs).  It may lower the leader's nchunks
 * (a coarser plan for the shared run), the one write to nchunks after
 * submit.  Returns 0 or a negative errno,
 * which then ends every member with that error. */
typedef int (*ol_batch_begin_cb)(ol_job_t *leader);

/* Job state, guarded by the pool lock. */
enum {
    OL_JOB_NEW = 0,  /* not submitted */
    OL_JOB_QUEUED,   /* in the queue, no chunk started */
    OL_JOB_RUNNING,  /* some chunk started */
    OL_JOB_DONE,     /* delivered, or ended by ol_job_cancel() */
};

/* One queue entry.  A chunked job has a single node: a worker that takes
 * the job puts the node back while chunks remain and workers are idle, so
 * the job never needs more than one node whatever the pool size. */
typedef struct ol__qnode_s {
    struct ol__qnode_s *prev, *next;
} ol__qnode_t;

struct ol_job_s {
    /* Set by the submitter before ol_pool_submit(); read-only afterwards. */
    ol_work_cb work;
    ol_finish_cb finish;  /* may be NULL */
    size_t nchunks;       /* >= 1 */
    ol_port_t *port;      /* deliver here (a reference is taken) ... */
    /* ... or wake this blocking caller.  Exchanged atomically when the
     * job ends, and by ol_job_abandon(). */
    _Atomic(ol_waiter_t *) waiter;
    unsigned generation;  /* fork generation at submit */
    ol_batch_key_t batch; /* tag NULL (zeroed): runs alone */
    ol_batch_begin_cb batch_begin; /* may be NULL */

    /* The batch, formed under the pool lock when the leader is taken and
     * read-only from then on.  Leader: batch_size = 1 + members, linked
     * from batch_next in queue order.  Member: batch_member = 1, linked
     * from the leader.  Work and finish callbacks of the leader read the
     * members' payloads through this list. */
    ol_job_t *batch_next;
    size_t batch_size;
    int batch_member;

    /* Guarded by the pool lock. */
    ol__qnode_t node;
    int state;       /* OL_JOB_* */
    int in_queue;    /* node is linked in the queue */
    unsigned active; /* workers inside the job */

    atomic_int cancel;        /* set by ol_job_cancel(), polled by work */
    atomic_int status;        /* 0, or the first error; read after delivery */
    atomic_size_t next_chunk; /* next chunk to claim */

    /* Done-list link: guarded by the lock of the list the job is on. */
    ol_job_t *done_next;
};

/* The futex waiter is Linux-only.  OL_PORTABLE (a CMake option) builds
 * what macOS and the BSDs get, on Linux, so that CI runs those paths; it
 * must be defined alike for every file that includes this header, since
 * it changes the size of ol_waiter_t (CMake makes it a PUBLIC definition
 * of ol_core). */
#if defined(__linux__) && !defined(OL_PORTABLE)
#define OL_HAVE_FUTEX 1
#endif

/* A blocking caller's wake-up.  With OL_HAVE_FUTEX a futex on `done`: the
 * worker stores 1 and wakes the caller, holding no lock the caller then
 * needs (see waiter.c).  Elsewhere `done` is set under the lock, then
 * signalled. */
struct ol_waiter_s {
#ifdef OL_HAVE_FUTEX
    atomic_uint done;
#else
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done; /* lock */
#endif
};

/* ---- pool (one per process) ---------------------------------------- */

/* Counters, read with ol_pool_stats(). */
typedef struct {
    unsigned threads;      /* configured pool size */
    unsigned threads_alive;/* worker threads running now */
    size_t max_queue;      /* 0: unbounded */
    size_t queued;         /* jobs waiting for a worker */
    size_t running;        /* jobs some worker is inside */
    uint64_t submitted;    /* jobs accepted by ol_pool_submit() */
    uint64_t started;      /* jobs whose first chunk ran */
    uint64_t chunks;       /* chunks run */
    uint64_t batches;      /* runs that served two or more jobs */
    uint64_t batched;      /* jobs delivered from such runs */
    size_t max_batch;      /* 1: coalescing off */
} ol_pool_stats_t;

/* Set the pool size (threads >= 1) and queue bound (0: unbounded).  Safe
 * at any time from any thread: extra workers leave when idle, missing
 * ones start on the next submit.  Returns 0 or OL_EINVAL. */
int ol_pool_configure(unsigned threads, size_t max_queue);

/* The most jobs one batch may hold, leader included (default
 * OL_DEFAULT_MAX_BATCH; 1 turns coalescing off).  Thread-safe; batches
 * formed later use it.  Returns 0 or OL_EINVAL (0 or above
 * OL_MAX_BATCH_LIMIT). */
#define OL_DEFAULT_MAX_BATCH 64
#define OL_MAX_BATCH_LIMIT 4096
int ol_pool_set_max_batch(size_t max_batch);

/* The default pool size: the CPUs this process may run on. */
unsigned ol_default_threads(void);

/* Queue a job.  Thread-safe.  `defer_wake`: do not signal a worker now;
 * the caller promises to call ol_pool_kick() soon (once for a burst).
 * Returns 0 (or 1 if defer_wake is set and a kick is
 * needed), OL_EAGAIN (queue at max_queue), OL_ESHUTDOWN, or OL_ENOTHREAD
 * (no worker runs and none could be started).  On error the job is never delivered. */
int ol_pool_submit(ol_job_t *job, int defer_wake);

/* Wake as many idle workers as there are queued jobs.  Thread-safe. */
void ol_pool_kick(void);

/* Cancel a job.  Thread-safe, but meant for the job's owner.  Returns 1 if
 * the job ended here (it was queued, or between chunks with no worker in
 * it): it will never be delivered and the caller owns it again.  Returns 0
 * if a worker will still deliver it (it then sees the cancel at its next
 * chunk), or if it was already delivered.  A job from before a fork is
 * left alone (returns 0). */
int ol_job_cancel(ol_job_t *job);
/* (A job inside a running batch, leader or member, is only flagged: it is
 * still delivered, with OL_ECANCELED, when the batch ends, and the batch
 * stops early only once every member is cancelled.) */

/* The run should stop: the job is cancelled and, if it leads a batch,
 * so is every member.  Any thread; for work callbacks that poll. */
int ol_job_stopped(ol_job_t *job);

/* A blocking caller stops waiting for a job a worker is inside (after
 * ol_job_cancel() returned 0), for work that cannot stop at a chunk
 * boundary (a Python callable).  Returns 1 if the job will go to the
 * orphan list (ol_orphans_take()) when it ends instead of waking its
 * waiter: the caller may destroy the waiter at once and must not touch
 * the job again.  Returns 0 if the job is being delivered to the waiter
 * already: wait for it.  Thread-safe. */
int ol_job_abandon(ol_job_t *job);

extern atomic_int ol__stopping; /* set by ol_pool_shutdown() */

/* True once the job's owner asked to cancel it, or the pool is shutting
 * down.  For work callbacks, between pieces of work. */
static inline int
ol_job_cancelled(ol_job_t *job)
{
    return atomic_load_explicit(&job->cancel, memory_order_relaxed) ||
           atomic_load_explicit(&ol__stopping, memory_order_relaxed);
}

/* The job's result: 0 or a negative errno (OL_ECANCELED if cancelled). */
static inline int
ol_job_status(ol_job_t *job)
{
    return atomic_load_explicit(&job->status, memory_order_acquire);
}

/* True if a submit would find room in the queue now (always true with
 * no max_queue, or while shutting down). */
int ol_pool_has_space(void);

/* Wait until the queue has room, or `timeout_ms` passes.  Returns 0 or
 * -ETIMEDOUT.  Blocking: call without the GIL. */
int ol_pool_wait_space(long timeout_ms);

/* Wait until no job is queued or running, or `timeout_ms` passes.
 * Returns 0, or -ETIMEDOUT.  Blocking: call without the GIL. */
int ol_pool_wait_idle(long timeout_ms);

/* Stop taking jobs, drop the queued ones (never delivered, counted in
 * *dropped), ask running ones to cancel, and wait up to `timeout_ms` for
 * workers to leave.  For interpreter exit.  Returns 0 or -ETIMEDOUT. */
int ol_pool_shutdown(long timeout_ms, size_t *dropped);

void ol_pool_stats(ol_pool_stats_t *out);

/* True once ol_pool_shutdown() was called (in this process). */
static inline int
ol_pool_stopping(void)
{
    return atomic_load(&ol__stopping);
}

/* Incremented in a child after fork(): jobs and ports from before belong
 * to the parent.  The child starts a fresh pool on its first submit. */
unsigned ol_fork_generation(void);

/* True on a pool worker thread (blocking calls there run inline, so that
 * a job waiting on the pool cannot deadlock it). */
int ol_in_worker(void);

/* Worker-thread hooks, for the binding: `on_exit` runs on a worker thread
 * just before it leaves (e.g. to drop an interpreter thread state).  Set
 * once, before the first submit. */
void ol_pool_set_thread_exit_hook(void (*on_exit)(void));

/* Run the job on the calling thread: every chunk, then finish.  For tiny
 * jobs and for blocking calls made on a worker.  Delivers nowhere. */
void ol_job_run_inline(ol_job_t *job);

/* ---- ports (one per event loop) ------------------------------------ */

/* Create a port: a done-list and an eventfd (a pipe where there is none).
 * Returns 0 and *out, or a negative errno (e.g. -EMFILE). */
int ol_port_new(ol_port_t **out);

/* The fd the event loop watches for readability. */
int ol_port_fd(const ol_port_t *port);

/* Take every job delivered so far, oldest first, linked by done_next, and
 * clear the fd's readiness.  Owner's thread only.  May return NULL (a
 * wakeup can be spurious). */
ol_job_t *ol_port_take(ol_port_t *port);

/* Call visit(job, arg) on every job delivered and not yet taken, under
 * the port lock, until one returns non-zero (returned).  Any thread; for
 * a garbage collector's traversal of what the delivered jobs hold.  The
 * callback must not call back into the port. */
int ol_port_visit(ol_port_t *port, int (*visit)(ol_job_t *, void *),
                  void *arg);

/* Close the port: close its fd (the caller has removed it from the loop)
 * and return the jobs delivered but not yet taken.  Jobs delivered later
 * go to the orphan list (ol_orphans_take()).  The port memory lives until
 * the last job referencing it is released. */
ol_job_t *ol_port_close(ol_port_t *port);

/* In a child after fork(): close this inherited port's fd copy without
 * locking and forget its jobs (they are the parent's). */
void ol_port_forget(ol_port_t *port);

/* References: a submitted job holds one on its port until the owner calls
 * ol_port_decref() after taking it back. */
void ol_port_incref(ol_port_t *port);
void ol_port_decref(ol_port_t *port);

/* Ask for a wake-up of the port's fd once the queue has room (after an
 * OL_EAGAIN).  Once per wait: the registration ends with the wake-up.
 * The owner re-registers if the queue is full again. */
void ol_port_wait_space(ol_port_t *port);

/* Jobs whose port was closed before they finished.  Any thread. */
ol_job_t *ol_orphans_take(void);
int ol_orphans_pending(void);

/* ---- waiters (blocking callers; waiter.c) -------------------------- */

/* Prepare a waiter (usually on the caller's stack) before submitting a job
 * that names it.  Cannot fail (a broken pthread call aborts). */
void ol_waiter_init(ol_waiter_t *w);
/* Release it, once ol_waiter_wait() returned 1, or once the job was taken
 * back by ol_job_cancel(): no worker touches it after either. */
void ol_waiter_destroy(ol_waiter_t *w);
/* Wait until delivered or `timeout_ms` passes (< 0: forever), measured on
 * CLOCK_MONOTONIC on every system (a wall-clock step neither ends nor
 * stretches the wait, except on the OL_PORTABLE realtime path, waiter.c).
 * Returns 1 if delivered, 0 on timeout.  Only the thread that owns the
 * waiter calls it.  Call without the GIL. */
int ol_waiter_wait(ol_waiter_t *w, long timeout_ms);

#endif /* OFFLOOP_CORE_H */

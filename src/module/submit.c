/* The one submit path of every call, awaitable or blocking.
 *
 * Asynchronous: the C entry point parses its arguments, builds a job and
 * calls ol_submit_async(), which creates the future on the running loop
 * and hands the job to the pool (ol_pool_submit_for_port: the decision
 * between submitted and "queue full"), or holds it in the loop's port
 * while the queue is full or older jobs are held there (port_type.c moves
 * held jobs in with the same function).  The worker wake-up is deferred
 * to one call per loop tick (ol_kick_later).
 *
 * Blocking: ol_submit_blocking() queues the job with a waiter and waits
 * with the GIL released.  In the main thread it wakes every 100 ms to run
 * signal handlers, so Ctrl-C cancels the job instead of hanging.
 *
 * Tiny jobs run inline on the calling thread, either way.
 */
#include "binding.h"

#include <unistd.h>

/* A tiny job: run it here and hand back a finished future, saving the two
 * cross-thread wake-ups a pool round trip costs. */
static PyObject *
done_future(ol_state *st, PyObject *loop, ol_pyjob *job)
{
    PyObject *fut = ol_future_new(st, loop, NULL);

    if (fut != NULL) {
        ol_job_run_inline(&job->core);
        ol_count.inline_runs++;
        ol_settle(st, fut, job);
    }
    ol_pyjob_free(job);
    return fut;
}

/* ---- asynchronous -------------------------------------------------- */

int
ol_pool_submit_for_port(PyObject *port, ol_pyjob *job, int *kick)
{
    int rc;

    job->core.port = ol_port_core(port);
    rc = ol_pool_submit(&job->core, 1);
    if (rc < 0) { /* never delivered: the port is not the job's */
        job->core.port = NULL;
        return rc == OL_EAGAIN ? 0 : rc;
    }
    *kick |= rc == 1;
    return 1;
}

void
ol_kick_later(ol_state *st, PyObject *port, PyObject *loop)
{
    if (loop == NULL || ol_port_schedule_kick(st, port, loop) < 0) {
        /* Without the deferred wake-up the job could wait forever. */
        PyErr_Clear();
        ol_pool_kick();
    }
}

PyObject *
ol_submit_async(ol_state *st, ol_pyjob *job, int inline_ok)
{
    PyObject *loop, *port, *fut;
    int rc, kick = 0;

    port = ol_port_for_running_loop(st, &loop);
    if (port == NULL) {
        ol_pyjob_free(job);
        return NULL;
    }
    if (inline_ok) {
        return done_future(st, loop, job);
    }
    fut = ol_future_new(st, loop, job);
    if (fut == NULL) {
        ol_pyjob_free(job);
        return NULL;
    }
    job->future = Py_NewRef(fut);
    /* Behind jobs the port already holds, to keep their order. */
    rc = ol_port_holds_jobs(port) ? 0
                                  : ol_pool_submit_for_port(port, job, &kick);
    if (rc < 0) { /* the job will never be delivered */
        ol_future_detach(fut);
        ol_pyjob_free(job);
        Py_DECREF(fut);
        return ol_set_pyerr(st, rc);
    }
    ol_count.submitted++;
    if (rc == 0) { /* queue full: held until room frees */
        ol_port_hold(port, job);
    }
    else if (kick) {
        ol_kick_later(st, port, loop);
    }
    return fut;
}

/* ---- blocking ------------------------------------------------------ */

/* Wait for delivery with the GIL released.  Returns 0; or, with an
 * exception set by a signal handler, -1 (the job was cancelled and has
 * ended: the caller owns it) or -2 (the job was abandoned to a worker that
 * cannot stop: the orphan list frees it when it ends, never touch it). */
static int
wait_blocking(ol_pyjob *job, ol_waiter_t *w)
{
    int done = 0;

    while (!done) {
        Py_BEGIN_ALLOW_THREADS
        done = ol_waiter_wait(w, 100);
        Py_END_ALLOW_THREADS
        if (!done && PyErr_CheckSignals() < 0) {
            if (ol_job_cancel(&job->core) == 1) {
                return -1;
            }
            if (job->kind->unstoppable && ol_job_abandon(&job->core)) {
                return -2;
            }
            /* A worker is inside: it stops at its next chunk. */
            Py_BEGIN_ALLOW_THREADS
            ol_waiter_wait(w, -1);
            Py_END_ALLOW_THREADS
            return -1;
        }
    }
    return 0;
}

/* The interpreter is exiting and cancelled this (daemon) thread's job:
 * an exception here would print a traceback as the process ends.  Wait,
 * without the GIL, for the process to end instead, like any daemon thread
 * blocked in C. */
static void
park_until_exit(void)
{
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        pause();
    }
    Py_END_ALLOW_THREADS
}

PyObject *
ol_submit_blocking(ol_state *st, ol_pyjob *job, int inline_ok)
{
    ol_waiter_t waiter;
    PyObject *res;
    int rc;

    if (ol_orphans_pending()) {
        ol_drain_orphans(); /* e.g. jobs abandoned by an earlier Ctrl-C */
    }
    if (inline_ok) {
        /* A tiny job: cheaper here, GIL held, than a worker's wake-up. */
        ol_job_run_inline(&job->core);
        ol_count.inline_runs++;
    }
    else if (ol_in_worker()) {
        /* On a worker, waiting for another worker could deadlock. */
        Py_BEGIN_ALLOW_THREADS
        ol_job_run_inline(&job->core);
        Py_END_ALLOW_THREADS
        ol_count.inline_runs++;
    }
    else {
        ol_waiter_init(&waiter);
        job->core.waiter = &waiter;
        while ((rc = ol_pool_submit(&job->core, 0)) == OL_EAGAIN) {
            /* Queue full: wait for room, without the GIL, and let
             * Ctrl-C through. */
            Py_BEGIN_ALLOW_THREADS
            (void)ol_pool_wait_space(100);
            Py_END_ALLOW_THREADS
            if (PyErr_CheckSignals() < 0) {
                ol_waiter_destroy(&waiter);
                ol_pyjob_free(job);
                return NULL;
            }
        }
        if (rc < 0) {
            ol_waiter_destroy(&waiter);
            ol_pyjob_free(job);
            return ol_set_pyerr(st, rc);
        }
        ol_count.submitted++;
        rc = wait_blocking(job, &waiter);
        ol_waiter_destroy(&waiter);
        if (rc == -2) {
            return NULL; /* counted as cancelled when it is dropped */
        }
        job->core.waiter = NULL;
        if (rc < 0) {
            ol_count.cancelled++;
            ol_pyjob_free(job);
            return NULL;
        }
    }
    if (ol_job_status(&job->core) == OL_ECANCELED && ol_pool_stopping()) {
        park_until_exit();
    }
    res = ol_pyjob_result(st, job);
    if (res != NULL) {
        ol_count.completed++;
    }
    else {
        ol_count.failed++;
    }
    ol_pyjob_free(job);
    return res;
}

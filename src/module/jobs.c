/* Submitting jobs and resolving them: the path of every call.
 *
 * Asynchronous: the C entry point parses its arguments, builds a job and
 * calls ol_submit_async(), which creates the future on the running loop,
 * queues the job and, once per loop tick, schedules the worker wake-up.
 * The port's reader callback later calls ol_resolve() for each job.
 *
 * Blocking: ol_submit_blocking() queues the job with a waiter and waits
 * with the GIL released.  In the main thread it wakes every 100 ms to run
 * signal handlers, so Ctrl-C cancels the job instead of hanging.
 *
 * A job's Python references are released with the GIL: on the loop thread
 * when it resolves, in the blocking caller, or wherever orphans are
 * drained (always with the GIL).  Jobs are malloc()ed, never PyMem: the
 * core touches them on workers without the GIL.
 */
#include "binding.h"

#include <stdlib.h>
#include <unistd.h>

ol_counters ol_count;

ol_pyjob *
ol_pyjob_new(const ol_jobkind *kind, size_t payload_size, size_t nchunks)
{
    ol_pyjob *job = calloc(1, sizeof(ol_pyjob) + payload_size);

    if (job == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    job->kind = kind;
    job->core.work = kind->work;
    job->core.finish = kind->finish;
    job->core.nchunks = nchunks;
    ol_count.live++;
    return job;
}

void
ol_pyjob_free(ol_pyjob *job)
{
    if (job->kind->release != NULL) {
        job->kind->release(job);
    }
    Py_CLEAR(job->future);
    if (job->core.port != NULL) {
        ol_port_decref(job->core.port);
    }
    ol_count.live--;
    free(job);
}

PyObject *
ol_pyjob_result(ol_state *st, ol_pyjob *job)
{
    int status = ol_job_status(&job->core);

    if (status != 0) {
        return ol_set_pyerr(st, status);
    }
    if (job->kind->complete == NULL) {
        Py_RETURN_NONE;
    }
    return job->kind->complete(job);
}

/* ---- asynchronous -------------------------------------------------- */

PyObject *
ol_fetch_exception(void)
{
    PyObject *type, *value, *tb;

    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

static PyObject *
set_exception(ol_state *st, PyObject *fut, PyObject *exc)
{
    PyObject *ok = PyObject_CallMethodOneArg(fut, st->str_set_exception, exc);

    if (ok == NULL && !PyErr_ExceptionMatches(st->InvalidStateError)) {
        /* asyncio refuses some exceptions (StopIteration): resolve the
         * future with the refusal itself rather than leave it pending. */
        PyObject *refusal = ol_fetch_exception();
        ok = PyObject_CallMethodOneArg(fut, st->str_set_exception, refusal);
        Py_DECREF(refusal);
    }
    return ok;
}

/* Set the job's result or exception on the future, and count it. */
static void
settle(ol_state *st, PyObject *fut, ol_pyjob *job)
{
    PyObject *res = ol_pyjob_result(st, job);
    PyObject *ok;

    if (res != NULL) {
        ol_count.completed++;
        ok = PyObject_CallMethodOneArg(fut, st->str_set_result, res);
        Py_DECREF(res);
    }
    else {
        PyObject *exc = ol_fetch_exception();
        ol_count.failed++;
        ok = set_exception(st, fut, exc);
        Py_DECREF(exc);
    }
    if (ok == NULL) {
        /* Someone resolved the future by hand: leave it as it is. */
        if (PyErr_ExceptionMatches(st->InvalidStateError)) {
            PyErr_Clear();
        }
        else {
            PyErr_WriteUnraisable(fut);
        }
    }
    Py_XDECREF(ok);
}

/* A tiny job: run it here and hand back a finished future, saving the two
 * cross-thread wake-ups a pool round trip costs. */
static PyObject *
done_future(ol_state *st, PyObject *loop, ol_pyjob *job)
{
    PyObject *fut = ol_future_new(st, loop, NULL);

    if (fut != NULL) {
        ol_job_run_inline(&job->core);
        ol_count.inline_runs++;
        settle(st, fut, job);
    }
    ol_pyjob_free(job);
    return fut;
}

PyObject *
ol_submit_async(ol_state *st, ol_pyjob *job, int inline_ok)
{
    PyObject *loop, *port, *fut;
    int rc;

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
    if (ol_port_holds_jobs(port)) { /* keep order behind held jobs */
        ol_count.submitted++;
        ol_port_hold(port, job);
        return fut;
    }
    job->core.port = ol_port_core(port);
    rc = ol_pool_submit(&job->core, 1);
    if (rc == OL_EAGAIN) { /* queue full: hold it until room frees */
        job->core.port = NULL;
        ol_count.submitted++;
        ol_port_hold(port, job);
        return fut;
    }
    if (rc < 0) { /* the job will never be delivered */
        job->core.port = NULL;
        ol_future_detach(fut);
        ol_pyjob_free(job);
        Py_DECREF(fut);
        return ol_set_pyerr(st, rc);
    }
    ol_count.submitted++;
    if (rc == 1 && ol_port_schedule_kick(st, port, loop) < 0) {
        /* Without the deferred wake-up the job could wait forever. */
        PyErr_Clear();
        ol_pool_kick();
    }
    return fut;
}

void
ol_resolve(ol_state *st, ol_pyjob *job)
{
    PyObject *fut = job->future;

    if (ol_future_job(fut) != job) {
        /* Cancelled while the job ran: its result is not wanted. */
        ol_count.cancelled++;
    }
    else {
        ol_future_detach(fut);
        settle(st, fut, job);
        ol_count.resolved++;
    }
    ol_pyjob_free(job);
}

void
ol_fail_job(ol_state *st, ol_pyjob *job, int err)
{
    PyObject *fut = job->future;

    if (ol_future_job(fut) != job) {
        ol_count.cancelled++;
    }
    else {
        ol_future_detach(fut);
        ol_set_pyerr(st, err);
        PyObject *exc = ol_fetch_exception();
        PyObject *ok = set_exception(st, fut, exc);
        Py_DECREF(exc);
        if (ok == NULL) {
            PyErr_WriteUnraisable(fut);
        }
        Py_XDECREF(ok);
        ol_count.failed++;
    }
    ol_pyjob_free(job);
}

void
ol_drop(ol_pyjob *job)
{
    if (job->future == NULL) {
        /* A blocking caller's job orphaned by ol_job_abandon(). */
        ol_count.cancelled++;
    }
    else if (ol_future_job(job->future) != job) {
        ol_count.cancelled++; /* nobody waited for this completion */
    }
    else {
        ol_count.dropped++;
    }
    ol_pyjob_free(job);
}

void
ol_drop_list(ol_job_t *list)
{
    while (list != NULL) {
        ol_job_t *next = list->done_next;
        ol_drop((ol_pyjob *)list);
        list = next;
    }
}

void
ol_drain_orphans(void)
{
    ol_drop_list(ol_orphans_take());
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

/* The job's lifecycle: new, result, settle (resolve, fail), drop, free.
 *
 * submit.c hands jobs to the pool; the port's reader callback later calls
 * ol_resolve() for each one delivered, ol_fail_job() ends one the pool
 * refused, and ol_drop() one whose loop is gone.  A job's Python references are released with the GIL: on the loop thread
 * when it resolves, in the blocking caller, or wherever orphans are
 * drained (always with the GIL).  Jobs are malloc()ed, never PyMem: the
 * core touches them on workers without the GIL.
 */
#include "binding.h"

#include <stdlib.h>

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
void
ol_settle(ol_state *st, PyObject *fut, ol_pyjob *job)
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

void
ol_resolve(ol_state *st, ol_pyjob *job)
{
    PyObject *fut = job->future;

    if (!ol_job_wanted(job)) {
        /* Cancelled while the job ran: its result is not wanted. */
        ol_count.cancelled++;
    }
    else {
        ol_future_detach(fut);
        ol_settle(st, fut, job);
        ol_count.resolved++;
    }
    ol_pyjob_free(job);
}

void
ol_fail_job(ol_state *st, ol_pyjob *job, int err)
{
    PyObject *fut = job->future;

    if (!ol_job_wanted(job)) {
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
    if (job->future == NULL || !ol_job_wanted(job)) {
        /* Nobody waits for this completion: a blocking caller's job
         * orphaned by ol_job_abandon(), or a cancelled future's. */
        ol_count.cancelled++;
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


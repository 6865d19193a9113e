/* Shared between the files of the extension module offloop._core.
 *
 * A Python-side job (ol_pyjob) wraps a core job with what the interpreter
 * needs: the future it resolves, and a kind that knows how to turn the
 * finished work into a Python result and how to drop its references.
 * Every function here runs with the GIL held unless it says otherwise.
 */
#ifndef OFFLOOP_BINDING_H
#define OFFLOOP_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "offloop-core.h"

typedef struct ol_pyjob_s ol_pyjob;

typedef struct {
    const char *name;
    /* Worker, no GIL (except the kind of offloop.run). */
    ol_work_cb work;
    ol_finish_cb finish; /* may be NULL */
    /* GIL held, on the thread that resolves the job, only if the job's
     * status is 0: the result, or NULL with an exception set. */
    PyObject *(*complete)(ol_pyjob *job);
    /* GIL held, exactly once, whatever happened: drop references and
     * buffers held by the payload.  May be NULL. */
    void (*release)(ol_pyjob *job);
    /* The work cannot stop at a chunk boundary (a Python callable): a
     * blocking caller interrupted by a signal stops waiting for it at once
     * (ol_job_abandon()) instead of waiting for the work to end. */
    int unstoppable;
} ol_jobkind;

struct ol_pyjob_s {
    ol_job_t core;
    const ol_jobkind *kind;
    PyObject *future; /* strong; NULL for a blocking call */
    /* Kind-specific data follows, aligned for any type. */
    _Alignas(max_align_t) unsigned char payload[];
};

#define OL_PAYLOAD(job, type) ((type *)(void *)(job)->payload)

typedef struct {
    PyTypeObject *PortType;
    PyTypeObject *FutureType;     /* our subclass of asyncio.Future */
    PyTypeObject *AsyncioFuture;  /* its base */
    PyObject *get_running_loop;   /* asyncio._get_running_loop */
    PyObject *CancelledError;
    PyObject *InvalidStateError;
    PyObject *ports;              /* {id(loop): Port} */
    PyObject *kw_loop;            /* ("loop",) */
    PyObject *str_add_reader;
    PyObject *str_remove_reader;
    PyObject *str_call_soon;
    PyObject *str_is_closed;
    PyObject *str_set_result;
    PyObject *str_set_exception;
    PyObject *str_cancel;
    PyObject *last_loop;          /* borrowed, compared by address only */
    /* loops.c's running_loop(): the thread-state entry asyncio last
     * kept the running loop in (strong), the loop it meant (borrowed: the
     * entry holds it) and the fork generation then. */
    PyObject *str_running_loop_key;
    PyObject *loop_entry;
    PyObject *loop_entry_loop;
    unsigned loop_entry_generation;
    PyObject *last_port;          /* borrowed: the Port forgets it */
    /* vec_args.c: numpy.empty and dtypes, set on first use (NULL until
     * then, so that import offloop does not import numpy). */
    PyObject *np_empty;
    PyObject *np_float32;
    PyObject *np_int64;
} ol_state;

/* Process-wide counters: the pool is process-wide, and every update
 * happens with the GIL held. */
typedef struct {
    unsigned long long submitted; /* jobs handed to the pool (or held) */
    unsigned long long completed, failed, cancelled, dropped;
    unsigned long long wakeups, resolved, inline_runs;
    long long live; /* jobs allocated and not yet freed */
} ol_counters;

extern ol_counters ol_count;

/* state.c: the ground floor. */
ol_state *ol_get_state(PyObject *module);
ol_state *ol_get_state_by_type(PyTypeObject *tp);

/* module.c */
extern PyModuleDef ol_moduledef;

/* errors.c: the one place that maps core errors to exceptions. */
PyObject *ol_set_pyerr(ol_state *st, int err);
const char *ol_strerror(int err);

/* jobs.c: the job's lifecycle. */
ol_pyjob *ol_pyjob_new(const ol_jobkind *kind, size_t payload_size,
                       size_t nchunks);
/* Release and free a job that was never submitted, or that is back. */
void ol_pyjob_free(ol_pyjob *job);
/* Turn a finished job into its result (new ref) or NULL + exception. */
PyObject *ol_pyjob_result(ol_state *st, ol_pyjob *job);
/* Set the job's result or exception on `fut`, and count it. */
void ol_settle(ol_state *st, PyObject *fut, ol_pyjob *job);
/* Resolve one job taken from a port, on its loop's thread. */
void ol_resolve(ol_state *st, ol_pyjob *job);
/* Resolve the future of a job that could not be submitted. */
void ol_fail_job(ol_state *st, ol_pyjob *job, int err);
/* The raised exception, normalized, with its traceback attached. */
PyObject *ol_fetch_exception(void);
/* Drop a job whose loop is gone: count it, release it. */
void ol_drop(ol_pyjob *job);
/* Drop every job of a list linked by done_next. */
void ol_drop_list(ol_job_t *list);
/* Drop every orphaned job (their loops closed before they finished). */
void ol_drain_orphans(void);

/* submit.c: the one submit path. */
/* Submit to the running loop: returns a future (new ref), or NULL with an
 * exception set (the job is then freed).  If `inline_ok`, the job runs on
 * this thread and the future is returned done. */
PyObject *ol_submit_async(ol_state *st, ol_pyjob *job, int inline_ok);
/* Submit and wait with the GIL released: the result, or NULL + exception
 * (the job is freed either way).  If `inline_ok`, the job runs on this
 * thread instead, GIL held. */
PyObject *ol_submit_blocking(ol_state *st, ol_pyjob *job, int inline_ok);
/* Hand a job to the pool for `port`'s loop: 1 submitted (*kick set when
 * a worker wake-up is owed), 0 queue full, or a negative error; on 0 and
 * errors the job was not submitted and the caller still owns it. */
int ol_pool_submit_for_port(PyObject *port, ol_pyjob *job, int *kick);
/* The owed wake-up: at the next tick of `loop` (NULL: at once). */
void ol_kick_later(ol_state *st, PyObject *port, PyObject *loop);

/* future.c: the asyncio.Future subclass whose cancel() reaches the job. */
int ol_future_init_type(PyObject *module, ol_state *st);
PyObject *ol_future_new(ol_state *st, PyObject *loop, ol_pyjob *job);
/* The job a future still waits for; NULL once cancelled or resolved. */
ol_pyjob *ol_future_job(PyObject *fut);
void ol_future_detach(PyObject *fut);

/* Is the job's outcome still wanted?  No once its future was cancelled
 * (or resolved by hand); a blocking caller's job always is. */
static inline int
ol_job_wanted(ol_pyjob *job)
{
    return job->future == NULL || ol_future_job(job->future) == job;
}

/* port_type.c */
int ol_port_init_type(PyObject *module, ol_state *st);
ol_port_t *ol_port_core(PyObject *port);
/* Backpressure: with the queue at max_queue, a loop's further jobs wait
 * in its port, oldest first, and enter the pool as room frees (the core
 * wakes the port's fd).  Loop thread only. */
int ol_port_holds_jobs(PyObject *port);
void ol_port_hold(PyObject *port, ol_pyjob *job);
/* Ask for one ol_pool_kick() at the next tick of the port's loop. */
int ol_port_schedule_kick(ol_state *st, PyObject *port, PyObject *loop);

/* loops.c: the loop-to-port registry. */
/* The port of the running loop, created on first use (borrowed ref), and
 * the loop itself (borrowed, valid while the caller runs). */
PyObject *ol_port_for_running_loop(ol_state *st, PyObject **loop_out);
/* Release ports whose loop is closed or gone; with `all`, every port. */
void ol_ports_sweep(ol_state *st, int all);

/* testing.c, run.c, vectors.c */
extern PyMethodDef ol_testing_methods[];
extern PyMethodDef ol_run_methods[];
extern PyMethodDef ol_vector_methods[];
extern PyMethodDef ol_vector_testing_methods[];

/* capi.c: the capsule behind include/offloop.h. */
int ol_capi_init(PyObject *module);
/* The last step of interpreter exit (after the pool's shutdown): release
 * the contexts of C API jobs no worker is inside. */
void ol_capi_at_exit(void);
int ol_run_module_init(PyObject *module);
/* Stop taking the GIL on workers; returns the time left of `timeout`. */
double ol_run_shutdown(double timeout);

#endif /* OFFLOOP_BINDING_H */

/* offloop.run(fn, *args, **kwargs) and offloop.batched(fn): Python
 * callables on the pool.
 *
 * The one kind of job whose worker takes the GIL (DESIGN invariant 1): it
 * is meant for callables that release the GIL themselves (hashlib, zlib,
 * numpy).  Each worker keeps one interpreter thread state for its life,
 * made on its first such job, so a call costs a GIL hand-off and nothing
 * more.  The caller's contextvars are copied at submit and entered around
 * the call, as asyncio.to_thread does.
 *
 * offloop.batched(fn) calls fn(list of items) once for every call of
 * the wrapper that waits in the queue when a worker comes for one (the
 * pool's coalescing, keyed by the wrapper object, which each job holds so
 * that its address is not reused meanwhile).  The leader's worker calls
 * fn with the items of every member not cancelled yet, in queue order,
 * and hands each member its own element of the returned sequence, or the
 * exception fn raised.  fn runs without the callers' contextvars: one
 * call serves many callers.
 *
 * Interpreter exit: ol_run_shutdown() (from atexit) sets `closing`, then
 * waits, with the GIL released and for a bounded time, until no worker is
 * between its `closing` check and the end of its call.  After that no
 * worker takes the GIL again: a worker that did while the interpreter
 * finalizes would be stopped inside CPython.
 */
#include "binding.h"

typedef struct {
    PyObject *fn, *args, *kwargs, *context;
    PyObject *result, *exception; /* set by the worker, GIL held */
} run_payload;

static PyInterpreterState *interp;
static _Thread_local PyThreadState *worker_tstate;
static atomic_int closing;
static atomic_int inside; /* workers past the closing check */

/* On a worker: take the GIL with this worker's thread state, unless the
 * interpreter is exiting or the run was cancelled before it began.
 * Returns 0 (then call leave_python()) or the error that ends the job. */
static int
enter_python(ol_job_t *core)
{
    atomic_fetch_add(&inside, 1);
    if (atomic_load(&closing) || ol_job_stopped(core)) {
        atomic_fetch_sub(&inside, 1);
        return ol_job_stopped(core) ? OL_ECANCELED : OL_ESHUTDOWN;
    }
    if (worker_tstate == NULL) {
        worker_tstate = PyThreadState_New(interp);
        if (worker_tstate == NULL) {
            atomic_fetch_sub(&inside, 1);
            return OL_ENOMEM;
        }
    }
    PyEval_RestoreThread(worker_tstate);
    return 0;
}

static void
leave_python(void)
{
    (void)PyEval_SaveThread();
    atomic_fetch_sub(&inside, 1);
}

static int
run_work(ol_job_t *core, size_t chunk)
{
    run_payload *p = OL_PAYLOAD((ol_pyjob *)core, run_payload);
    int rc = enter_python(core);

    if (rc != 0) {
        return rc;
    }
    if (PyContext_Enter(p->context) == 0) {
        p->result = PyObject_Call(p->fn, p->args, p->kwargs);
        (void)PyContext_Exit(p->context);
    }
    if (p->result == NULL) {
        p->exception = ol_fetch_exception();
    }
    leave_python();
    return 0;
}

/* ---- offloop.batched ------------------------------------------------ */

typedef struct {
    PyObject *owner; /* the offloop.batched wrapper: the batch key */
    PyObject *fn, *item;
    PyObject *result, *exception; /* set by the leader's worker, GIL held */
} batched_payload;

#define BATCHED(job) OL_PAYLOAD((ol_pyjob *)(job), batched_payload)

/* GIL held: give every member not cancelled its result, or `exc`. */
static void
batched_call(ol_job_t *leader)
{
    batched_payload *lp = BATCHED(leader);
    PyObject *items = PyList_New(0), *out = NULL, *exc = NULL;
    Py_ssize_t n = 0;
    ol_job_t *m;

    for (m = leader; items != NULL && m != NULL; m = m->batch_next) {
        if (!ol_job_cancelled(m) && PyList_Append(items, BATCHED(m)->item)) {
            Py_CLEAR(items);
        }
    }
    if (items != NULL) {
        out = PyObject_CallOneArg(lp->fn, items);
    }
    if (out != NULL) {
        n = PyList_GET_SIZE(items);
        PyObject *seq = PySequence_Fast(
            out, "offloop.batched: fn must return a sequence of results");
        Py_SETREF(out, seq);
        if (out != NULL && PySequence_Fast_GET_SIZE(out) != n) {
            PyErr_Format(PyExc_ValueError,
                         "offloop.batched: fn returned %zd results for %zd "
                         "inputs",
                         PySequence_Fast_GET_SIZE(out), n);
            Py_CLEAR(out);
        }
    }
    if (out == NULL) {
        exc = ol_fetch_exception();
    }
    n = 0;
    for (m = leader; m != NULL; m = m->batch_next) {
        if (ol_job_cancelled(m)) {
            continue;
        }
        if (exc != NULL) {
            BATCHED(m)->exception = Py_NewRef(exc);
        }
        else {
            BATCHED(m)->result =
                Py_NewRef(PySequence_Fast_GET_ITEM(out, n++));
        }
    }
    Py_XDECREF(items);
    Py_XDECREF(out);
    Py_XDECREF(exc);
}

static int
batched_work(ol_job_t *core, size_t chunk)
{
    int rc = enter_python(core);

    if (rc != 0) {
        return rc;
    }
    batched_call(core);
    leave_python();
    return 0;
}

static PyObject *
batched_complete(ol_pyjob *job)
{
    batched_payload *p = OL_PAYLOAD(job, batched_payload);

    if (p->exception != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(p->exception), p->exception);
        return NULL;
    }
    if (p->result == NULL) { /* cancelled before the call: not wanted */
        PyErr_SetString(PyExc_RuntimeError, ol_strerror(OL_ECANCELED));
        return NULL;
    }
    return Py_NewRef(p->result);
}

static void
batched_release(ol_pyjob *job)
{
    batched_payload *p = OL_PAYLOAD(job, batched_payload);

    Py_CLEAR(p->owner);
    Py_CLEAR(p->fn);
    Py_CLEAR(p->item);
    Py_CLEAR(p->result);
    Py_CLEAR(p->exception);
}

static const ol_jobkind batched_kind = {.name = "batched",
                                        .work = batched_work,
                                        .complete = batched_complete,
                                        .release = batched_release,
                                        .unstoppable = 1};

/* _run_batched(owner, fn, max_batch, item): owner and its fields were
 * checked by offloop.batched. */
static ol_pyjob *
batched_job(PyObject *const *args, Py_ssize_t nargs)
{
    ol_pyjob *job;
    batched_payload *p;
    size_t max;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "_run_batched() takes owner, fn, max_batch, item");
        return NULL;
    }
    max = PyLong_AsSize_t(args[2]);
    if (max == (size_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    job = ol_pyjob_new(&batched_kind, sizeof(batched_payload), 1);
    if (job == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, batched_payload);
    p->owner = Py_NewRef(args[0]);
    p->fn = Py_NewRef(args[1]);
    p->item = Py_NewRef(args[3]);
    job->core.batch.tag = &batched_kind;
    job->core.batch.words[0] = (uint64_t)(uintptr_t)args[0];
    job->core.batch.max = max;
    return job;
}

static PyObject *
run_batched(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ol_pyjob *job = batched_job(args, nargs);

    return job ? ol_submit_async(ol_get_state(module), job, 0) : NULL;
}

static PyObject *
run_batched_blocking(PyObject *module, PyObject *const *args,
                     Py_ssize_t nargs)
{
    ol_pyjob *job = batched_job(args, nargs);

    return job ? ol_submit_blocking(ol_get_state(module), job, 0) : NULL;
}

/* Worker exit hook: free the thread state, unless the interpreter is
 * going away (then it is left to the process exit).  The same handshake
 * as enter_python(): counted in `inside` before `closing` is read, so
 * ol_run_shutdown() either waits for this or this sees `closing`.  (A
 * retiring worker runs this after it left the pool's count of live
 * workers, so the pool's own shutdown wait does not cover it.) */
/* Tests (_hold_worker_exit): hold a retiring worker just before it takes
 * its thread state back, so that a test can look at the handshake then. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t opened;
    int armed;   /* (lock) */
    int waiting; /* (lock) workers held */
} exit_gate = {.lock = PTHREAD_MUTEX_INITIALIZER,
               .opened = PTHREAD_COND_INITIALIZER};

static void
pass_exit_gate(void)
{
    pthread_mutex_lock(&exit_gate.lock);
    exit_gate.waiting++;
    while (exit_gate.armed) {
        pthread_cond_wait(&exit_gate.opened, &exit_gate.lock);
    }
    exit_gate.waiting--;
    pthread_mutex_unlock(&exit_gate.lock);
}

static void
run_thread_exit(void)
{
    if (worker_tstate == NULL) {
        return;
    }
    atomic_fetch_add(&inside, 1);
    if (!atomic_load(&closing)) {
        pass_exit_gate();
        PyEval_RestoreThread(worker_tstate);
        PyThreadState_Clear(worker_tstate);
        PyThreadState_DeleteCurrent();
        worker_tstate = NULL;
    }
    atomic_fetch_sub(&inside, 1);
}

static PyObject *
run_complete(ol_pyjob *job)
{
    run_payload *p = OL_PAYLOAD(job, run_payload);

    if (p->exception != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(p->exception), p->exception);
        return NULL;
    }
    return Py_NewRef(p->result);
}

static void
run_release(ol_pyjob *job)
{
    run_payload *p = OL_PAYLOAD(job, run_payload);

    Py_CLEAR(p->fn);
    Py_CLEAR(p->args);
    Py_CLEAR(p->kwargs);
    Py_CLEAR(p->context);
    Py_CLEAR(p->result);
    Py_CLEAR(p->exception);
}

static const ol_jobkind run_kind = {.name = "run",
                                    .work = run_work,
                                    .complete = run_complete,
                                    .release = run_release,
                                    .unstoppable = 1};

static ol_pyjob *
run_job(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    ol_pyjob *job;
    run_payload *p;

    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "run() missing required argument: 'fn'");
        return NULL;
    }
    if (!PyCallable_Check(args[0])) {
        PyErr_Format(PyExc_TypeError,
                     "run(): fn must be callable, not %.100s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    job = ol_pyjob_new(&run_kind, sizeof(run_payload), 1);
    if (job == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, run_payload);
    p->fn = Py_NewRef(args[0]);
    p->args = PyTuple_New(nargs - 1);
    p->context = PyContext_CopyCurrent();
    if (p->args == NULL || p->context == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(p->args, i - 1, Py_NewRef(args[i]));
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        p->kwargs = PyDict_New();
        if (p->kwargs == NULL) {
            goto error;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyDict_SetItem(p->kwargs, PyTuple_GET_ITEM(kwnames, i),
                               args[nargs + i]) < 0) {
                goto error;
            }
        }
    }
    return job;

error:
    ol_pyjob_free(job);
    return NULL;
}

static PyObject *
run(PyObject *module, PyObject *const *args, size_t nargsf,
    PyObject *kwnames)
{
    ol_pyjob *job = run_job(args, PyVectorcall_NARGS(nargsf), kwnames);

    return job ? ol_submit_async(ol_get_state(module), job, 0) : NULL;
}

static PyObject *
run_blocking(PyObject *module, PyObject *const *args, size_t nargsf,
             PyObject *kwnames)
{
    ol_pyjob *job = run_job(args, PyVectorcall_NARGS(nargsf), kwnames);

    return job ? ol_submit_blocking(ol_get_state(module), job, 0) : NULL;
}

double
ol_run_shutdown(double timeout)
{
    struct timespec slice = {0, 1000000L};
    double left = timeout;

    atomic_store(&closing, 1);
    Py_BEGIN_ALLOW_THREADS
    while (atomic_load(&inside) > 0 && left > 0) {
        nanosleep(&slice, NULL); /* bounded poll at exit, not a test sync */
        left -= 0.001;
    }
    Py_END_ALLOW_THREADS
    return left > 0 ? left : 0;
}

/* In a child after fork(): the parent's workers are not here. */
static void
after_fork_child(void)
{
    atomic_store(&inside, 0);
    atomic_store(&closing, 0);
}

static void
register_fork_handler(void)
{
    (void)pthread_atfork(NULL, NULL, after_fork_child);
}

int
ol_run_module_init(PyObject *module)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    interp = PyInterpreterState_Get();
    ol_pool_set_thread_exit_hook(run_thread_exit);
    (void)pthread_once(&once, register_fork_handler);
    return 0;
}

/* _hold_worker_exit(hold): arm or open the gate; returns the workers held
 * at it and the workers counted inside the exit handshake, as a tuple. */
static PyObject *
hold_worker_exit(PyObject *module, PyObject *arg)
{
    int hold = PyObject_IsTrue(arg), waiting;

    if (hold < 0) {
        return NULL;
    }
    pthread_mutex_lock(&exit_gate.lock);
    exit_gate.armed = hold;
    waiting = exit_gate.waiting;
    pthread_cond_broadcast(&exit_gate.opened);
    pthread_mutex_unlock(&exit_gate.lock);
    return Py_BuildValue("(ii)", waiting, atomic_load(&inside));
}

PyMethodDef ol_run_methods[] = {
    {"_hold_worker_exit", hold_worker_exit, METH_O,
     "_hold_worker_exit($module, hold, /)\n--\n\nHold retiring workers "
     "before they take their thread state back (True) or let them go "
     "(False); returns (workers held, workers inside).  Tests only."},
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL | METH_KEYWORDS,
     "run($module, fn, /, *args, **kwargs)\n--\n\n"
     "Call fn(*args, **kwargs) on the pool; return an awaitable future."},
    {"run_blocking", (PyCFunction)(void (*)(void))run_blocking,
     METH_FASTCALL | METH_KEYWORDS,
     "run_blocking($module, fn, /, *args, **kwargs)\n--\n\n"
     "Call fn(*args, **kwargs) on the pool and wait for the result."},
    {"_run_batched", (PyCFunction)(void (*)(void))run_batched, METH_FASTCALL,
     "_run_batched($module, owner, fn, max_batch, item, /)\n--\n\n"
     "One call of an offloop.batched wrapper: an awaitable future."},
    {"_run_batched_blocking", (PyCFunction)(void (*)(void))run_batched_blocking,
     METH_FASTCALL,
     "_run_batched_blocking($module, owner, fn, max_batch, item, /)\n--\n\n"
     "One call of an offloop.batched wrapper, waited for."},
    {NULL, NULL, 0, NULL},
};

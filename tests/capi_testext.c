/* capi_testext: a test-only extension that drives include/offloop.h.
 *
 * tests/test_capi.py compiles it with the C compiler Python was built
 * with and imports it from a temporary folder.  It submits jobs that
 * behave and jobs that misbehave (complete returning NULL without an
 * exception, release raising, execute failing...), jobs that wait on a
 * gate the test opens, and counts what ran, so that the tests can check
 * that release(ctx) runs exactly once on every path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <offloop.h>

#include <stdatomic.h>
#include <string.h>
#include <time.h>

enum {
    MODE_OK,
    MODE_NULL_NOEXC,
    MODE_RESULT_WITH_EXC,
    MODE_COMPLETE_RAISES,
    MODE_RELEASE_RAISES,
    MODE_EXECUTE_FAILS,
    MODE_NO_COMPLETE,
    MODE_NULL_EXECUTE,
    MODE_GATED,   /* execute waits for the gate (or a cancel) */
    MODE_STUBBORN /* execute ignores cancel, for `seconds` */
};

static const char *mode_names[] = {
    "ok",         "null_noexc",      "result_with_exc", "complete_raises",
    "release_raises", "execute_fails", "no_complete",   "null_execute",
    "gated",      "stubborn",        NULL};

typedef struct {
    int mode;
    double seconds;
    int result;
    int saw_cancel;
    size_t nchunks;
    unsigned char *hits; /* per chunk: times it ran */
} ctx_t;

static atomic_int gate;          /* opened by the test */
static atomic_int started;       /* executes entered */
static atomic_int cancels_seen;  /* executes that saw offloop_cancelled */
static Py_ssize_t live;          /* contexts not yet released (GIL) */
static Py_ssize_t releases;      /* release calls (GIL) */
static Py_ssize_t double_releases; /* release of a freed ctx (GIL) */

static void
sleep_ms(void)
{
    struct timespec ms = {0, 1000000L};
    nanosleep(&ms, NULL);
}

static double
now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int
execute(void *p, const offloop_cancel_t *cancel)
{
    ctx_t *ctx = p;
    double deadline = now() + ctx->seconds;

    atomic_fetch_add(&started, 1);
    switch (ctx->mode) {
    case MODE_EXECUTE_FAILS:
        return 7;
    case MODE_GATED:
        /* The test opens the gate or cancels; 30 s is a safety net. */
        while (!atomic_load(&gate) && now() < deadline) {
            if (offloop_cancelled(cancel)) {
                ctx->saw_cancel = 1;
                atomic_fetch_add(&cancels_seen, 1);
                return 1;
            }
            sleep_ms();
        }
        break;
    case MODE_STUBBORN:
        while (now() < deadline) {
            sleep_ms();
        }
        break;
    default:
        break;
    }
    ctx->result = 42;
    return 0;
}

static int
execute_chunk(void *p, size_t chunk, const offloop_cancel_t *cancel)
{
    ctx_t *ctx = p;

    atomic_fetch_add(&started, 1);
    ctx->hits[chunk]++; /* chunks write disjoint bytes */
    return 0;
}

static PyObject *
complete(void *p)
{
    ctx_t *ctx = p;
    PyObject *res;

    switch (ctx->mode) {
    case MODE_NULL_NOEXC:
        return NULL;
    case MODE_RESULT_WITH_EXC:
        PyErr_SetString(PyExc_ValueError, "left set");
        return PyLong_FromLong(1);
    case MODE_COMPLETE_RAISES:
        PyErr_SetString(PyExc_ValueError, "from complete");
        return NULL;
    default:
        break;
    }
    if (ctx->hits != NULL) {
        res = PyList_New((Py_ssize_t)ctx->nchunks);
        for (size_t i = 0; res != NULL && i < ctx->nchunks; i++) {
            PyList_SET_ITEM(res, (Py_ssize_t)i, PyLong_FromLong(ctx->hits[i]));
        }
        return res;
    }
    return PyLong_FromLong(ctx->result);
}

static void
release(void *p)
{
    ctx_t *ctx = p;

    releases++;
    if (ctx->mode < 0) {
        double_releases++;
        return; /* poisoned: released twice */
    }
    if (ctx->mode == MODE_RELEASE_RAISES) {
        PyErr_SetString(PyExc_KeyError, "from release");
    }
    ctx->mode = -1;
    free(ctx->hits);
    /* Poison, and leak on purpose: a second release must be seen, not be a
     * double free. */
    live--;
}

static ctx_t *
new_ctx(int mode, double seconds)
{
    ctx_t *ctx = calloc(1, sizeof(*ctx));

    if (ctx == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    ctx->mode = mode;
    ctx->seconds = seconds;
    live++;
    return ctx;
}

static PyObject *
submit(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"mode", "blocking", "seconds", NULL};
    const char *name;
    int blocking = 0, mode = -1;
    double seconds = 30.0;
    ctx_t *ctx;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|pd", kwlist, &name,
                                     &blocking, &seconds)) {
        return NULL;
    }
    for (int i = 0; mode_names[i] != NULL; i++) {
        if (strcmp(name, mode_names[i]) == 0) {
            mode = i;
        }
    }
    if (mode < 0) {
        return PyErr_Format(PyExc_ValueError, "unknown mode %s", name);
    }
    ctx = new_ctx(mode, seconds);
    if (ctx == NULL) {
        return NULL;
    }
    offloop_execute_fn ex = mode == MODE_NULL_EXECUTE ? NULL : execute;
    offloop_complete_fn co = mode == MODE_NO_COMPLETE ||
                                     mode == MODE_EXECUTE_FAILS
                                 ? NULL
                                 : complete;
    return blocking ? offloop_submit_blocking(ex, co, release, ctx)
                    : offloop_submit(ex, co, release, ctx);
}

static PyObject *
chunks(PyObject *module, PyObject *args)
{
    Py_ssize_t n;
    int blocking = 0;
    ctx_t *ctx;

    if (!PyArg_ParseTuple(args, "n|p", &n, &blocking)) {
        return NULL;
    }
    ctx = new_ctx(MODE_OK, 0);
    if (ctx == NULL) {
        return NULL;
    }
    ctx->nchunks = (size_t)n;
    ctx->hits = calloc(n > 0 ? (size_t)n : 1, 1);
    if (ctx->hits == NULL) {
        release(ctx);
        return PyErr_NoMemory();
    }
    return blocking ? offloop_submit_chunks_blocking(ctx->nchunks,
                                                     execute_chunk, complete,
                                                     release, ctx)
                    : offloop_submit_chunks(ctx->nchunks, execute_chunk,
                                            complete, release, ctx);
}

/* Batchable jobs: the batch's execute records its size in every ctx
 * (result = value * 10 + n, with the batch size n < 10 in the tests) and
 * fails the whole batch if any ctx asks for it. */
static atomic_int batch_runs; /* execute_batch calls */

static int
execute_batch(void *const *ctxs, size_t n, const offloop_cancel_t *cancel)
{
    int fail = 0;

    atomic_fetch_add(&batch_runs, 1);
    for (size_t i = 0; i < n; i++) {
        fail |= ((ctx_t *)ctxs[i])->mode == MODE_EXECUTE_FAILS;
    }
    for (size_t i = 0; i < n; i++) {
        ctx_t *ctx = ctxs[i];
        ctx->result = fail ? -9 : (int)(ctx->seconds * 10) + (int)n;
    }
    return fail ? 9 : 0;
}

static PyObject *
batch_complete(void *p)
{
    ctx_t *ctx = p;

    if (ctx->result < 0) { /* the batch failed: complete still runs */
        return PyErr_Format(PyExc_RuntimeError, "batch failed (%d)",
                            ctx->result);
    }
    return PyLong_FromLong(ctx->result);
}

/* batch(value, key, blocking=False, fail=False) */
static PyObject *
batch(PyObject *module, PyObject *args)
{
    int value, blocking = 0, fail = 0;
    unsigned long long key;
    ctx_t *ctx;

    if (!PyArg_ParseTuple(args, "iK|pp", &value, &key, &blocking, &fail)) {
        return NULL;
    }
    ctx = new_ctx(fail ? MODE_EXECUTE_FAILS : MODE_OK, value);
    if (ctx == NULL) {
        return NULL;
    }
    /* A failed batch has no complete callback: RuntimeError names the
     * execute_batch function and the code. */
    offloop_complete_fn co = fail ? NULL : batch_complete;
    return blocking ? offloop_submit_batch_blocking(execute_batch, key, co,
                                                    release, ctx)
                    : offloop_submit_batch(execute_batch, key, co, release,
                                           ctx);
}

/* offloop_submit() in a file whose offloop_import() never ran. */
static PyObject *
submit_unimported(PyObject *module, PyObject *unused)
{
    const offloop_capi *saved = offloop__api;
    PyObject *res;
    ctx_t *ctx = new_ctx(MODE_OK, 0);

    if (ctx == NULL) {
        return NULL;
    }
    offloop__api = NULL;
    res = offloop_submit(execute, complete, release, ctx);
    offloop__api = saved;
    return res;
}

static PyObject *
set_gate(PyObject *module, PyObject *arg)
{
    atomic_store(&gate, PyObject_IsTrue(arg));
    Py_RETURN_NONE;
}

static PyObject *
counters(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("{s:n,s:n,s:n,s:i,s:i,s:i}", "live", live,
                         "releases", releases, "double_releases",
                         double_releases, "started", atomic_load(&started),
                         "cancels_seen", atomic_load(&cancels_seen),
                         "batch_runs", atomic_load(&batch_runs));
}

static PyMethodDef methods[] = {
    {"submit", (PyCFunction)(void (*)(void))submit,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"chunks", chunks, METH_VARARGS, NULL},
    {"batch", batch, METH_VARARGS, NULL},
    {"submit_unimported", submit_unimported, METH_NOARGS, NULL},
    {"set_gate", set_gate, METH_O, NULL},
    {"counters", counters, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static int
testext_exec(PyObject *module)
{
    return offloop_import();
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, testext_exec},
    {0, NULL},
};

static PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, .m_name = "capi_testext", .m_size = 0,
    .m_methods = methods, .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_capi_testext(void)
{
    return PyModuleDef_Init(&moddef);
}

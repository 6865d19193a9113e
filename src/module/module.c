/* offloop._core: module state, types, and the pool's Python face
 * (configure, stats, shutdown).  Multi-phase init (PEP 489) with heap
 * types (PEP 630).
 */
#include "binding.h"

/* ---- configure, stats, shutdown ------------------------------------ */

/* An int >= minimum, or None (-> *out untouched, returns 0).  An int is
 * whatever operator.index() takes (numpy integers, __index__), except
 * bool, which reads as a mistake. */
static int
parse_count(PyObject *obj, const char *name, long long minimum,
            unsigned long long *out)
{
    PyObject *idx;
    long long v;

    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    idx = PyBool_Check(obj) ? NULL : PyNumber_Index(obj);
    if (idx == NULL) {
        if (!PyBool_Check(obj) && !PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1; /* __index__ raised something else: keep it */
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "configure(): %s must be an int or None, not %.100s",
                     name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    v = PyLong_AsLongLong(idx);
    Py_DECREF(idx);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        v = -1; /* too large either way */
    }
    if (v < minimum || v > (long long)UINT32_MAX * 1024) {
        PyErr_Format(PyExc_ValueError,
                     "configure(): %s must be an int >= %lld or None, got %R",
                     name, minimum, obj);
        return -1;
    }
    *out = (unsigned long long)v;
    return 0;
}

PyDoc_STRVAR(configure_doc,
             "configure($module, /, threads=None, max_queue=None, *, "
             "max_batch=None)\n--\n\n"
             "Set the pool size (None: one thread per CPU), the queue "
             "bound (None: unbounded) and the most calls one coalesced "
             "run may serve (None: 64; 1 turns coalescing off).");

static PyObject *
configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"threads", "max_queue", "max_batch", NULL};
    PyObject *threads_obj = NULL, *max_queue_obj = NULL;
    PyObject *max_batch_obj = NULL;
    unsigned long long threads = ol_default_threads(), max_queue = 0;
    unsigned long long max_batch = OL_DEFAULT_MAX_BATCH;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO$O:configure", kwlist,
                                     &threads_obj, &max_queue_obj,
                                     &max_batch_obj)) {
        return NULL;
    }
    if (parse_count(threads_obj, "threads", 1, &threads) < 0 ||
        parse_count(max_queue_obj, "max_queue", 1, &max_queue) < 0 ||
        parse_count(max_batch_obj, "max_batch", 1, &max_batch) < 0) {
        return NULL;
    }
    if (max_batch > OL_MAX_BATCH_LIMIT) {
        PyErr_Format(PyExc_ValueError,
                     "configure(): max_batch must be at most %d, got %R",
                     OL_MAX_BATCH_LIMIT, max_batch_obj);
        return NULL;
    }
    if (threads > 4096) {
        PyErr_Format(PyExc_ValueError,
                     "configure(): threads must be at most 4096, got %R",
                     threads_obj);
        return NULL;
    }
    if (ol_pool_configure((unsigned)threads, (size_t)max_queue) < 0 ||
        ol_pool_set_max_batch((size_t)max_batch) < 0) {
        return ol_set_pyerr(ol_get_state(module), OL_EINVAL);
    }
    Py_RETURN_NONE;
}

static int
put(PyObject *d, const char *key, unsigned long long value)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    int rc = v ? PyDict_SetItemString(d, key, v) : -1;

    Py_XDECREF(v);
    return rc;
}

PyDoc_STRVAR(stats_doc,
             "stats($module, /)\n--\n\n"
             "Counters of the pool and of every loop, as a dict.");

static PyObject *
stats(PyObject *module, PyObject *unused)
{
    ol_state *st = ol_get_state(module);
    ol_pool_stats_t ps;
    PyObject *d;

    ol_drain_orphans();
    ol_ports_sweep(st, 0);
    ol_pool_stats(&ps);
    d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    if (put(d, "threads", ps.threads) < 0 ||
        put(d, "threads_alive", ps.threads_alive) < 0 ||
        put(d, "max_queue", ps.max_queue) < 0 ||
        put(d, "queued", ps.queued) < 0 ||
        put(d, "running", ps.running) < 0 ||
        put(d, "submitted", ol_count.submitted) < 0 ||
        put(d, "started", ps.started) < 0 ||
        put(d, "chunks", ps.chunks) < 0 ||
        put(d, "batches", ps.batches) < 0 ||
        put(d, "batched", ps.batched) < 0 ||
        put(d, "max_batch", ps.max_batch) < 0 ||
        put(d, "completed", ol_count.completed) < 0 ||
        put(d, "failed", ol_count.failed) < 0 ||
        put(d, "cancelled", ol_count.cancelled) < 0 ||
        put(d, "dropped", ol_count.dropped) < 0 ||
        put(d, "inline", ol_count.inline_runs) < 0 ||
        put(d, "wakeups", ol_count.wakeups) < 0 ||
        put(d, "resolved", ol_count.resolved) < 0 ||
        put(d, "loops", (unsigned long long)PyDict_GET_SIZE(st->ports)) < 0 ||
        put(d, "live_jobs", (unsigned long long)ol_count.live) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static PyObject *
shutdown(PyObject *module, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    size_t dropped = 0;
    int rc;

    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    /* The one exit sequence, one deadline: no worker takes the GIL again
     * (run.c), the pool stops (queued jobs forgotten), then the C API's
     * contexts no worker uses are released. */
    timeout = ol_run_shutdown(timeout);
    Py_BEGIN_ALLOW_THREADS
    rc = ol_pool_shutdown((long)(timeout * 1000), &dropped);
    Py_END_ALLOW_THREADS
    ol_count.dropped += dropped;
    ol_capi_at_exit();
    return PyBool_FromLong(rc == 0);
}

/* In gc.callbacks: at the start of every collection, let go of the
 * running-loop cache (port_type.c's running_loop()), the one strong
 * reference offloop keeps to a loop that is no longer running, so that a
 * loop dropped without close() is collectable.  Refilled by the next call
 * at the cost of one asyncio._get_running_loop(). */
static PyObject *
gc_started(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ol_state *st = ol_get_state(module);

    st->loop_entry_loop = NULL;
    Py_CLEAR(st->loop_entry);
    Py_RETURN_NONE;
}

static int
watch_gc(PyObject *module)
{
    static PyMethodDef def = {"_gc_started", (PyCFunction)(void (*)(void))
                              gc_started, METH_FASTCALL,
                              "gc callback: forget the running loop."};
    PyObject *gc = PyImport_ImportModule("gc");
    PyObject *callbacks = gc ? PyObject_GetAttrString(gc, "callbacks") : NULL;
    PyObject *fn = callbacks ? PyCFunction_NewEx(&def, module, NULL) : NULL;
    int rc = fn ? PyList_Append(callbacks, fn) : -1;

    Py_XDECREF(fn);
    Py_XDECREF(callbacks);
    Py_XDECREF(gc);
    return rc;
}

static PyMethodDef core_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure,
     METH_VARARGS | METH_KEYWORDS, configure_doc},
    {"stats", stats, METH_NOARGS, stats_doc},
    {"_shutdown", shutdown, METH_O,
     "_shutdown($module, timeout, /)\n--\n\nStop the pool (atexit)."},
    {NULL, NULL, 0, NULL},
};

/* ---- module -------------------------------------------------------- */

static int
add_methods(PyObject *module, PyMethodDef *defs)
{
    return PyModule_AddFunctions(module, defs);
}

#define INTERN(field, text)                                  \
    do {                                                     \
        if ((st->field = PyUnicode_InternFromString(text)) == NULL) { \
            return -1;                                       \
        }                                                    \
    } while (0)

static int
import_asyncio(ol_state *st)
{
    PyObject *events = PyImport_ImportModule("asyncio.events");
    PyObject *exceptions = PyImport_ImportModule("asyncio.exceptions");
    int rc = -1;

    if (events == NULL || exceptions == NULL) {
        goto done;
    }
    st->get_running_loop =
        PyObject_GetAttrString(events, "_get_running_loop");
    st->CancelledError =
        PyObject_GetAttrString(exceptions, "CancelledError");
    st->InvalidStateError =
        PyObject_GetAttrString(exceptions, "InvalidStateError");
    if (st->get_running_loop && st->CancelledError && st->InvalidStateError) {
        rc = 0;
    }
done:
    Py_XDECREF(events);
    Py_XDECREF(exceptions);
    return rc;
}

/* The pool, its workers' thread states, the shutdown flag and the fork
 * handlers are process-wide and belong to the main interpreter: a second
 * interpreter importing offloop would overwrite them (its workers would
 * run the main interpreter's callables in the wrong interpreter, and its
 * exit would shut the pool down for everyone).  Refuse, before anything
 * is touched; the main interpreter is then never affected. */
static int
refuse_subinterpreters(void)
{
    if (PyInterpreterState_Get() == PyInterpreterState_Main()) {
        return 0;
    }
    PyErr_SetString(PyExc_ImportError,
                    "offloop cannot be imported in a subinterpreter: its "
                    "thread pool is process-wide and serves the main "
                    "interpreter only");
    return -1;
}

static int
core_exec(PyObject *module)
{
    ol_state *st = ol_get_state(module);

    if (refuse_subinterpreters() < 0) {
        return -1;
    }
#ifdef OL_PORTABLE
    /* Tests: the build stands for the non-Linux paths (pipe, portable
     * waiter, no worker priority). */
    if (PyModule_AddIntConstant(module, "_portable", 1) < 0) {
#else
    if (PyModule_AddIntConstant(module, "_portable", 0) < 0) {
#endif
        return -1;
    }

    INTERN(str_add_reader, "add_reader");
    INTERN(str_remove_reader, "remove_reader");
    INTERN(str_call_soon, "call_soon");
    INTERN(str_is_closed, "is_closed");
    INTERN(str_set_result, "set_result");
    INTERN(str_set_exception, "set_exception");
    INTERN(str_cancel, "cancel");
    INTERN(str_running_loop_key, "__asyncio_running_event_loop__");
    st->kw_loop = Py_BuildValue("(s)", "loop");
    st->ports = PyDict_New();
    if (st->kw_loop == NULL || st->ports == NULL) {
        return -1;
    }
    if (import_asyncio(st) < 0 || ol_future_init_type(module, st) < 0 ||
        ol_port_init_type(module, st) < 0 ||
        add_methods(module, core_methods) < 0 ||
        add_methods(module, ol_testing_methods) < 0 ||
        add_methods(module, ol_run_methods) < 0 ||
        add_methods(module, ol_vector_methods) < 0 ||
        add_methods(module, ol_vector_testing_methods) < 0 ||
        ol_run_module_init(module) < 0 || ol_capi_init(module) < 0 ||
        watch_gc(module) < 0) {
        return -1;
    }
    return 0;
}

#undef INTERN

static int
core_traverse(PyObject *module, visitproc visit, void *arg)
{
    ol_state *st = ol_get_state(module);

    Py_VISIT(st->PortType);
    Py_VISIT(st->FutureType);
    Py_VISIT(st->AsyncioFuture);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->CancelledError);
    Py_VISIT(st->InvalidStateError);
    Py_VISIT(st->ports);
    Py_VISIT(st->loop_entry);
    Py_VISIT(st->np_empty);
    Py_VISIT(st->np_float32);
    Py_VISIT(st->np_int64);
    return 0;
}

static int
core_clear(PyObject *module)
{
    ol_state *st = ol_get_state(module);

    st->last_loop = NULL;
    st->last_port = NULL;
    st->loop_entry_loop = NULL;
    Py_CLEAR(st->loop_entry);
    if (st->ports != NULL) {
        ol_ports_sweep(st, 1); /* while the state they need is still here */
    }
    Py_CLEAR(st->ports);
    Py_CLEAR(st->PortType);
    Py_CLEAR(st->FutureType);
    Py_CLEAR(st->AsyncioFuture);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->CancelledError);
    Py_CLEAR(st->InvalidStateError);
    Py_CLEAR(st->kw_loop);
    Py_CLEAR(st->str_add_reader);
    Py_CLEAR(st->str_remove_reader);
    Py_CLEAR(st->str_call_soon);
    Py_CLEAR(st->str_is_closed);
    Py_CLEAR(st->str_set_result);
    Py_CLEAR(st->str_set_exception);
    Py_CLEAR(st->str_cancel);
    Py_CLEAR(st->str_running_loop_key);
    Py_CLEAR(st->np_empty);
    Py_CLEAR(st->np_float32);
    Py_CLEAR(st->np_int64);
    return 0;
}

static void
core_free(void *module)
{
    (void)core_clear((PyObject *)module);
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#ifdef Py_mod_multiple_interpreters /* 3.12+: refused before exec, too */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

PyModuleDef ol_moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "offloop._core",
    .m_doc = "offloop's C core: the pool, ports and native jobs.",
    .m_size = sizeof(ol_state),
    .m_methods = NULL,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&ol_moduledef);
}

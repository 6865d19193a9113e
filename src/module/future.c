/* offloop._core.Future: an asyncio.Future whose cancel() reaches the job.
 *
 * A subclass of the C asyncio.Future (_asyncio.Future), made at import time
 * from the base's own size, with one extra field: the job the future waits
 * for.  Only the loop thread touches that field (futures are single-thread
 * objects): it is set at submit, cleared when the job is resolved or when
 * the future is cancelled.  Cancelling a future whose job is still queued
 * ends the job on the spot; a running job sees the cancel flag at its next
 * chunk, and its late result is discarded by ol_resolve().
 *
 * A future subclass keeps Task and gather working unchanged (they accept
 * any asyncio.Future), costs no extra call per job (a done callback would
 * cost one loop callback per job), and needs no Python-level object.
 *
 * The interpreter specialises a call like fut.done() only when the
 * method's descriptor belongs to the object's exact type; on an inherited
 * method every such call in gather() and Task takes the generic path, 1,400
 * instructions per job in a gather of no-op jobs.  So the type gets its own
 * descriptors for the methods asyncio calls per future, each a copy of the
 * base's entry: the same C function, called with the same convention;
 * for a METH_METHOD one, a forwarder through the base's descriptor
 * (below).
 *
 * DESIGN: what this file assumes of _asyncio.Future, checked against
 * CPython 3.14's Modules/_asynciomodule.c (the 3.14 line, with
 * fut_awaited_by, fut_is_task and the managed dict and weakref flags),
 * its What's New and asyncio-eventloop.rst, and against the 3.11, 3.12
 * and 3.13 interpreters CI runs:
 *
 * - Sizes.  3.14 adds fields to FutureObj (fut_awaited_by,
 *   fut_awaited_by_is_set, fut_is_task, bit fields at the end) and keeps
 *   the dict and weak references outside it (Py_TPFLAGS_MANAGED_DICT,
 *   Py_TPFLAGS_MANAGED_WEAKREF).  Nothing here names a field or a size of
 *   the base: our one field goes at the base's tp_basicsize read at
 *   import, rounded up to a pointer's alignment, and tp_itemsize is
 *   checked to be 0 (a variable-size base would put items there).
 * - Methods.  In 3.14 every Future method runs inside a per-object
 *   critical section that the Argument Clinic wrapper takes (a no-op with
 *   the GIL, a lock in free-threaded builds).  We never read or write a
 *   Future field: cancel() calls the base's cancel through the base type,
 *   results go in through set_result()/set_exception() looked up on the
 *   object (src/module/jobs.c), so every access takes that lock.
 * - Defining class.  exception, set_result, set_exception,
 *   add_done_callback, remove_done_callback, cancel and get_loop are
 *   METH_METHOD in 3.12, 3.13 and 3.14: the descriptor passes the class it
 *   belongs to, and the C function reads _asyncio's module state from
 *   that class's module (get_asyncio_state_by_cls).  A copy of such an
 *   entry in our type would hand it offloop._core's state instead: on
 *   3.12 and 3.13, exception() on a cancelled offloop future raised
 *   TypeError and on a pending one SystemError, and add_done_callback()
 *   on a done future ran the callback outside the context it was given
 *   (call_soon's keyword names come from that state, in 3.14 too).
 *   So those get our own METH_FASTCALL entries that call through the
 *   base's descriptor (forward()), which passes _asyncio.Future; the
 *   call on our type still specialises (the interpreter specialises no
 *   METH_METHOD call at all).  Only the other C entries (done, cancelled,
 *   result: METH_NOARGS, finding the state by module def, which walks
 *   the MRO) are copied as they are.  tests/test_future_base.py checks
 *   every base method on our futures against a plain asyncio.Future.
 * - Dealloc and traverse.  3.14's FutureObj_dealloc still calls the
 *   finalizer, untracks, clears weak references, tp_free()s and drops the
 *   type reference itself, and its traverse visits the type: the same
 *   heap-type contract as 3.12, handled by base_is_heap_type.
 * - The loop.  asyncio.get_event_loop() raises RuntimeError in 3.14 where
 *   no loop is set, and Future(loop=None) asks it: ol_future_new() always
 *   passes loop= (the loop the job was submitted from), never None.
 * - The policy system is deprecated in 3.14 (removal planned for 3.16):
 *   nothing in src/ calls get_event_loop_policy() or
 *   set_event_loop_policy().
 */
#include "binding.h"

static Py_ssize_t job_offset; /* our field: the base's size, aligned */
/* The base's dealloc and traverse, kept here: at interpreter exit a future
 * can outlive the module state that also holds the base type. */
static destructor base_dealloc;
static traverseproc base_traverse;
/* A heap-type base (3.12 and later) owns a reference to the type of each
 * of its instances, ours included: its dealloc drops it and its traverse
 * visits it, so neither may be done twice.  A static base (3.11) does
 * neither, and leaves the finalizer to the exact type. */
static int base_is_heap_type;

#define FUTURE_JOB(fut) (*(ol_pyjob **)((char *)(fut) + job_offset))

ol_pyjob *
ol_future_job(PyObject *fut)
{
    return FUTURE_JOB(fut);
}

void
ol_future_detach(PyObject *fut)
{
    FUTURE_JOB(fut) = NULL;
}

PyObject *
ol_future_new(ol_state *st, PyObject *loop, ol_pyjob *job)
{
    PyObject *args[1] = {loop};
    PyObject *fut = PyObject_Vectorcall((PyObject *)st->FutureType, args, 0,
                                        st->kw_loop);

    if (fut != NULL) {
        FUTURE_JOB(fut) = job;
    }
    return fut;
}

PyDoc_STRVAR(Future_cancel_doc,
             "cancel($self, /, msg=None)\n--\n\n"
             "Cancel the future and the native job behind it.\n\n"
             "A queued job never starts; a running one stops at its next "
             "chunk.");

static PyObject *
Future_cancel(PyObject *self, PyObject *const *args, size_t nargsf,
              PyObject *kwnames)
{
    ol_state *st = ol_get_state_by_type(Py_TYPE(self));
    PyObject *base_cancel, *res;

    /* The base decides whether cancelling is possible (not done yet). */
    base_cancel = PyObject_GetAttr((PyObject *)st->AsyncioFuture,
                                   st->str_cancel);
    if (base_cancel == NULL) {
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[3];
    if (nargs + nkw > 1) {
        Py_DECREF(base_cancel);
        PyErr_SetString(PyExc_TypeError,
                        "cancel() takes at most one argument (msg)");
        return NULL;
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        stack[1 + i] = args[i];
    }
    res = PyObject_Vectorcall(base_cancel, stack, 1 + nargs, kwnames);
    Py_DECREF(base_cancel);
    if (res == Py_True) {
        ol_pyjob *job = FUTURE_JOB(self);
        FUTURE_JOB(self) = NULL;
        if (job != NULL && ol_job_cancel(&job->core) == 1) {
            /* The job never started or stopped between chunks: it is
             * ours again, and nobody will deliver it. */
            ol_count.cancelled++;
            ol_pyjob_free(job);
        }
    }
    return res;
}

static void
Future_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);

    if (base_is_heap_type) {
        base_dealloc(self);
        return;
    }
    /* The finalizer reports an exception never retrieved. */
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return; /* resurrected */
    }
    base_dealloc(self);
    Py_DECREF(tp);
}

static int
Future_traverse(PyObject *self, visitproc visit, void *arg)
{
    if (!base_is_heap_type) {
        Py_VISIT(Py_TYPE(self));
    }
    return base_traverse(self, visit, arg);
}

/* What asyncio calls on every future it awaits or gathers. */
static const char *const hot_methods[] = {
    "done", "cancelled", "result", "exception", "get_loop",
    "add_done_callback", "remove_done_callback",
};
#define N_HOT (sizeof(hot_methods) / sizeof(hot_methods[0]))

/* The base's descriptors of the METH_METHOD methods among them, strong
 * references taken at import; forward() calls through them. */
static PyObject *base_descr[N_HOT];

/* Call the base's method `i` on self: the base's descriptor hands its C
 * function _asyncio.Future as the defining class, as it must. */
static PyObject *
forward(size_t i, PyObject *self, PyObject *const *args, size_t nargsf,
        PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8], **stack = small, *res;

    if (n + 1 > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        stack = PyMem_Malloc((size_t)(n + 1) * sizeof(PyObject *));
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    stack[0] = self;
    for (Py_ssize_t k = 0; k < n; k++) {
        stack[1 + k] = args[k];
    }
    res = PyObject_Vectorcall(base_descr[i], stack, 1 + nargs, kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return res;
}

/* One forwarder per entry of hot_methods (only the METH_METHOD ones are
 * used). */
#define FORWARDER(i)                                                     \
    static PyObject *forward_##i(PyObject *self, PyObject *const *args, \
                                 size_t nargsf, PyObject *kwnames)      \
    {                                                                    \
        return forward(i, self, args, nargsf, kwnames);                  \
    }
FORWARDER(0)
FORWARDER(1)
FORWARDER(2)
FORWARDER(3)
FORWARDER(4)
FORWARDER(5)
FORWARDER(6)
#undef FORWARDER
static PyObject *(*const forwarders[])(PyObject *, PyObject *const *,
                                       size_t, PyObject *) = {
    forward_0, forward_1, forward_2, forward_3,
    forward_4, forward_5, forward_6,
};
_Static_assert(sizeof(forwarders) / sizeof(forwarders[0]) == N_HOT,
               "one forwarder per hot method");

/* Filled by ol_future_init_type(): cancel, then the copies and the
 * forwarders. */
static PyMethodDef Future_methods[1 + N_HOT + 1];

static void
fill_methods(PyTypeObject *base)
{
    size_t n = 0;

    Future_methods[n++] = (PyMethodDef){
        "cancel", (PyCFunction)(void (*)(void))Future_cancel,
        METH_FASTCALL | METH_KEYWORDS, Future_cancel_doc};
    for (size_t i = 0; i < N_HOT; i++) {
        PyObject *d = PyDict_GetItemString(base->tp_dict, hot_methods[i]);
        PyMethodDef *def;

        /* Anything but a plain C method stays inherited as it is. */
        if (d == NULL || !Py_IS_TYPE(d, &PyMethodDescr_Type)) {
            continue;
        }
        def = ((PyMethodDescrObject *)d)->d_method;
        if (!(def->ml_flags & METH_METHOD)) {
            Future_methods[n++] = *def; /* same function, same call */
            continue;
        }
        /* A METH_METHOD function must be handed the base as its defining
         * class, which only the base's descriptor does: our own entry
         * (so that the call still specialises) calls through it. */
        Py_XSETREF(base_descr[i], Py_NewRef(d));
        Future_methods[n++] = (PyMethodDef){
            def->ml_name, (PyCFunction)(void (*)(void))forwarders[i],
            METH_FASTCALL | METH_KEYWORDS, def->ml_doc};
    }
    Future_methods[n] = (PyMethodDef){NULL, NULL, 0, NULL};
}

int
ol_future_init_type(PyObject *module, ol_state *st)
{
    PyObject *asyncio_mod = PyImport_ImportModule("_asyncio");
    PyObject *bases = NULL;
    PyType_Slot slots[] = {
        {Py_tp_dealloc, Future_dealloc},
        {Py_tp_traverse, Future_traverse},
        {Py_tp_methods, Future_methods},
        {Py_tp_doc, "An asyncio.Future resolved by an offloop job."},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "offloop._core.Future",
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
                 Py_TPFLAGS_IMMUTABLETYPE,
        .slots = slots,
    };

    if (asyncio_mod == NULL) {
        return -1;
    }
    st->AsyncioFuture =
        (PyTypeObject *)PyObject_GetAttrString(asyncio_mod, "Future");
    Py_DECREF(asyncio_mod);
    if (st->AsyncioFuture == NULL) {
        return -1;
    }
    if (st->AsyncioFuture->tp_itemsize != 0) {
        PyErr_SetString(PyExc_ImportError,
                        "offloop: _asyncio.Future is a variable-size type "
                        "in this Python; cannot subclass it");
        return -1;
    }
    fill_methods(st->AsyncioFuture);
    /* Our field after the base's, aligned for a pointer. */
    job_offset = st->AsyncioFuture->tp_basicsize;
    job_offset = (job_offset + (Py_ssize_t)_Alignof(ol_pyjob *) - 1) &
                 ~((Py_ssize_t)_Alignof(ol_pyjob *) - 1);
    base_dealloc = st->AsyncioFuture->tp_dealloc;
    base_traverse = st->AsyncioFuture->tp_traverse;
    base_is_heap_type =
        PyType_HasFeature(st->AsyncioFuture, Py_TPFLAGS_HEAPTYPE);
    spec.basicsize = (int)(job_offset + sizeof(ol_pyjob *));
    bases = PyTuple_Pack(1, (PyObject *)st->AsyncioFuture);
    if (bases == NULL) {
        return -1;
    }
    st->FutureType =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, bases);
    Py_DECREF(bases);
    if (st->FutureType == NULL) {
        return -1;
    }
    return PyModule_AddType(module, st->FutureType);
}

/* The Port type: one per event loop, the loop's end of a core port.
 *
 * Created the first time a loop submits (on that loop's thread), it
 * registers the core port's fd with loop.add_reader().  Its reader callback
 * takes the whole done-list and resolves every job in one pass.
 *
 * Ownership.  The loop owns its Port (through the reader callback
 * add_reader() keeps); the Port owns the jobs delivered to it and not yet
 * resolved, and the jobs it holds back, and through them their futures,
 * which own the loop.  The garbage collector sees that whole cycle
 * (Port_traverse visits those futures), so a loop dropped without
 * close() while finished jobs wait for it is collected with its Port, its
 * fd and its jobs (dropped, counted), as asyncio.to_thread's would be.
 * Nothing else holds a Port strongly: the registry (loops.c) maps
 * id(loop) to the Port's address, and a Port removes its entry when it is
 * freed; st->last_port is borrowed the same way.  A Port holds only
 * a weak reference to its loop.  A job still queued or running holds its
 * future, so its loop lives until the job is delivered.
 *
 * Ports are released (reader removed first, then the fd closed) when their
 * loop is garbage-collected (weakref callback or the cycle's collection)
 * or found closed by a sweep; a sweep runs whenever a new port is made and
 * from stats(), so a program that makes a loop per test holds at most the
 * ports of loops still open plus the ones closed since the last sweep.
 * Jobs delivered to a released port are dropped (counted, references
 * released, futures untouched).
 *
 * Backpressure: while the pool's queue is at max_queue, the loop's further
 * jobs wait here (held_head, oldest first) and the port registers with the
 * core for a wake-up of its fd when room frees; the reader callback then
 * moves them into the pool.  Only the loop thread touches the held list.
 *
 * After fork(), a child's ports from the parent are stale: their fd and
 * epoll registration are shared with the parent, so the child only closes
 * its copy of the fd, never calls remove_reader, and makes new ports.
 */
#include "port_type.h"

ol_port_t *
ol_port_core(PyObject *port)
{
    return PORT(port)->port;
}

PyObject *
ol__port_loop(OlPortObject *self) /* borrowed, or NULL if gone */
{
    PyObject *loop;

    if (self->loop_ref == NULL) {
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030D0000 /* PyWeakref_GetObject is deprecated */
    if (PyWeakref_GetRef(self->loop_ref, &loop) <= 0) {
        PyErr_Clear();
        return NULL;
    }
    /* Borrowed, as before: whoever keeps the loop alive still does. */
    Py_DECREF(loop);
    return loop;
#else
    loop = PyWeakref_GetObject(self->loop_ref);
    return loop == Py_None ? NULL : loop;
#endif
}

int
ol__loop_is_closed(ol_state *st, PyObject *loop)
{
    PyObject *r = PyObject_CallMethodNoArgs(loop, st->str_is_closed);
    int closed;

    if (r == NULL) {
        PyErr_Clear();
        return 1;
    }
    closed = PyObject_IsTrue(r);
    Py_DECREF(r);
    return closed != 0;
}

static void
drop_held(OlPortObject *self)
{
    while (self->held_head != NULL) {
        ol_pyjob *job = self->held_head;
        self->held_head = (ol_pyjob *)job->core.done_next;
        ol_drop(job);
    }
    self->held_tail = NULL;
}

int
ol_port_holds_jobs(PyObject *op)
{
    return PORT(op)->held_head != NULL;
}

void
ol_port_hold(PyObject *op, ol_pyjob *job)
{
    OlPortObject *self = PORT(op);

    job->core.done_next = NULL;
    if (self->held_tail != NULL) {
        self->held_tail->core.done_next = &job->core;
    }
    else {
        self->held_head = job;
        ol_port_wait_space(self->port);
    }
    self->held_tail = job;
}

/* Move held jobs into the pool while it has room (submit.c decides). */
static void
submit_held(ol_state *st, OlPortObject *self)
{
    int kick = 0;

    while (self->held_head != NULL) {
        ol_pyjob *job = self->held_head;
        ol_pyjob *next = (ol_pyjob *)job->core.done_next;
        int rc = OL_ECANCELED; /* cancelled while held: never starts */

        if (ol_job_wanted(job)) {
            rc = ol_pool_submit_for_port((PyObject *)self, job, &kick);
            if (rc == 0) { /* full again: wait for the next room */
                ol_port_wait_space(self->port);
                break;
            }
        }
        self->held_head = next;
        if (rc < 0) {
            ol_fail_job(st, job, rc);
        }
    }
    if (self->held_head == NULL) {
        self->held_tail = NULL;
    }
    if (kick) {
        ol_kick_later(st, (PyObject *)self, ol__port_loop(self));
    }
}

/* Remove the reader (if the loop can still be asked), close the fd, drop
 * the jobs delivered and not yet resolved. */
void
ol__port_release(ol_state *st, OlPortObject *self)
{
    ol_port_t *port = self->port;
    PyObject *loop = ol__port_loop(self);

    ol__unregister_port(st, self);
    if (port == NULL) {
        return;
    }
    if (st->ports != NULL) {
        drop_held(self);
    }
    self->port = NULL;
    if (st->ports == NULL) {
        /* Interpreter exit, module state already cleared: close the fd,
         * leave the jobs (their memory goes with the process). */
        ol_port_forget(port);
        Py_CLEAR(self->loop_ref);
        return;
    }
    if (self->generation != ol_fork_generation()) {
        ol_port_forget(port); /* the parent's: never touch its epoll */
    }
    else {
        if (loop != NULL && !ol__loop_is_closed(st, loop)) {
            PyObject *fd = PyLong_FromLong(self->fd);
            PyObject *r = fd ? PyObject_CallMethodOneArg(
                                   loop, st->str_remove_reader, fd)
                             : NULL;
            if (r == NULL) {
                PyErr_Clear();
            }
            Py_XDECREF(r);
            Py_XDECREF(fd);
        }
        ol_drop_list(ol_port_close(port));
        ol_port_decref(port);
    }
    Py_CLEAR(self->loop_ref);
}

static PyObject *
Port_on_readable(PyObject *op, PyObject *unused)
{
    OlPortObject *self = PORT(op);
    ol_state *st = ol_get_state_by_type(Py_TYPE(op));
    ol_job_t *list;

    if (self->port == NULL) {
        Py_RETURN_NONE;
    }
    list = ol_port_take(self->port);
    ol_count.wakeups++;
    while (list != NULL) {
        ol_job_t *next = list->done_next;
        ol_resolve(st, (ol_pyjob *)list);
        list = next;
    }
    if (self->held_head != NULL && self->port != NULL) {
        submit_held(st, self);
    }
    if (ol_orphans_pending()) {
        ol_drain_orphans();
    }
    Py_RETURN_NONE;
}

static PyObject *
Port_kick(PyObject *op, PyObject *unused)
{
    PORT(op)->kick_pending = 0;
    ol_pool_kick();
    Py_RETURN_NONE;
}

static PyObject *
Port_loop_gone(PyObject *op, PyObject *weakref)
{
    ol__port_release(ol_get_state_by_type(Py_TYPE(op)), PORT(op));
    Py_RETURN_NONE;
}

int
ol_port_schedule_kick(ol_state *st, PyObject *op, PyObject *loop)
{
    OlPortObject *self = PORT(op);
    PyObject *r;

    if (self->kick_pending) {
        return 0;
    }
    r = PyObject_CallMethodOneArg(loop, st->str_call_soon, self->kick);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    self->kick_pending = 1;
    return 0;
}

PyObject *
ol__port_new(ol_state *st, PyObject *loop, PyObject *key)
{
    OlPortObject *self;
    PyObject *r, *fd, *gone = NULL;
    int err;

    self = PyObject_GC_New(OlPortObject, st->PortType);
    if (self == NULL) {
        return NULL;
    }
    self->port = NULL;
    self->loop_ref = self->key = self->on_readable = self->kick = NULL;
    self->generation = ol_fork_generation();
    self->kick_pending = 0;
    self->held_head = self->held_tail = NULL;
    self->fd = -1;
    PyObject_GC_Track(self);

    err = ol_port_new(&self->port);
    if (err < 0) {
        ol_set_pyerr(st, err);
        goto error;
    }
    self->fd = ol_port_fd(self->port);
    self->key = Py_NewRef(key);
    self->on_readable = PyObject_GetAttrString((PyObject *)self,
                                               "_on_readable");
    self->kick = PyObject_GetAttrString((PyObject *)self, "_kick");
    gone = PyObject_GetAttrString((PyObject *)self, "_loop_gone");
    if (self->on_readable == NULL || self->kick == NULL || gone == NULL) {
        goto error;
    }
    self->loop_ref = PyWeakref_NewRef(loop, gone);
    Py_CLEAR(gone);
    if (self->loop_ref == NULL) {
        goto error;
    }
    fd = PyLong_FromLong(self->fd);
    r = fd ? PyObject_CallMethodObjArgs(loop, st->str_add_reader, fd,
                                        self->on_readable, NULL)
           : NULL;
    Py_XDECREF(fd);
    if (r == NULL) {
        /* Not registered: closing the fd needs no remove_reader. */
        Py_CLEAR(self->loop_ref);
        goto error;
    }
    Py_DECREF(r);
    return (PyObject *)self;

error:
    Py_XDECREF(gone);
    ol__port_release(st, self);
    Py_DECREF(self);
    return NULL;
}

struct visit_args {
    visitproc visit;
    void *arg;
};

static int
visit_future(ol_job_t *job, void *varg)
{
    struct visit_args *a = varg;
    PyObject *fut = ((ol_pyjob *)job)->future;

    return fut == NULL ? 0 : a->visit(fut, a->arg);
}

static int
Port_traverse(PyObject *op, visitproc visit, void *arg)
{
    OlPortObject *self = PORT(op);
    struct visit_args a = {visit, arg};
    int rc;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->loop_ref);
    Py_VISIT(self->on_readable);
    Py_VISIT(self->kick);
    /* What this Port owns: the futures of its delivered and held jobs
     * (see Ownership above).  A port inherited across fork() is skipped:
     * its lock may have been held by a parent's thread. */
    if (self->port == NULL || self->generation != ol_fork_generation()) {
        return 0;
    }
    for (ol_pyjob *job = self->held_head; job != NULL;
         job = (ol_pyjob *)job->core.done_next) {
        if ((rc = visit_future(&job->core, &a)) != 0) {
            return rc;
        }
    }
    return ol_port_visit(self->port, visit_future, &a);
}

static int
Port_clear(PyObject *op)
{
    OlPortObject *self = PORT(op);

    /* A collected cycle: drop the jobs, which lets go of their futures. */
    ol__port_release(ol_get_state_by_type(Py_TYPE(op)), self);
    Py_CLEAR(self->loop_ref);
    Py_CLEAR(self->on_readable);
    Py_CLEAR(self->kick);
    Py_CLEAR(self->key);
    return 0;
}

static void
Port_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    PyObject_GC_UnTrack(op);
    (void)Port_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
Port_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<offloop Port fd=%d%s>", PORT(op)->fd,
                                PORT(op)->port ? "" : " released");
}

static PyMethodDef Port_methods[] = {
    {"_on_readable", Port_on_readable, METH_NOARGS,
     "Resolve every job delivered since the last wake-up."},
    {"_kick", Port_kick, METH_NOARGS, "Wake workers for queued jobs."},
    {"_loop_gone", Port_loop_gone, METH_O, "Weakref callback."},
    {NULL, NULL, 0, NULL},
};

int
ol_port_init_type(PyObject *module, ol_state *st)
{
    PyType_Slot slots[] = {
        {Py_tp_dealloc, Port_dealloc},
        {Py_tp_traverse, Port_traverse},
        {Py_tp_clear, Port_clear},
        {Py_tp_repr, Port_repr},
        {Py_tp_methods, Port_methods},
        {Py_tp_doc, "An event loop's end of an offloop completion port."},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "offloop._core.Port",
        .basicsize = sizeof(OlPortObject),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
                 Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
        .slots = slots,
    };

    st->PortType =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &spec, NULL);
    return st->PortType == NULL ? -1 : 0;
}

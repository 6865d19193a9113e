/* The loop-to-port registry: which Port serves the running loop.
 *
 * st->ports maps id(loop) to the address of the loop's Port (an int, so
 * that the registry never keeps a Port, or through it a loop, alive: see
 * port_type.c's Ownership).  A Port removes its own entry when it is
 * released or freed (ol__unregister_port).  ol_port_for_running_loop()
 * is the submit path's lookup, with two caches in front of it: the Port
 * of the loop that submitted last (st->last_port, borrowed), and the
 * running loop itself, read from the thread state (running_loop()).  The
 * sweep releases the Ports of loops found closed or gone.
 */
#include "port_type.h"

/* The registry: id(loop) -> the Port's address.  Borrowed entries: a Port
 * removes its own in unregister_port() before it is freed. */
static OlPortObject *
registry_get(ol_state *st, PyObject *key)
{
    PyObject *addr = PyDict_GetItemWithError(st->ports, key); /* borrowed */

    return addr == NULL ? NULL : (OlPortObject *)PyLong_AsVoidPtr(addr);
}

static int
registry_set(ol_state *st, PyObject *key, OlPortObject *port)
{
    PyObject *addr = PyLong_FromVoidPtr(port);
    int rc = addr == NULL ? -1 : PyDict_SetItem(st->ports, key, addr);

    Py_XDECREF(addr);
    return rc;
}

/* Forget every borrowed pointer to this Port. */
void
ol__unregister_port(ol_state *st, OlPortObject *self)
{
    if (st->last_port == (PyObject *)self) {
        st->last_loop = NULL;
        st->last_port = NULL;
    }
    if (st->ports == NULL || self->key == NULL) {
        return;
    }
    if (registry_get(st, self->key) == self) {
        if (PyDict_DelItem(st->ports, self->key) < 0) {
            PyErr_Clear();
        }
    }
    else if (PyErr_Occurred()) {
        PyErr_Clear();
    }
}

void
ol_ports_sweep(ol_state *st, int all)
{
    PyObject *items;

    /* Let go of the last running loop's entry, and the loop with it. */
    st->loop_entry_loop = NULL;
    Py_CLEAR(st->loop_entry);
    items = PyDict_Items(st->ports);

    if (items == NULL) {
        PyErr_Clear();
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        OlPortObject *port = registry_get(st, PyTuple_GET_ITEM(pair, 0));
        PyObject *loop;

        if (port == NULL) { /* released by an earlier port's loop_gone */
            PyErr_Clear();
            continue;
        }
        loop = ol__port_loop(port);
        if (all || loop == NULL || port->generation != ol_fork_generation() ||
            ol__loop_is_closed(st, loop)) {
            ol__port_release(st, port); /* unregisters it */
        }
    }
    Py_DECREF(items);
}

/* The running loop (borrowed), Py_None, or NULL with an exception set.
 *
 * asyncio._get_running_loop() makes a getpid() system call on every call
 * (CPython 3.11), 0.2 us of a 2 us job here.  asyncio keeps the running
 * loop in the thread state's dict: 3.11 as a new holder object each time
 * the running loop changes, 3.12 and 3.13 as the loop itself.  While that
 * entry is the very object seen last (held, so its address cannot be
 * reused) and no fork happened since (the pid check's purpose), the
 * running loop is the one asyncio named then.  Where there is no entry,
 * every call asks asyncio.  The cached entry may keep the last loop alive
 * until the next call that misses, or the next sweep. */
static PyObject *
running_loop(ol_state *st)
{
    PyObject *dict = PyThreadState_GetDict(); /* borrowed */
    PyObject *entry = NULL, *loop;

    if (dict != NULL) {
        entry = PyDict_GetItemWithError(dict, st->str_running_loop_key);
        if (entry == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (entry != NULL && entry == st->loop_entry &&
        st->loop_entry_generation == ol_fork_generation()) {
        return st->loop_entry_loop;
    }
    loop = PyObject_CallNoArgs(st->get_running_loop);
    if (loop == NULL) {
        return NULL;
    }
    /* The running loop stays alive while it runs us: borrow it. */
    Py_DECREF(loop);
    if (entry != NULL) {
        Py_XSETREF(st->loop_entry, Py_NewRef(entry));
        st->loop_entry_loop = loop;
        st->loop_entry_generation = ol_fork_generation();
    }
    return loop;
}

PyObject *
ol_port_for_running_loop(ol_state *st, PyObject **loop_out)
{
    PyObject *loop, *key;
    OlPortObject *port;

    loop = running_loop(st);
    if (loop == NULL) {
        return NULL;
    }
    if (loop == Py_None) {
        PyErr_SetString(PyExc_RuntimeError,
                        "no running event loop: await this call inside a "
                        "coroutine, or use offloop.blocking outside one");
        return NULL;
    }
    *loop_out = loop;
    if (loop == st->last_loop && ol__port_loop(PORT(st->last_port)) == loop &&
        PORT(st->last_port)->port != NULL) {
        return st->last_port;
    }
    key = PyLong_FromVoidPtr(loop);
    if (key == NULL) {
        return NULL;
    }
    port = registry_get(st, key);
    if (port != NULL &&
        (port->port == NULL || ol__port_loop(port) != loop ||
         port->generation != ol_fork_generation())) {
        /* A loop that died at this address, or a port from before fork. */
        ol__port_release(st, port);
        port = NULL;
    }
    if (port == NULL) {
        PyObject *made;

        if (PyErr_Occurred()) {
            goto error;
        }
        ol_drain_orphans();
        ol_ports_sweep(st, 0);
        made = ol__port_new(st, loop, key);
        if (made == NULL) {
            goto error;
        }
        port = PORT(made);
        if (registry_set(st, key, port) < 0) {
            ol__port_release(st, port);
            Py_DECREF(made);
            goto error;
        }
        /* The loop holds it now, through the reader callback. */
        Py_DECREF(made);
    }
    Py_DECREF(key);
    st->last_loop = loop;
    st->last_port = (PyObject *)port; /* borrowed: see unregister_port() */
    return (PyObject *)port;

error:
    Py_DECREF(key);
    return NULL;
}


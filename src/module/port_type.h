/* The Port type's object, shared by port_type.c (the type) and loops.c
 * (the loop-to-port registry).  GIL held, loop thread, for all of it. */
#ifndef OFFLOOP_PORT_TYPE_H
#define OFFLOOP_PORT_TYPE_H

#include "binding.h"

typedef struct {
    PyObject_HEAD
    ol_port_t *port;       /* NULL once released */
    PyObject *loop_ref;    /* weakref to the loop */
    PyObject *key;         /* id(loop), our key in st->ports */
    PyObject *on_readable; /* bound method given to add_reader */
    PyObject *kick;        /* bound method given to call_soon */
    unsigned generation;   /* fork generation the port was made in */
    int fd;
    int kick_pending;      /* a kick is scheduled on the loop */
    /* Jobs held back while the queue is full, oldest first, linked by
     * core.done_next (free until the job reaches the pool). */
    ol_pyjob *held_head, *held_tail;
} OlPortObject;

#define PORT(op) ((OlPortObject *)(op))

/* port_type.c */
/* The loop (borrowed), or NULL once it is gone. */
PyObject *ol__port_loop(OlPortObject *self);
/* loop.is_closed(), an error counting as closed. */
int ol__loop_is_closed(ol_state *st, PyObject *loop);
/* Remove the reader, close the fd, drop the delivered and held jobs, and
 * unregister; idempotent. */
void ol__port_release(ol_state *st, OlPortObject *self);
/* A new Port for `loop`, its reader added (new reference). */
PyObject *ol__port_new(ol_state *st, PyObject *loop, PyObject *key);

/* loops.c */
/* Forget every borrowed pointer to this Port (registry, last_port). */
void ol__unregister_port(ol_state *st, OlPortObject *self);

#endif /* OFFLOOP_PORT_TYPE_H */

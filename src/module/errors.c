/* The one place that maps core error codes to Python exceptions. */
#include "binding.h"

#include <string.h>

const char *
ol_strerror(int err)
{
    switch (err) {
    case OL_ECANCELED:
        return "the job was cancelled";
    case OL_EAGAIN:
        return "the offloop queue is full (max_queue reached)";
    case OL_ESHUTDOWN:
        return "offloop is shut down: the interpreter is exiting";
    case OL_ENOTHREAD:
        return "offloop could not start any worker thread "
               "(pthread_create failed: thread limit or memory)";
    default:
        return strerror(-err);
    }
}

/* Set the exception for `err` (a negative errno) and return NULL. */
PyObject *
ol_set_pyerr(ol_state *st, int err)
{
    switch (err) {
    case OL_ECANCELED:
        PyErr_SetString(st->CancelledError, ol_strerror(err));
        break;
    case OL_ENOMEM:
        PyErr_NoMemory();
        break;
    case OL_EINVAL:
        PyErr_SetString(PyExc_ValueError, ol_strerror(err));
        break;
    case OL_EAGAIN:
    case OL_ESHUTDOWN:
    case OL_ENOTHREAD:
        PyErr_SetString(PyExc_RuntimeError, ol_strerror(err));
        break;
    default:
        errno = -err;
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    }
    return NULL;
}

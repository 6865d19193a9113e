/* offloop._testing: native jobs that exist to test and benchmark the bridge.
 *
 * noop() does nothing; spin(n) burns n steps of a 64-bit LCG and returns
 * its final state (a checksum a test can recompute); sleep(s) sleeps in 1 ms
 * slices, checking for cancellation between them; fail(msg) completes with
 * RuntimeError(msg).  Each has a blocking twin (name + "_blocking"; the
 * Python shim exposes them as offloop._testing.blocking.<name>).
 */
#include "binding.h"

#include <math.h>
#include <time.h>

#define SPIN_MUL 6364136223846793005ULL
#define SPIN_ADD 1442695040888963407ULL
#define SPIN_POLL_MASK 0xFFFFu /* poll the cancel flag every 65536 steps */
#define SLEEP_MAX_SECONDS 86400.0

typedef struct {
    uint64_t iterations;
    uint64_t state;
} spin_payload;

typedef struct {
    double seconds;
} sleep_payload;

typedef struct {
    PyObject *message;
} fail_payload;

static PyObject *
submit(PyObject *module, ol_pyjob *job, int blocking)
{
    ol_state *st = ol_get_state(module);

    if (job == NULL) {
        return NULL;
    }
    return blocking ? ol_submit_blocking(st, job, 0)
                    : ol_submit_async(st, job, 0);
}

/* ---- noop ---------------------------------------------------------- */

static int
noop_work(ol_job_t *job, size_t chunk)
{
    return 0;
}

static const ol_jobkind noop_kind = {.name = "noop", .work = noop_work};

static PyObject *
noop(PyObject *module, PyObject *unused)
{
    return submit(module, ol_pyjob_new(&noop_kind, 0, 1), 0);
}

static PyObject *
noop_blocking(PyObject *module, PyObject *unused)
{
    return submit(module, ol_pyjob_new(&noop_kind, 0, 1), 1);
}

/* ---- spin ---------------------------------------------------------- */

static int
spin_work(ol_job_t *core, size_t chunk)
{
    spin_payload *p = OL_PAYLOAD((ol_pyjob *)core, spin_payload);
    uint64_t x = p->iterations;

    for (uint64_t i = 0; i < p->iterations; i++) {
        x = x * SPIN_MUL + SPIN_ADD;
        if ((i & SPIN_POLL_MASK) == SPIN_POLL_MASK && ol_job_cancelled(core)) {
            return OL_ECANCELED;
        }
    }
    p->state = x;
    return 0;
}

static PyObject *
spin_complete(ol_pyjob *job)
{
    return PyLong_FromUnsignedLongLong(OL_PAYLOAD(job, spin_payload)->state);
}

static const ol_jobkind spin_kind = {
    .name = "spin", .work = spin_work, .complete = spin_complete};

static ol_pyjob *
spin_job(PyObject *arg)
{
    ol_pyjob *job;
    PyObject *idx;
    unsigned long long n;

    /* An int is whatever operator.index() takes (numpy integers,
     * __index__), except bool, which reads as a mistake. */
    idx = PyBool_Check(arg) ? NULL : PyNumber_Index(arg);
    if (idx == NULL) {
        if (!PyBool_Check(arg) && !PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL; /* __index__ raised something else: keep it */
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "spin(): iterations must be an int, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    n = PyLong_AsUnsignedLongLong(idx);
    Py_DECREF(idx);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "spin(): iterations must be between 0 and 2**64 - 1, "
                     "got %R",
                     arg);
        return NULL;
    }
    job = ol_pyjob_new(&spin_kind, sizeof(spin_payload), 1);
    if (job != NULL) {
        OL_PAYLOAD(job, spin_payload)->iterations = n;
    }
    return job;
}

static PyObject *
spin(PyObject *module, PyObject *arg)
{
    return submit(module, spin_job(arg), 0);
}

static PyObject *
spin_blocking(PyObject *module, PyObject *arg)
{
    return submit(module, spin_job(arg), 1);
}

/* ---- sleep --------------------------------------------------------- */

static int
sleep_work(ol_job_t *core, size_t chunk)
{
    double seconds = OL_PAYLOAD((ol_pyjob *)core, sleep_payload)->seconds;
    struct timespec deadline, now;
    const struct timespec slice = {0, 1000000L};

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)seconds;
    deadline.tv_nsec += (long)((seconds - floor(seconds)) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    for (;;) {
        if (ol_job_cancelled(core)) {
            return OL_ECANCELED;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline.tv_sec ||
            (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec)) {
            return 0;
        }
        struct timespec left = {deadline.tv_sec - now.tv_sec,
                                deadline.tv_nsec - now.tv_nsec};
        if (left.tv_nsec < 0) {
            left.tv_sec--;
            left.tv_nsec += 1000000000L;
        }
        if (left.tv_sec > 0 || left.tv_nsec > slice.tv_nsec) {
            left = slice;
        }
        nanosleep(&left, NULL);
    }
}

static const ol_jobkind sleep_kind = {.name = "sleep", .work = sleep_work};

static ol_pyjob *
sleep_job(PyObject *arg)
{
    ol_pyjob *job;
    double seconds;

    /* A float, or an int as operator.index() takes it (numpy integers);
     * PyFloat_AsDouble() falls back on __index__.  Never a bool. */
    if (!(PyFloat_Check(arg) || PyIndex_Check(arg)) || PyBool_Check(arg)) {
        PyErr_Format(PyExc_TypeError,
                     "sleep(): seconds must be a number, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(seconds >= 0.0 && seconds <= SLEEP_MAX_SECONDS)) {
        PyErr_Format(PyExc_ValueError,
                     "sleep(): seconds must be between 0 and %d, got %R",
                     (int)SLEEP_MAX_SECONDS, arg);
        return NULL;
    }
    job = ol_pyjob_new(&sleep_kind, sizeof(sleep_payload), 1);
    if (job != NULL) {
        OL_PAYLOAD(job, sleep_payload)->seconds = seconds;
    }
    return job;
}

static PyObject *
sleep_(PyObject *module, PyObject *arg)
{
    return submit(module, sleep_job(arg), 0);
}

static PyObject *
sleep_blocking(PyObject *module, PyObject *arg)
{
    return submit(module, sleep_job(arg), 1);
}

/* ---- fail ---------------------------------------------------------- */

static PyObject *
fail_complete(ol_pyjob *job)
{
    PyErr_SetObject(PyExc_RuntimeError,
                    OL_PAYLOAD(job, fail_payload)->message);
    return NULL;
}

static void
fail_release(ol_pyjob *job)
{
    Py_CLEAR(OL_PAYLOAD(job, fail_payload)->message);
}

static const ol_jobkind fail_kind = {.name = "fail",
                                     .work = noop_work,
                                     .complete = fail_complete,
                                     .release = fail_release};

static ol_pyjob *
fail_job(PyObject *arg)
{
    ol_pyjob *job;

    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError,
                     "fail(): message must be a str, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    job = ol_pyjob_new(&fail_kind, sizeof(fail_payload), 1);
    if (job != NULL) {
        OL_PAYLOAD(job, fail_payload)->message = Py_NewRef(arg);
    }
    return job;
}

static PyObject *
fail(PyObject *module, PyObject *arg)
{
    return submit(module, fail_job(arg), 0);
}

static PyObject *
fail_blocking(PyObject *module, PyObject *arg)
{
    return submit(module, fail_job(arg), 1);
}

/* ---- inspection ---------------------------------------------------- */

static PyObject *
live_jobs(PyObject *module, PyObject *unused)
{
    ol_drain_orphans();
    ol_ports_sweep(ol_get_state(module), 0); /* drops closed loops' jobs */
    return PyLong_FromLongLong(ol_count.live);
}

static PyObject *
wait_idle(PyObject *module, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    int rc;

    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = ol_pool_wait_idle((long)(timeout * 1000));
    Py_END_ALLOW_THREADS
    ol_drain_orphans();
    return PyBool_FromLong(rc == 0);
}

PyMethodDef ol_testing_methods[] = {
    {"noop", noop, METH_NOARGS, "noop($module, /)\n--\n\nDo nothing."},
    {"noop_blocking", noop_blocking, METH_NOARGS, NULL},
    {"spin", spin, METH_O,
     "spin($module, iterations, /)\n--\n\nRun `iterations` LCG steps in C; "
     "returns the final state."},
    {"spin_blocking", spin_blocking, METH_O, NULL},
    {"sleep", sleep_, METH_O,
     "sleep($module, seconds, /)\n--\n\nSleep in C, cancellable every ms."},
    {"sleep_blocking", sleep_blocking, METH_O, NULL},
    {"fail", fail, METH_O,
     "fail($module, message, /)\n--\n\nComplete with RuntimeError(message)."},
    {"fail_blocking", fail_blocking, METH_O, NULL},
    {"live_jobs", live_jobs, METH_NOARGS,
     "live_jobs($module, /)\n--\n\nJobs allocated and not yet released."},
    {"wait_idle", wait_idle, METH_O,
     "wait_idle($module, timeout, /)\n--\n\nWait (GIL released) until no "
     "job is queued or running; True unless the timeout passed."},
    {NULL, NULL, 0, NULL},
};

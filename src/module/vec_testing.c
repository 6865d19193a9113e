/* Test and benchmark hooks of the vector kernels: batch_normalize's
 * chunk gate (a test cancels a big job at a known chunk) and the ISA
 * switch (tests compare the SIMD paths with the portable C one).  Not a
 * public API: offloop._core._set_isa, _isa, _hold_normalize_chunks.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "vectors.h"

/* A gate for tests (_hold_normalize_chunks): lets `allowed` batch_normalize
 * chunks start, then holds each later one at its start until the test
 * opens the gate, so that a test can cancel a big job at a known point
 * instead of racing the workers.  `lock` protects `allowed`; `armed` is
 * atomic so that the untested path costs one relaxed load per chunk. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t opened;
    atomic_int armed;
    long allowed;
} normalize_gate = {.lock = PTHREAD_MUTEX_INITIALIZER,
                  .opened = PTHREAD_COND_INITIALIZER};

void
vec_pass_normalize_gate(void)
{
    if (!atomic_load_explicit(&normalize_gate.armed, memory_order_relaxed)) {
        return;
    }
    pthread_mutex_lock(&normalize_gate.lock);
    while (atomic_load(&normalize_gate.armed) && normalize_gate.allowed == 0) {
        pthread_cond_wait(&normalize_gate.opened, &normalize_gate.lock);
    }
    if (atomic_load(&normalize_gate.armed)) {
        normalize_gate.allowed--;
    }
    pthread_mutex_unlock(&normalize_gate.lock);
}

static PyObject *
set_isa(PyObject *module, PyObject *arg)
{
    static const ol_isa all[] = {OL_ISA_SCALAR, OL_ISA_AVX2, OL_ISA_AVX512};
    ol_isa prev = ol_kernels_isa();
    size_t i;

    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError,
                     "_set_isa(): name must be a str, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    for (i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (PyUnicode_CompareWithASCIIString(arg, ol_isa_name(all[i])) ==
            0) {
            if (ol_kernels_force(all[i]) < 0) {
                PyErr_Format(PyExc_ValueError,
                             "_set_isa(): this CPU or build cannot run %R",
                             arg);
                return NULL;
            }
            return PyUnicode_FromString(ol_isa_name(prev));
        }
    }
    PyErr_Format(PyExc_ValueError,
                 "_set_isa(): name must be 'scalar', 'avx2' or 'avx512', "
                 "got %R",
                 arg);
    return NULL;
}

static PyObject *
get_isa(PyObject *module, PyObject *unused)
{
    return PyUnicode_FromString(ol_isa_name(ol_kernels_isa()));
}

/* _hold_normalize_chunks(n): let n chunks start, hold the rest; None opens
 * the gate. */
static PyObject *
hold_normalize_chunks(PyObject *module, PyObject *arg)
{
    long allowed = -1;

    if (arg != Py_None) {
        allowed = PyLong_AsLong(arg);
        if (allowed == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (allowed < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "_hold_normalize_chunks(): n must be >= 0");
            return NULL;
        }
    }
    pthread_mutex_lock(&normalize_gate.lock);
    normalize_gate.allowed = allowed;
    atomic_store(&normalize_gate.armed, allowed >= 0);
    pthread_cond_broadcast(&normalize_gate.opened);
    pthread_mutex_unlock(&normalize_gate.lock);
    Py_RETURN_NONE;
}

PyMethodDef ol_vector_testing_methods[] = {
    {"_set_isa", set_isa, METH_O,
     "_set_isa($module, name, /)\n--\n\nForce the kernels' ISA ('scalar', "
     "'avx2', 'avx512'); returns the previous one.  Tests only."},
    {"_isa", get_isa, METH_NOARGS,
     "_isa($module, /)\n--\n\nThe kernels' ISA in use."},
    {"_hold_normalize_chunks", hold_normalize_chunks, METH_O,
     "_hold_normalize_chunks($module, n, /)\n--\n\nLet n batch_normalize "
     "chunks start and hold the later ones; None lets all go.  Tests only."},
    {NULL, NULL, 0, NULL},
};

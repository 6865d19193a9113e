/* Test and benchmark hooks of the vector kernels: batch_normalize's
 * chunk gate (a test cancels a big job at a known chunk) and the ISA
 * switch (tests compare the SIMD paths with the portable C one).  Not a
 * public API: offloop._core._set_isa, _isa, _hold_normalize_chunks.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "vectors.h"

/* Gates for tests (_hold_normalize_chunks, _hold_batch_chunks): let
 * `allowed` chunks start, then hold each later one at its start until the
 * test opens the gate, so that a test can cancel a big job (or a member of
 * a running batch) at a known point instead of racing the workers.
 * `lock` protects `allowed`; `armed` is atomic so that the untested path
 * costs one relaxed load per chunk. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t opened;
    atomic_int armed;
    long allowed;
} chunk_gate;

#define CHUNK_GATE_INIT \
    {.lock = PTHREAD_MUTEX_INITIALIZER, .opened = PTHREAD_COND_INITIALIZER}

static chunk_gate normalize_gate = CHUNK_GATE_INIT;
static chunk_gate batch_gate = CHUNK_GATE_INIT;

static void
pass_gate(chunk_gate *g)
{
    if (!atomic_load_explicit(&g->armed, memory_order_relaxed)) {
        return;
    }
    pthread_mutex_lock(&g->lock);
    while (atomic_load(&g->armed) && g->allowed == 0) {
        pthread_cond_wait(&g->opened, &g->lock);
    }
    if (atomic_load(&g->armed)) {
        g->allowed--;
    }
    pthread_mutex_unlock(&g->lock);
}

void
vec_pass_normalize_gate(void)
{
    pass_gate(&normalize_gate);
}

void
vec_pass_batch_gate(void)
{
    pass_gate(&batch_gate);
}

/* n: let n chunks start, hold the rest; None opens the gate. */
static PyObject *
set_gate(chunk_gate *g, const char *fname, PyObject *arg)
{
    Py_ssize_t allowed = -1;

    if (arg != Py_None) {
        allowed = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
        if (allowed == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (allowed < 0) {
            PyErr_Format(PyExc_ValueError, "%s(): n must be >= 0", fname);
            return NULL;
        }
    }
    pthread_mutex_lock(&g->lock);
    g->allowed = (long)allowed;
    atomic_store(&g->armed, allowed >= 0);
    pthread_cond_broadcast(&g->opened);
    pthread_mutex_unlock(&g->lock);
    Py_RETURN_NONE;
}

static PyObject *
hold_normalize_chunks(PyObject *module, PyObject *arg)
{
    return set_gate(&normalize_gate, "_hold_normalize_chunks", arg);
}

static PyObject *
hold_batch_chunks(PyObject *module, PyObject *arg)
{
    return set_gate(&batch_gate, "_hold_batch_chunks", arg);
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

PyMethodDef ol_vector_testing_methods[] = {
    {"_set_isa", set_isa, METH_O,
     "_set_isa($module, name, /)\n--\n\nForce the kernels' ISA ('scalar', "
     "'avx2', 'avx512'); returns the previous one.  Tests only."},
    {"_isa", get_isa, METH_NOARGS,
     "_isa($module, /)\n--\n\nThe kernels' ISA in use."},
    {"_hold_normalize_chunks", hold_normalize_chunks, METH_O,
     "_hold_normalize_chunks($module, n, /)\n--\n\nLet n batch_normalize "
     "chunks start and hold the later ones; None lets all go.  Tests only."},
    {"_hold_batch_chunks", hold_batch_chunks, METH_O,
     "_hold_batch_chunks($module, n, /)\n--\n\nLet n chunks of coalesced "
     "runs start and hold the later ones; None lets all go.  Tests only."},
    {NULL, NULL, 0, NULL},
};

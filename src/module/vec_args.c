/* The vector kernels' arguments: parsing, input and output buffers held
 * for a job's lifetime, output arrays, checked sizes (vectors.c's DESIGN
 * note says why buffers are held and when inputs are converted).
 *
 * Every function here runs with the GIL, at the call, before a job is
 * queued; a failure raises TypeError or ValueError naming the argument.
 */
#include "vec_args.h"

/* Fill `out` (npos + nkwonly slots) from a vectorcall.  The first `nreq`
 * parameters are required.  Unset optional slots are left NULL. */
int
vec_parse_args(const char *fname, const char *const *names, int npos,
               int nkwonly, int nreq, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames, PyObject **out)
{
    int total = npos + nkwonly, i;
    Py_ssize_t j, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;

    if (nargs > npos) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most %d positional arguments (%zd given)",
                     fname, npos, nargs);
        return -1;
    }
    for (i = 0; i < total; i++) {
        out[i] = i < nargs ? args[i] : NULL;
    }
    for (j = 0; j < nkw; j++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, j);
        for (i = 0; i < total; i++) {
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0) {
                break;
            }
        }
        if (i == total) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%S'",
                         fname, key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + j];
    }
    for (i = 0; i < nreq; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

/* 'f' for native float32, 'd' for native float64, 0 for anything else.
 * struct syntax: "f", "@f", "=f", and "<f" on a little-endian CPU. */
static int
format_kind(const Py_buffer *v)
{
    const char *f = v->format;

    if (f == NULL) {
        return 0; /* unsigned bytes */
    }
    if (f[0] == '@' || f[0] == '=' ||
        (f[0] == '<' && PY_LITTLE_ENDIAN) ||
        (f[0] == '>' && !PY_LITTLE_ENDIAN)) {
        f++;
    }
    if (f[0] == 'f' && f[1] == '\0' && v->itemsize == 4) {
        return 'f';
    }
    if (f[0] == 'd' && f[1] == '\0' && v->itemsize == 8) {
        return 'd';
    }
    return 0;
}

void
vec_buf_release(vec_buf *b)
{
    if (b->held) {
        PyBuffer_Release(&b->view);
        b->held = 0;
    }
    Py_CLEAR(b->copy);
}

/* Take the shape from a held view.  Returns -1 with ValueError for an
 * ndim other than 1 or 2, or an empty buffer. */
static int
buf_shape(vec_buf *b, const char *fname, const char *name)
{
    const Py_buffer *v = &b->view;

    b->ndim = v->ndim;
    if (v->ndim == 1) {
        b->rows = 1;
        b->cols = (size_t)v->shape[0];
    }
    else if (v->ndim == 2) {
        b->rows = (size_t)v->shape[0];
        b->cols = (size_t)v->shape[1];
    }
    else {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s must be 1-D or 2-D, got %d dimensions", fname,
                     name, v->ndim);
        return -1;
    }
    if (b->rows == 0 || b->cols == 0) {
        PyErr_Format(PyExc_ValueError, "%s(): %s must not be empty", fname,
                     name);
        return -1;
    }
    b->data = (float *)v->buf;
    return 0;
}

/* Convert anything but a float32 buffer, once, with numpy. */
static PyObject *
convert(PyObject *obj, const char *fname, const char *name)
{
    PyObject *mod, *res;

    mod = PyImport_ImportModule("offloop._vectors");
    if (mod == NULL) {
        return NULL;
    }
    res = PyObject_CallMethod(mod, "_as_float32", "Oss", obj, fname, name);
    Py_DECREF(mod);
    return res;
}

/* Borrow `obj` as float32, C-contiguous, for the job's lifetime. */
int
vec_get_input(vec_buf *b, PyObject *obj, const char *fname, const char *name)
{
    int kind;

    if (PyObject_CheckBuffer(obj)) {
        if (PyObject_GetBuffer(obj, &b->view, PyBUF_RECORDS_RO) < 0) {
            return -1;
        }
        b->held = 1;
        kind = format_kind(&b->view);
        if (kind == 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s(): %s must hold float32 (or float64) values, "
                         "got buffer format '%s'",
                         fname, name,
                         b->view.format ? b->view.format : "B");
            return -1;
        }
        if (!PyBuffer_IsContiguous(&b->view, 'C')) {
            PyErr_Format(PyExc_ValueError,
                         "%s(): %s must be C-contiguous (use "
                         "numpy.ascontiguousarray(%s))",
                         fname, name, name);
            return -1;
        }
        /* A float32 buffer at an address that is not a multiple of 4 (a
         * view at a byte offset, as Dask or np.frombuffer hand out): the
         * kernels load whole floats, so it is copied like float64. */
        if (kind == 'f' && (uintptr_t)b->view.buf % _Alignof(float) == 0) {
            return buf_shape(b, fname, name);
        }
        vec_buf_release(b); /* float64, or unaligned: converted below */
    }
    else if (!PySequence_Check(obj) || PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): %s must be a float32 array or buffer, or a "
                     "sequence of numbers, not %.100s",
                     fname, name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    b->copy = convert(obj, fname, name);
    if (b->copy == NULL) {
        return -1;
    }
    if (PyObject_GetBuffer(b->copy, &b->view, PyBUF_RECORDS_RO) < 0) {
        return -1;
    }
    b->held = 1;
    return buf_shape(b, fname, name);
}

/* Borrow `obj` writable: float32, C-contiguous, shape rows x cols
 * (ndim 2), or cols (ndim 1).  Never converted. */
int
vec_get_output(vec_buf *b, PyObject *obj, const char *fname, const char *name,
               int ndim, size_t rows, size_t cols)
{
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): %s must be a writable float32 array, not %.100s",
                     fname, name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_RECORDS) < 0) {
        /* Read-only, in practice: the exporter's message would not
         * name the argument. */
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s must be a writable buffer", fname, name);
        return -1;
    }
    b->held = 1;
    if (format_kind(&b->view) != 'f') {
        PyErr_Format(PyExc_TypeError,
                     "%s(): %s must be a float32 array, got buffer format "
                     "'%s'",
                     fname, name, b->view.format ? b->view.format : "B");
        return -1;
    }
    if (!PyBuffer_IsContiguous(&b->view, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s(): %s must be C-contiguous",
                     fname, name);
        return -1;
    }
    if ((uintptr_t)b->view.buf % _Alignof(float) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s must be aligned to 4 bytes (a float32 view "
                     "at an odd byte offset cannot be written in place)",
                     fname, name);
        return -1;
    }
    if (b->view.ndim != ndim ||
        (size_t)b->view.shape[0] != (ndim == 2 ? rows : cols) ||
        (ndim == 2 && (size_t)b->view.shape[1] != cols)) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s must have shape (%zu, %zu)", fname, name,
                     rows, cols);
        return -1;
    }
    b->rows = rows;
    b->cols = cols;
    b->ndim = ndim;
    b->data = (float *)b->view.buf;
    return 0;
}

/* Borrow `obj` (read-only is fine) as C-contiguous codes of struct
 * format `fmt`, `ndim` dimensions.  Never converted: a quantized matrix
 * is made by quantize() or rebuilt from its own arrays. */
int
vec_get_codes(vec_buf *b, PyObject *obj, const char *fname, const char *name,
              char fmt, int ndim)
{
    const char *f;
    Py_ssize_t size = fmt == 'H' ? 2 : fmt == 'b' ? 1 : 4;

    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s(): %s must be an array, not %.100s",
                     fname, name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_RECORDS_RO) < 0) {
        return -1;
    }
    b->held = 1;
    f = b->view.format ? b->view.format : "B";
    if (f[0] == '@' || f[0] == '=' || (f[0] == '<' && PY_LITTLE_ENDIAN)) {
        f++;
    }
    if (f[0] != fmt || f[1] != '\0' || b->view.itemsize != size) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): %s has buffer format '%s', expected '%c'", fname,
                     name, b->view.format ? b->view.format : "B", fmt);
        return -1;
    }
    if (!PyBuffer_IsContiguous(&b->view, 'C') || b->view.ndim != ndim) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s must be C-contiguous with %d dimensions",
                     fname, name, ndim);
        return -1;
    }
    b->ndim = ndim;
    b->rows = (size_t)b->view.shape[0];
    b->cols = ndim == 2 ? (size_t)b->view.shape[1] : 1;
    b->data = (float *)b->view.buf; /* codes: read through a cast */
    return 0;
}

/* numpy.empty and the dtypes, imported on the first call that needs an
 * output array (import offloop does not import numpy). */
static int
numpy_ready(ol_state *st)
{
    PyObject *np;

    if (st->np_empty != NULL) {
        return 0;
    }
    np = PyImport_ImportModule("numpy");
    if (np == NULL) {
        return -1;
    }
    PyObject *dtype = PyObject_GetAttrString(np, "dtype");
    PyObject *empty = PyObject_GetAttrString(np, "empty");
    Py_DECREF(np);
    if (dtype == NULL || empty == NULL) {
        goto error;
    }
    st->np_float32 = PyObject_CallFunction(dtype, "s", "float32");
    st->np_int64 = PyObject_CallFunction(dtype, "s", "int64");
    if (st->np_float32 == NULL || st->np_int64 == NULL) {
        Py_CLEAR(st->np_float32);
        Py_CLEAR(st->np_int64);
        goto error;
    }
    Py_DECREF(dtype);
    st->np_empty = empty;
    return 0;

error:
    Py_XDECREF(dtype);
    Py_XDECREF(empty);
    return -1;
}

/* A new numpy array of shape (rows, cols), or (cols,) if rows == 0;
 * float32, or int64 if `int64`. */
PyObject *
vec_new_array(ol_state *st, size_t rows, size_t cols, int int64)
{
    PyObject *shape, *res;
    PyObject *args[2];

    if (numpy_ready(st) < 0) {
        return NULL;
    }
    shape = rows ? Py_BuildValue("(nn)", (Py_ssize_t)rows, (Py_ssize_t)cols)
                 : Py_BuildValue("(n)", (Py_ssize_t)cols);
    if (shape == NULL) {
        return NULL;
    }
    args[0] = shape;
    args[1] = int64 ? st->np_int64 : st->np_float32;
    res = PyObject_Vectorcall(st->np_empty, args, 2, NULL);
    Py_DECREF(shape);
    return res;
}

/* Checked a * b * c; -1 (with ValueError naming `what`) on overflow of
 * Py_ssize_t. */
int
vec_checked_size(size_t a, size_t b, size_t c, size_t *out, const char *fname,
                 const char *what)
{
    size_t ab;

    if (__builtin_mul_overflow(a, b, &ab) ||
        __builtin_mul_overflow(ab, c, out) ||
        *out > (size_t)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s would need more than %zd bytes", fname,
                     what, PY_SSIZE_T_MAX);
        return -1;
    }
    return 0;
}

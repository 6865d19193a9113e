/* native_ext._native: three C functions that run on offloop's pool.
 *
 * The functions of the articles people copy from, written against
 * offloop.h: double(x), sum_squares(a, b) and process_numbers(numbers,
 * rounds=1000).  Each returns an awaitable future; its twin
 * (name + "_blocking") waits with the GIL released instead.
 *
 * Every call follows the same steps, the whole point of the example:
 *   1. with the GIL, parse and check the arguments (bad input raises here,
 *      before anything is queued) and fill a context with plain C data;
 *   2. execute(ctx) computes on a worker, without the GIL, touching only
 *      that context;
 *   3. complete(ctx), back with the GIL, builds the Python result;
 *   4. release(ctx) frees the context, exactly once, whatever happened.
 * Contexts come from PyMem_RawMalloc: workers touch them without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <offloop.h>

#include <stdint.h>
#include <string.h>

#define MODULUS 1000000007LL
/* Element-rounds per chunk of process_numbers: a few milliseconds, so
 * that a cancel is seen soon and idle workers can share a big input. */
#define CHUNK_WORK (1LL << 22)
#define MAX_CHUNKS 4096
#define POLL_WORK (1LL << 16) /* element-rounds between cancel polls */

/* Contexts allocated and not yet released: a leak check for the tests.
 * Changed only with the GIL (at submit and in release), so a plain int. */
static Py_ssize_t live_contexts;

static void *
ctx_alloc(size_t size)
{
    void *ctx = PyMem_RawCalloc(1, size);

    if (ctx == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    live_contexts++;
    return ctx;
}

static void
ctx_free(void *ctx)
{
    PyMem_RawFree(ctx);
    live_contexts--;
}

/* ---- numbers: an int64 or a double ---------------------------------- */

typedef struct {
    int is_float;
    int64_t i;
    double f;
} number;

/* An int as operator.index() takes it: int, numpy integers, any object
 * with __index__; never a bool, which reads as a mistake.  A new
 * reference to an exact int, or NULL with TypeError naming the argument
 * ("must be <what>"). */
static PyObject *
as_int(PyObject *obj, const char *fname, const char *arg, const char *what)
{
    PyObject *idx = PyBool_Check(obj) ? NULL : PyNumber_Index(obj);

    if (idx == NULL) {
        if (!PyBool_Check(obj) && !PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL; /* __index__ raised something else: keep it */
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s(): %s must be %s, not %.100s",
                     fname, arg, what, Py_TYPE(obj)->tp_name);
    }
    return idx;
}

/* Read an int (int64) or a float; TypeError or OverflowError naming the
 * argument otherwise. */
static int
parse_number(PyObject *obj, const char *fname, const char *arg, number *out)
{
    PyObject *idx;
    int overflow;

    if (PyFloat_Check(obj)) {
        out->is_float = 1;
        out->f = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    idx = as_int(obj, fname, arg, "an int or a float");
    if (idx == NULL) {
        return -1;
    }
    out->is_float = 0;
    out->i = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (overflow != 0) {
        PyErr_Format(PyExc_OverflowError,
                     "%s(): %s does not fit in a signed 64-bit integer",
                     fname, arg);
        return -1;
    }
    return (out->i == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
number_to_python(const number *n)
{
    return n->is_float ? PyFloat_FromDouble(n->f)
                       : PyLong_FromLongLong(n->i);
}

/* ---- double(x) ------------------------------------------------------ */

typedef struct {
    number x, result;
} double_ctx;

static int
double_execute(void *p, const offloop_cancel_t *cancel)
{
    double_ctx *ctx = p;

    ctx->result = ctx->x;
    if (ctx->x.is_float) {
        ctx->result.f = ctx->x.f * 2.0;
    }
    else {
        ctx->result.i = ctx->x.i * 2; /* range checked at the call */
    }
    return 0;
}

static PyObject *
double_complete(void *p)
{
    return number_to_python(&((double_ctx *)p)->result);
}

static PyObject *
double_impl(PyObject *arg, int blocking)
{
    double_ctx *ctx;
    number x;

    if (parse_number(arg, "double", "x", &x) < 0) {
        return NULL;
    }
    if (!x.is_float && (x.i > INT64_MAX / 2 || x.i < INT64_MIN / 2)) {
        PyErr_SetString(PyExc_OverflowError,
                        "double(): 2 * x does not fit in a signed 64-bit "
                        "integer");
        return NULL;
    }
    ctx = ctx_alloc(sizeof(*ctx));
    if (ctx == NULL) {
        return NULL;
    }
    ctx->x = x;
    /* From here on offloop owns ctx and calls ctx_free exactly once. */
    return blocking ? offloop_submit_blocking(double_execute,
                                              double_complete, ctx_free, ctx)
                    : offloop_submit(double_execute, double_complete,
                                     ctx_free, ctx);
}

static PyObject *
double_(PyObject *module, PyObject *arg)
{
    return double_impl(arg, 0);
}

static PyObject *
double_blocking(PyObject *module, PyObject *arg)
{
    return double_impl(arg, 1);
}

/* ---- double_batched(x): a batchable job ------------------------------ */

/* The same work as double(x), submitted with offloop_submit_batch():
 * calls that wait for a worker together run as one execute_batch call,
 * which is where a real extension would pay a fixed cost once (a model's
 * forward pass, a scan of shared data).  Each result tells the size of
 * the batch it ran in, so the example and its test can see coalescing. */
typedef struct {
    double_ctx one;
    size_t batch; /* set by execute_batch */
} double_batched_ctx;

static int
double_batched_execute(void *const *ctxs, size_t n,
                       const offloop_cancel_t *cancel)
{
    for (size_t i = 0; i < n; i++) {
        double_batched_ctx *ctx = ctxs[i];
        double_execute(&ctx->one, cancel);
        ctx->batch = n;
    }
    return 0;
}

static PyObject *
double_batched_complete(void *p)
{
    double_batched_ctx *ctx = p;
    PyObject *value = number_to_python(&ctx->one.result);
    PyObject *res = value ? Py_BuildValue("(Nn)", value,
                                          (Py_ssize_t)ctx->batch)
                          : NULL;

    return res;
}

static PyObject *
double_batched_impl(PyObject *arg, int blocking)
{
    double_batched_ctx *ctx;
    number x;

    if (parse_number(arg, "double_batched", "x", &x) < 0) {
        return NULL;
    }
    if (!x.is_float && (x.i > INT64_MAX / 2 || x.i < INT64_MIN / 2)) {
        PyErr_SetString(PyExc_OverflowError,
                        "double_batched(): 2 * x does not fit in a signed "
                        "64-bit integer");
        return NULL;
    }
    ctx = ctx_alloc(sizeof(*ctx));
    if (ctx == NULL) {
        return NULL;
    }
    ctx->one.x = x;
    /* Key 0: every call of this function may share a run. */
    return blocking ? offloop_submit_batch_blocking(double_batched_execute,
                                                    0, double_batched_complete,
                                                    ctx_free, ctx)
                    : offloop_submit_batch(double_batched_execute, 0,
                                           double_batched_complete, ctx_free,
                                           ctx);
}

static PyObject *
double_batched(PyObject *module, PyObject *arg)
{
    return double_batched_impl(arg, 0);
}

static PyObject *
double_batched_blocking(PyObject *module, PyObject *arg)
{
    return double_batched_impl(arg, 1);
}

/* ---- sum_squares(a, b) ---------------------------------------------- */

typedef struct {
    number a, b, result;
    int overflow; /* set by execute: reported by complete */
} sum_squares_ctx;

static int
sum_squares_execute(void *p, const offloop_cancel_t *cancel)
{
    sum_squares_ctx *ctx = p;
    int64_t aa, bb;

    if (ctx->a.is_float || ctx->b.is_float) {
        double a = ctx->a.is_float ? ctx->a.f : (double)ctx->a.i;
        double b = ctx->b.is_float ? ctx->b.f : (double)ctx->b.i;
        ctx->result.is_float = 1;
        ctx->result.f = a * a + b * b;
        return 0;
    }
    /* An error found on the worker: note it in ctx, return non-zero;
     * complete() turns it into the exception. */
    if (__builtin_mul_overflow(ctx->a.i, ctx->a.i, &aa) ||
        __builtin_mul_overflow(ctx->b.i, ctx->b.i, &bb) ||
        __builtin_add_overflow(aa, bb, &ctx->result.i)) {
        ctx->overflow = 1;
        return 1;
    }
    return 0;
}

static PyObject *
sum_squares_complete(void *p)
{
    sum_squares_ctx *ctx = p;

    if (ctx->overflow) {
        return PyErr_Format(PyExc_OverflowError,
                            "sum_squares(): a*a + b*b does not fit in a "
                            "signed 64-bit integer");
    }
    return number_to_python(&ctx->result);
}

static PyObject *
sum_squares_impl(PyObject *const *args, Py_ssize_t nargs, int blocking)
{
    sum_squares_ctx *ctx;
    number a, b;

    if (nargs != 2) {
        return PyErr_Format(PyExc_TypeError,
                            "sum_squares() takes 2 arguments (a, b), got %zd",
                            nargs);
    }
    if (parse_number(args[0], "sum_squares", "a", &a) < 0 ||
        parse_number(args[1], "sum_squares", "b", &b) < 0) {
        return NULL;
    }
    ctx = ctx_alloc(sizeof(*ctx));
    if (ctx == NULL) {
        return NULL;
    }
    ctx->a = a;
    ctx->b = b;
    return blocking
               ? offloop_submit_blocking(sum_squares_execute,
                                         sum_squares_complete, ctx_free, ctx)
               : offloop_submit(sum_squares_execute, sum_squares_complete,
                                ctx_free, ctx);
}

static PyObject *
sum_squares(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return sum_squares_impl(args, nargs, 0);
}

static PyObject *
sum_squares_blocking(PyObject *module, PyObject *const *args,
                     Py_ssize_t nargs)
{
    return sum_squares_impl(args, nargs, 1);
}

/* ---- process_numbers(numbers, rounds=1000) --------------------------- */

typedef struct {
    Py_buffer in;       /* the caller's int64 buffer, borrowed ... */
    int has_in;         /* ... if they passed one */
    Py_buffer out;      /* the result array's memory */
    PyObject *result;   /* numpy int64 array (strong) */
    const int64_t *src; /* in.buf, or out.buf for a list (in place) */
    int64_t *dst;
    Py_ssize_t n;
    int64_t rounds;
    Py_ssize_t chunk_len; /* elements per chunk */
} process_ctx;

/* One round: val = (val + 1) * 2 % 1_000_000_007, with int64 wrap-around
 * (computed unsigned: signed overflow would be undefined in C) and C's
 * remainder, whose sign follows the dividend. */
static inline int64_t
step(int64_t val)
{
    uint64_t u = ((uint64_t)val + 1u) * 2u;

    return (int64_t)u % MODULUS;
}

static int
process_chunk(void *p, size_t chunk, const offloop_cancel_t *cancel)
{
    process_ctx *ctx = p;
    Py_ssize_t lo = (Py_ssize_t)chunk * ctx->chunk_len;
    Py_ssize_t hi = lo + ctx->chunk_len < ctx->n ? lo + ctx->chunk_len
                                                 : ctx->n;
    int64_t poll_every = ctx->rounds >= POLL_WORK ? 1
                                                  : POLL_WORK /
                                                        (ctx->rounds + 1);

    for (Py_ssize_t i = lo; i < hi; i++) {
        int64_t val = ctx->src[i];
        for (int64_t r = 0; r < ctx->rounds; r++) {
            val = step(val);
        }
        ctx->dst[i] = val;
        if ((i - lo) % poll_every == 0 && offloop_cancelled(cancel)) {
            return 1; /* the job ends as cancelled */
        }
    }
    return 0;
}

static PyObject *
process_complete(void *p)
{
    return Py_NewRef(((process_ctx *)p)->result);
}

static void
process_release(void *p)
{
    process_ctx *ctx = p;

    if (ctx->has_in) {
        PyBuffer_Release(&ctx->in);
    }
    if (ctx->result != NULL) {
        PyBuffer_Release(&ctx->out);
        Py_DECREF(ctx->result);
    }
    ctx_free(ctx);
}

/* An int64 buffer's format: "q" or "l" of 8 bytes, native byte order. */
static int
is_int64_format(const Py_buffer *view)
{
    const char *f = view->format ? view->format : "B";

    if (*f == '@' || *f == '=' || *f == (PY_LITTLE_ENDIAN ? '<' : '>')) {
        f++; /* native order, spelled out */
    }
    return view->itemsize == 8 && (strcmp(f, "q") == 0 || strcmp(f, "l") == 0);
}

/* The borrowed input buffer, checked: 1-D, C-contiguous int64. */
static int
get_input_buffer(PyObject *numbers, Py_buffer *view)
{
    if (PyObject_GetBuffer(numbers, view, PyBUF_FORMAT | PyBUF_STRIDES) < 0) {
        return -1;
    }
    if (!is_int64_format(view)) {
        PyErr_Format(PyExc_TypeError,
                     "process_numbers(): numbers must hold int64 values, "
                     "got a buffer of format '%s' (itemsize %zd)",
                     view->format ? view->format : "B", view->itemsize);
    }
    else if (view->ndim != 1) {
        PyErr_Format(PyExc_ValueError,
                     "process_numbers(): numbers must be 1-D, got %d "
                     "dimensions",
                     view->ndim);
    }
    else if (!PyBuffer_IsContiguous(view, 'C')) {
        PyErr_SetString(PyExc_ValueError,
                        "process_numbers(): numbers must be C-contiguous");
    }
    else {
        return 0;
    }
    PyBuffer_Release(view);
    return -1;
}

/* Copy a list or tuple of ints into dst, checking each item. */
static int
copy_sequence(PyObject *seq, int64_t *dst)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *idx;
    char arg[40];
    int overflow;

    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyLong_CheckExact(items[i])) { /* the common case, no call */
            idx = Py_NewRef(items[i]);
        }
        else {
            PyOS_snprintf(arg, sizeof(arg), "numbers[%zd]", i);
            idx = as_int(items[i], "process_numbers", arg, "an int");
            if (idx == NULL) {
                return -1;
            }
        }
        dst[i] = PyLong_AsLongLongAndOverflow(idx, &overflow);
        Py_DECREF(idx);
        if (overflow != 0) {
            PyErr_Format(PyExc_OverflowError,
                         "process_numbers(): numbers[%zd] does not fit in a "
                         "signed 64-bit integer",
                         i);
            return -1;
        }
    }
    return 0;
}

static int
parse_rounds(PyObject *obj, int64_t *rounds)
{
    PyObject *idx;
    int overflow;

    if (obj == NULL) {
        *rounds = 1000;
        return 0;
    }
    idx = as_int(obj, "process_numbers", "rounds", "an int");
    if (idx == NULL) {
        return -1;
    }
    *rounds = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (*rounds == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || *rounds < 0) {
        PyErr_Format(PyExc_ValueError,
                     "process_numbers(): rounds must be between 0 and "
                     "2**63 - 1, got %R",
                     obj);
        return -1;
    }
    return 0;
}

/* The result array, numpy.empty(n, dtype=numpy.int64), and its memory. */
static PyObject *
new_int64_array(Py_ssize_t n, Py_buffer *view)
{
    PyObject *numpy, *arr;

    numpy = PyImport_ImportModule("numpy");
    if (numpy == NULL) {
        return NULL;
    }
    arr = PyObject_CallMethod(numpy, "empty", "(ns)", n, "int64");
    Py_DECREF(numpy);
    if (arr == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(arr, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) <
        0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* Fill ctx from the arguments: the input (borrowed buffer, or copied into
 * the result array and processed in place) and the chunk size. */
static int
process_prepare(process_ctx *ctx, PyObject *numbers, PyObject *rounds)
{
    PyObject *seq;

    if (parse_rounds(rounds, &ctx->rounds) < 0) {
        return -1;
    }
    if (PyObject_CheckBuffer(numbers)) {
        if (get_input_buffer(numbers, &ctx->in) < 0) {
            return -1;
        }
        ctx->has_in = 1;
        ctx->n = ctx->in.len / 8;
        ctx->result = new_int64_array(ctx->n, &ctx->out);
        if (ctx->result == NULL) {
            return -1;
        }
        ctx->src = ctx->in.buf;
    }
    else if (PyList_Check(numbers) || PyTuple_Check(numbers)) {
        seq = PySequence_Fast(numbers, "");
        if (seq == NULL) {
            return -1;
        }
        ctx->n = PySequence_Fast_GET_SIZE(seq);
        ctx->result = new_int64_array(ctx->n, &ctx->out);
        if (ctx->result == NULL || copy_sequence(seq, ctx->out.buf) < 0) {
            Py_DECREF(seq);
            return -1;
        }
        Py_DECREF(seq);
        ctx->src = ctx->out.buf;
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "process_numbers(): numbers must be a list of ints or "
                     "an int64 buffer (numpy array), not %.100s",
                     Py_TYPE(numbers)->tp_name);
        return -1;
    }
    ctx->dst = ctx->out.buf;
    int64_t per = ctx->rounds > 0 ? CHUNK_WORK / ctx->rounds : CHUNK_WORK;
    ctx->chunk_len = per > 0 ? (Py_ssize_t)per : 1;
    if ((ctx->n + ctx->chunk_len - 1) / ctx->chunk_len > MAX_CHUNKS) {
        ctx->chunk_len = (ctx->n + MAX_CHUNKS - 1) / MAX_CHUNKS;
    }
    return 0;
}

static PyObject *
process_impl(PyObject *args, PyObject *kwargs, int blocking)
{
    static char *kwlist[] = {"numbers", "rounds", NULL};
    PyObject *numbers, *rounds = NULL;
    process_ctx *ctx;
    size_t nchunks;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:process_numbers",
                                     kwlist, &numbers, &rounds)) {
        return NULL;
    }
    ctx = ctx_alloc(sizeof(*ctx));
    if (ctx == NULL) {
        return NULL;
    }
    if (process_prepare(ctx, numbers, rounds) < 0) {
        process_release(ctx); /* never submitted: ours to free */
        return NULL;
    }
    nchunks = (size_t)((ctx->n + ctx->chunk_len - 1) / ctx->chunk_len);
    return blocking ? offloop_submit_chunks_blocking(nchunks, process_chunk,
                                                     process_complete,
                                                     process_release, ctx)
                    : offloop_submit_chunks(nchunks, process_chunk,
                                            process_complete,
                                            process_release, ctx);
}

static PyObject *
process_numbers(PyObject *module, PyObject *args, PyObject *kwargs)
{
    return process_impl(args, kwargs, 0);
}

static PyObject *
process_numbers_blocking(PyObject *module, PyObject *args, PyObject *kwargs)
{
    return process_impl(args, kwargs, 1);
}

/* ---- module --------------------------------------------------------- */

static PyObject *
get_live_contexts(PyObject *module, PyObject *unused)
{
    return PyLong_FromSsize_t(live_contexts);
}

#define KW (PyCFunction)(void (*)(void))

static PyMethodDef native_methods[] = {
    {"double", double_, METH_O,
     "double($module, x, /)\n--\n\n"
     "2 * x, computed on offloop's pool; returns an awaitable future."},
    {"double_blocking", double_blocking, METH_O,
     "double_blocking($module, x, /)\n--\n\n2 * x, waiting for the pool."},
    {"double_batched", double_batched, METH_O,
     "double_batched($module, x, /)\n--\n\n"
     "(2 * x, size of the batch it ran in): calls waiting together share\n"
     "one run (offloop_submit_batch).  Returns an awaitable future."},
    {"double_batched_blocking", double_batched_blocking, METH_O,
     "double_batched_blocking($module, x, /)\n--\n\n"
     "double_batched(), waiting for the pool."},
    {"sum_squares", KW sum_squares, METH_FASTCALL,
     "sum_squares($module, a, b, /)\n--\n\n"
     "a*a + b*b on offloop's pool; returns an awaitable future."},
    {"sum_squares_blocking", KW sum_squares_blocking, METH_FASTCALL,
     "sum_squares_blocking($module, a, b, /)\n--\n\n"
     "a*a + b*b, waiting for the pool."},
    {"process_numbers", KW process_numbers, METH_VARARGS | METH_KEYWORDS,
     "process_numbers($module, /, numbers, rounds=1000)\n--\n\n"
     "For each x, `rounds` times x = (x + 1) * 2 % 1_000_000_007 (int64);\n"
     "split across the pool.  Returns a future of an int64 array."},
    {"process_numbers_blocking", KW process_numbers_blocking,
     METH_VARARGS | METH_KEYWORDS,
     "process_numbers_blocking($module, /, numbers, rounds=1000)\n--\n\n"
     "process_numbers(), waiting for the pool."},
    {"live_contexts", get_live_contexts, METH_NOARGS,
     "live_contexts($module, /)\n--\n\n"
     "Contexts allocated and not yet released (a leak check)."},
    {NULL, NULL, 0, NULL},
};

static int
native_exec(PyObject *module)
{
    /* Reads offloop's C API table; ImportError if offloop is missing or
     * of another ABI version. */
    return offloop_import();
}

static PyModuleDef_Slot native_slots[] = {
    {Py_mod_exec, native_exec},
    {0, NULL},
};

static PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "native_ext._native",
    .m_doc = "C functions awaitable through offloop (an example).",
    .m_size = 0,
    .m_methods = native_methods,
    .m_slots = native_slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}

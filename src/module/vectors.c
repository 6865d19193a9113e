/* The vector kernels' Python face: argument parsing, dispatch, results.
 *
 * cosine_similarity, batch_normalize, cosine_similarities and top_k, each
 * awaitable and with a blocking twin (name + "_blocking").  Every argument
 * is checked here, before a job exists in the pool: a bad one raises
 * TypeError or ValueError naming it, and nothing is queued.
 *
 * DESIGN
 *
 * Buffers.  A float32 C-contiguous buffer (numpy array, memoryview,
 * array.array('f'), ctypes array) is used in place: the job holds a
 * Py_buffer on it from the call until its kind's release(), which runs
 * with the GIL once the job has ended, so the caller may drop its array
 * meanwhile.  Anything else goes through offloop._vectors._as_float32
 * (one copy, with the GIL, at the call), and the job holds the copy.
 * Outputs are numpy arrays allocated here at submit (numpy.empty, cached
 * in the module state) or the caller's `out`, held the same way; workers
 * write into them through raw pointers and never touch an object.
 *
 * Dispatch.  A call whose work (queries x rows x dimensions) is tiny runs
 * inline on the calling thread: a pool round trip costs two cross-thread
 * wake-ups, far more than a 768-d cosine.  A big call is cut into chunks
 * of a few hundred KB of rows (and, for many queries, of query blocks) so
 * that every worker gets several of them; the pool checks for
 * cancellation before each chunk.  top_k keeps one partial "best k" list
 * per row block and query; finish() merges them on the last worker and
 * writes the sorted result into the output arrays.
 *
 * Payload fields are written with the GIL before submit and read-only on
 * workers, except the output memory (disjoint per chunk), the top-k
 * partial lists (each owned by the one chunk that fills it, then by
 * finish()) and `value` (cosine_similarity: one chunk).
 */
#include "binding.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

/* Work (multiply-adds) up to which a call runs inline on the loop
 * thread: about 5 us of one core, well under a pool round trip. */
#define INLINE_WORK (1u << 16)
/* Rows of m per chunk: about this many bytes. */
#define CHUNK_BYTES (256u * 1024u)
/* Queries per chunk: at most this many bytes of q, and at most
 * QBLOCK_MAX (their inverse norms live on the worker's stack). */
#define QBLOCK_BYTES (256u * 1024u)
#define QBLOCK_MAX 256u
/* Split big calls into at least this many chunks per worker, so a
 * worker slowed by a neighbour does not hold up the others. */
#define CHUNKS_PER_WORKER 4u
/* top_k: entries of partial lists (rows blocks x queries x k) kept
 * before the row blocks are made coarser (12 bytes an entry). */
#define TOPK_PARTIAL_MAX (1u << 18)

typedef struct {
    Py_buffer view; /* valid while `held` */
    int held;
    PyObject *copy; /* strong: the converted float32 copy, or NULL */
    float *data;
    size_t rows, cols; /* 1-D: rows = 1 */
    int ndim;
} vec_buf;

typedef struct {
    vec_buf in[2];     /* (a, b), (x), (q, m) */
    vec_buf out[2];    /* normalized rows; scores; (scores, indices) */
    PyObject *result;  /* strong: what complete() returns, or NULL */
    size_t nq, n, d;   /* queries, rows, dimensions */
    size_t qb, qblocks; /* queries per chunk, query blocks */
    size_t rb, rblocks; /* rows per chunk, row blocks */
    size_t k;
    int normalized;
    double value;      /* cosine_similarity */
    ol_topk *lists;    /* top_k: rblocks x nq partial lists (malloc) */
    void *storage;     /* their entries (malloc): indices, then scores */
    int64_t *pindices; /* into storage, k per list */
    float *pscores;
} vec_payload;

#define PAYLOAD(job) OL_PAYLOAD((ol_pyjob *)(job), vec_payload)

/* ---- arguments ----------------------------------------------------- */

/* Fill `out` (npos + nkwonly slots) from a vectorcall.  The first `nreq`
 * parameters are required.  Unset optional slots are left NULL. */
static int
parse_args(const char *fname, const char *const *names, int npos,
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

static void
buf_release(vec_buf *b)
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
static int
get_input(vec_buf *b, PyObject *obj, const char *fname, const char *name)
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
        if (kind == 'f') {
            return buf_shape(b, fname, name);
        }
        buf_release(b); /* float64: converted below */
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
static int
get_output(vec_buf *b, PyObject *obj, const char *fname, const char *name,
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
static PyObject *
new_array(ol_state *st, size_t rows, size_t cols, int int64)
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
static int
checked_size(size_t a, size_t b, size_t c, size_t *out, const char *fname,
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

/* True if the call is small enough to run inline. */
static int
tiny(size_t nq, size_t n, size_t d)
{
    size_t w;

    return !__builtin_mul_overflow(nq, n, &w) &&
           !__builtin_mul_overflow(w, d, &w) && w <= INLINE_WORK;
}

static size_t
ceil_div(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

/* The pool size, read at most every 100 ms: ol_pool_stats() takes the
 * pool lock, which busy workers take per chunk, and a loop thread waiting
 * for it behind a preempted worker is lag.  A stale value after
 * configure() only makes the chunks a little too big or too small.  GIL
 * held (the cache is a plain static). */
static size_t
pool_threads(void)
{
    static size_t threads;
    static struct timespec last;
    struct timespec now;
    ol_pool_stats_t ps;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (threads == 0 || now.tv_sec - last.tv_sec > 1 ||
        (now.tv_sec - last.tv_sec) * 1000000000L + now.tv_nsec -
                last.tv_nsec > 100000000L) {
        ol_pool_stats(&ps);
        threads = ps.threads ? ps.threads : 1;
        last = now;
    }
    return threads;
}

/* Cut nq queries x n rows of d floats into chunks.  `entries_per_row_block`
 * is the top-k partial-list cost of one row block (0: none). */
static void
plan(vec_payload *p, int inline_run, size_t entries_per_row_block)
{
    size_t min_chunks, rmin, row_bytes = p->d * sizeof(float);

    if (inline_run) {
        p->qb = p->nq;
        p->qblocks = 1;
        p->rb = p->n;
        p->rblocks = 1;
        return;
    }
    min_chunks = pool_threads() * CHUNKS_PER_WORKER;
    p->qb = QBLOCK_BYTES / row_bytes;
    p->qb = p->qb < 1 ? 1 : p->qb > QBLOCK_MAX ? QBLOCK_MAX : p->qb;
    p->qb = p->qb > p->nq ? p->nq : p->qb;
    p->qblocks = ceil_div(p->nq, p->qb);

    p->rb = CHUNK_BYTES / row_bytes;
    p->rblocks = ceil_div(p->n, p->rb ? p->rb : 1);
    if (entries_per_row_block > 0 &&
        p->rblocks > TOPK_PARTIAL_MAX / entries_per_row_block) {
        p->rblocks = TOPK_PARTIAL_MAX / entries_per_row_block;
    }
    /* Enough chunks for every worker, even past the partial-list budget:
     * idle workers cost more than a few more lists. */
    rmin = ceil_div(min_chunks, p->qblocks);
    if (p->rblocks < rmin) {
        p->rblocks = rmin;
    }
    if (p->rblocks > p->n) {
        p->rblocks = p->n;
    }
    p->rb = ceil_div(p->n, p->rblocks);
    p->rblocks = ceil_div(p->n, p->rb);
}

/* Chunk `c` -> its rows [*r0, *r1) and queries [*q0, *q1). */
static void
chunk_range(const vec_payload *p, size_t c, size_t *r0, size_t *r1,
            size_t *q0, size_t *q1)
{
    size_t rblock = c / p->qblocks, qblock = c % p->qblocks;

    *r0 = rblock * p->rb;
    *r1 = *r0 + p->rb < p->n ? *r0 + p->rb : p->n;
    *q0 = qblock * p->qb;
    *q1 = *q0 + p->qb < p->nq ? *q0 + p->qb : p->nq;
}

/* ---- kinds --------------------------------------------------------- */

static void
vec_release(ol_pyjob *job)
{
    vec_payload *p = OL_PAYLOAD(job, vec_payload);

    buf_release(&p->in[0]);
    buf_release(&p->in[1]);
    buf_release(&p->out[0]);
    buf_release(&p->out[1]);
    Py_CLEAR(p->result);
    free(p->lists);
    free(p->storage);
    p->lists = NULL;
    p->storage = NULL;
}

static PyObject *
result_complete(ol_pyjob *job)
{
    return Py_NewRef(OL_PAYLOAD(job, vec_payload)->result);
}

static int
cosine_work(ol_job_t *job, size_t chunk)
{
    vec_payload *p = PAYLOAD(job);

    p->value = ol_cosine_f32(p->in[0].data, p->in[1].data, p->d);
    return 0;
}

static PyObject *
cosine_complete(ol_pyjob *job)
{
    return PyFloat_FromDouble(OL_PAYLOAD(job, vec_payload)->value);
}

static const ol_jobkind cosine_kind = {.name = "cosine_similarity",
                                       .work = cosine_work,
                                       .complete = cosine_complete,
                                       .release = vec_release};

static int
normalize_work(ol_job_t *job, size_t chunk)
{
    vec_payload *p = PAYLOAD(job);
    size_t r0, r1, q0, q1;

    chunk_range(p, chunk, &r0, &r1, &q0, &q1);
    ol_normalize_rows_f32(p->in[0].data, p->out[0].data, p->d, r0, r1);
    return 0;
}

static const ol_jobkind normalize_kind = {.name = "batch_normalize",
                                          .work = normalize_work,
                                          .complete = result_complete,
                                          .release = vec_release};

/* Chunk `chunk` of cosine_similarities (lists == NULL) or top_k: the
 * queries' inverse norms, then the scan.  The norms are recomputed per
 * chunk (1/rows of its work) rather than on the loop thread at submit. */
static int
scan_chunk(vec_payload *p, size_t chunk, int topk)
{
    float stack[QBLOCK_MAX], *inv = stack;
    size_t r0, r1, q0, q1, i;
    ol_topk *lists = NULL;

    chunk_range(p, chunk, &r0, &r1, &q0, &q1);
    if (q1 - q0 > QBLOCK_MAX) { /* only inline calls have such blocks */
        inv = malloc((q1 - q0) * sizeof(float));
        if (inv == NULL) {
            return OL_ENOMEM;
        }
    }
    inv[0] = 0.0f; /* q1 > q0; tells GCC the scratch is written */
    for (i = q0; i < q1; i++) {
        inv[i - q0] = ol_inv_norm_f32(p->in[0].data + i * p->d, p->d);
    }
    if (topk) {
        /* This chunk's lists: row block r0 / rb, queries [q0, q1). */
        lists = p->lists + (r0 / p->rb) * p->nq + q0;
        for (i = 0; i < q1 - q0; i++) {
            size_t at = (size_t)(lists + i - p->lists) * p->k;
            ol_topk_init(&lists[i], p->pscores + at, p->pindices + at,
                         p->k);
        }
        ol_topk_rows_f32(p->in[0].data + q0 * p->d, inv, q1 - q0,
                         p->in[1].data, p->d, r0, r1, p->normalized, lists);
    }
    else {
        ol_cosine_rows_f32(p->in[0].data + q0 * p->d, inv, q1 - q0,
                           p->in[1].data, p->d, r0, r1, 0,
                           p->out[0].data + q0 * p->n, p->n);
    }
    if (inv != stack) {
        free(inv);
    }
    return 0;
}

static int
sims_work(ol_job_t *job, size_t chunk)
{
    return scan_chunk(PAYLOAD(job), chunk, 0);
}

static const ol_jobkind sims_kind = {.name = "cosine_similarities",
                                     .work = sims_work,
                                     .complete = result_complete,
                                     .release = vec_release};

static int
topk_work(ol_job_t *job, size_t chunk)
{
    return scan_chunk(PAYLOAD(job), chunk, 1);
}

/* On the last worker: merge each query's row-block lists into the first,
 * sort it, and write it out. */
static int
topk_finish(ol_job_t *job)
{
    vec_payload *p = PAYLOAD(job);
    float *scores = p->out[0].data;
    int64_t *indices = (int64_t *)(void *)p->out[1].data;
    size_t i, r;

    for (i = 0; i < p->nq; i++) {
        ol_topk *dst = &p->lists[i];
        for (r = 1; r < p->rblocks; r++) {
            ol_topk_merge(dst, &p->lists[r * p->nq + i]);
        }
        ol_topk_sort(dst);
        /* count == k: k <= n, and every row was offered. */
        memcpy(scores + i * p->k, dst->scores, dst->count * sizeof(float));
        memcpy(indices + i * p->k, dst->indices,
               dst->count * sizeof(int64_t));
    }
    return 0;
}

static const ol_jobkind topk_kind = {.name = "top_k",
                                     .work = topk_work,
                                     .finish = topk_finish,
                                     .complete = result_complete,
                                     .release = vec_release};

/* ---- submission ---------------------------------------------------- */

static PyObject *
submit(ol_state *st, ol_pyjob *job, int blocking)
{
    vec_payload *p = OL_PAYLOAD(job, vec_payload);
    int inline_run = p->qblocks * p->rblocks == 1 && tiny(p->nq, p->n, p->d);

    job->core.nchunks = p->qblocks * p->rblocks;
    return blocking ? ol_submit_blocking(st, job, inline_run)
                    : ol_submit_async(st, job, inline_run);
}

static ol_pyjob *
new_job(const ol_jobkind *kind)
{
    return ol_pyjob_new(kind, sizeof(vec_payload), 1);
}

/* ---- cosine_similarity --------------------------------------------- */

static PyObject *
cosine_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames, int blocking)
{
    static const char *const names[] = {"a", "b"};
    static const char fname[] = "cosine_similarity";
    PyObject *argv[2];
    ol_pyjob *job;
    vec_payload *p;

    if (kwnames == NULL && nargs == 2) {
        argv[0] = args[0];
        argv[1] = args[1];
    }
    else if (parse_args(fname, names, 2, 0, 2, args, nargs, kwnames,
                        argv) < 0) {
        return NULL;
    }
    if ((job = new_job(&cosine_kind)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    if (get_input(&p->in[0], argv[0], fname, "a") < 0 ||
        get_input(&p->in[1], argv[1], fname, "b") < 0) {
        goto error;
    }
    if (p->in[0].ndim != 1 || p->in[1].ndim != 1) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s must be 1-D, got %d dimensions", fname,
                     p->in[0].ndim != 1 ? "a" : "b",
                     p->in[0].ndim != 1 ? p->in[0].ndim : p->in[1].ndim);
        goto error;
    }
    if (p->in[0].cols != p->in[1].cols) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): a and b must have the same length, got %zu "
                     "and %zu",
                     fname, p->in[0].cols, p->in[1].cols);
        goto error;
    }
    p->nq = p->n = 1;
    p->d = p->in[0].cols;
    p->qb = p->qblocks = p->rb = p->rblocks = 1;
    return submit(ol_get_state(module), job, blocking);

error:
    ol_pyjob_free(job);
    return NULL;
}

static PyObject *
cosine_similarity(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    return cosine_impl(module, args, nargs, kwnames, 0);
}

static PyObject *
cosine_similarity_blocking(PyObject *module, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    return cosine_impl(module, args, nargs, kwnames, 1);
}

/* ---- batch_normalize ----------------------------------------------- */

static PyObject *
normalize_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames, int blocking)
{
    static const char *const names[] = {"x", "out"};
    static const char fname[] = "batch_normalize";
    ol_state *st = ol_get_state(module);
    PyObject *argv[2];
    ol_pyjob *job;
    vec_payload *p;
    vec_buf *x;
    size_t bytes;

    if (parse_args(fname, names, 1, 1, 1, args, nargs, kwnames, argv) < 0) {
        return NULL;
    }
    if ((job = new_job(&normalize_kind)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    x = &p->in[0];
    if (get_input(x, argv[0], fname, "x") < 0) {
        goto error;
    }
    if (x->ndim != 2) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): x must be 2-D (rows x dimensions), got %d "
                     "dimension",
                     fname, x->ndim);
        goto error;
    }
    if (argv[1] != NULL && argv[1] != Py_None) {
        p->result = Py_NewRef(argv[1]);
    }
    else if (x->copy != NULL) {
        p->result = Py_NewRef(x->copy); /* normalize the copy in place */
    }
    else {
        if (checked_size(x->rows, x->cols, sizeof(float), &bytes, fname,
                         "x is too big: the result") < 0) {
            goto error;
        }
        p->result = new_array(st, x->rows, x->cols, 0);
        if (p->result == NULL) {
            goto error;
        }
    }
    if (get_output(&p->out[0], p->result, fname, "out", 2, x->rows,
                   x->cols) < 0) {
        goto error;
    }
    bytes = x->rows * x->cols * sizeof(float);
    if (p->out[0].data != x->data &&
        (char *)p->out[0].data < (char *)x->data + bytes &&
        (char *)x->data < (char *)p->out[0].data + bytes) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): out overlaps x without being x: pass out=x "
                     "to normalize in place",
                     fname);
        goto error;
    }
    p->nq = 1;
    p->n = x->rows;
    p->d = x->cols;
    plan(p, tiny(1, p->n, p->d), 0);
    return submit(st, job, blocking);

error:
    ol_pyjob_free(job);
    return NULL;
}

static PyObject *
batch_normalize(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    return normalize_impl(module, args, nargs, kwnames, 0);
}

static PyObject *
batch_normalize_blocking(PyObject *module, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
    return normalize_impl(module, args, nargs, kwnames, 1);
}

/* ---- cosine_similarities and top_k --------------------------------- */

/* q (D,) or (Q, D) and m (N, D) into in[0] and in[1]. */
static int
get_query_matrix(vec_payload *p, PyObject *q, PyObject *m,
                 const char *fname)
{
    if (get_input(&p->in[0], q, fname, "q") < 0 ||
        get_input(&p->in[1], m, fname, "m") < 0) {
        return -1;
    }
    if (p->in[1].ndim != 2) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): m must be 2-D (rows x dimensions), got %d "
                     "dimension",
                     fname, p->in[1].ndim);
        return -1;
    }
    if (p->in[0].cols != p->in[1].cols) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): q and m must have the same number of "
                     "dimensions (last axis), got %zu and %zu",
                     fname, p->in[0].cols, p->in[1].cols);
        return -1;
    }
    p->nq = p->in[0].rows;
    p->n = p->in[1].rows;
    p->d = p->in[1].cols;
    return 0;
}

static PyObject *
sims_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames, int blocking)
{
    static const char *const names[] = {"q", "m"};
    static const char fname[] = "cosine_similarities";
    ol_state *st = ol_get_state(module);
    PyObject *argv[2];
    ol_pyjob *job;
    vec_payload *p;
    size_t bytes;

    if (parse_args(fname, names, 2, 0, 2, args, nargs, kwnames, argv) < 0) {
        return NULL;
    }
    if ((job = new_job(&sims_kind)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    if (get_query_matrix(p, argv[0], argv[1], fname) < 0 ||
        checked_size(p->nq, p->n, sizeof(float), &bytes, fname,
                     "q and m are too big: Q x N scores") < 0) {
        goto error;
    }
    p->result = new_array(st, p->in[0].ndim == 2 ? p->nq : 0, p->n, 0);
    if (p->result == NULL ||
        get_output(&p->out[0], p->result, fname, "result",
                   p->in[0].ndim, p->nq, p->n) < 0) {
        goto error;
    }
    plan(p, tiny(p->nq, p->n, p->d), 0);
    return submit(st, job, blocking);

error:
    ol_pyjob_free(job);
    return NULL;
}

static PyObject *
cosine_similarities(PyObject *module, PyObject *const *args,
                    Py_ssize_t nargs, PyObject *kwnames)
{
    return sims_impl(module, args, nargs, kwnames, 0);
}

static PyObject *
cosine_similarities_blocking(PyObject *module, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
    return sims_impl(module, args, nargs, kwnames, 1);
}

/* k: an int from 1 to n. */
static int
parse_k(PyObject *obj, size_t n, size_t *k, const char *fname)
{
    long long v;

    if (obj == NULL) {
        v = 10;
    }
    else if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s(): k must be an int, not %.100s",
                     fname, Py_TYPE(obj)->tp_name);
        return -1;
    }
    else {
        v = PyLong_AsLongLong(obj);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            v = -1;
        }
    }
    if (v < 1 || (unsigned long long)v > n) {
        if (obj == NULL || v != -1) {
            PyErr_Format(PyExc_ValueError,
                         "%s(): k must be between 1 and the number of rows "
                         "of m (%zu), got %lld",
                         fname, n, v);
        }
        else {
            PyErr_Format(PyExc_ValueError,
                         "%s(): k must be between 1 and the number of rows "
                         "of m (%zu), got %R",
                         fname, n, obj);
        }
        return -1;
    }
    *k = (size_t)v;
    return 0;
}

/* Output arrays and partial lists for top_k. */
static int
topk_alloc(ol_state *st, vec_payload *p, int ndim, const char *fname)
{
    size_t bytes, lists;
    PyObject *scores, *indices;

    if (checked_size(p->nq, p->k, sizeof(int64_t), &bytes, fname,
                     "q and k are too big: Q x k results") < 0) {
        return -1;
    }
    scores = new_array(st, ndim == 2 ? p->nq : 0, p->k, 0);
    if (scores == NULL) {
        return -1;
    }
    indices = new_array(st, ndim == 2 ? p->nq : 0, p->k, 1);
    if (indices == NULL) {
        Py_DECREF(scores);
        return -1;
    }
    p->result = PyTuple_Pack(2, scores, indices);
    Py_DECREF(scores);
    Py_DECREF(indices);
    if (p->result == NULL ||
        get_output(&p->out[0], PyTuple_GET_ITEM(p->result, 0), fname,
                   "scores", ndim, p->nq, p->k) < 0) {
        return -1;
    }
    /* int64 indices: borrowed as raw memory (numpy made them). */
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(p->result, 1), &p->out[1].view,
                           PyBUF_RECORDS) < 0) {
        return -1;
    }
    p->out[1].held = 1;
    p->out[1].data = p->out[1].view.buf;
    /* nq * k fits (checked above); rblocks is bounded by plan(). */
    if (checked_size(p->rblocks, p->nq * p->k,
                     sizeof(float) + sizeof(int64_t), &bytes, fname,
                     "q and k are too big: partial lists") < 0) {
        return -1;
    }
    lists = p->rblocks * p->nq;
    p->lists = malloc(lists * sizeof(ol_topk));
    p->storage = malloc(bytes);
    if (p->lists == NULL || p->storage == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    p->pindices = p->storage; /* int64 first: malloc aligns it */
    p->pscores = (float *)(p->pindices + lists * p->k);
    return 0;
}

static PyObject *
topk_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames, int blocking)
{
    static const char *const names[] = {"q", "m", "k", "normalized"};
    static const char fname[] = "top_k";
    ol_state *st = ol_get_state(module);
    PyObject *argv[4];
    ol_pyjob *job;
    vec_payload *p;
    size_t per_block;

    if (parse_args(fname, names, 3, 1, 2, args, nargs, kwnames, argv) < 0) {
        return NULL;
    }
    if ((job = new_job(&topk_kind)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    if (get_query_matrix(p, argv[0], argv[1], fname) < 0 ||
        parse_k(argv[2], p->n, &p->k, fname) < 0) {
        goto error;
    }
    if (argv[3] != NULL) {
        p->normalized = PyObject_IsTrue(argv[3]);
        if (p->normalized < 0) {
            goto error;
        }
    }
    per_block = __builtin_mul_overflow(p->nq, p->k, &per_block)
                    ? TOPK_PARTIAL_MAX
                    : per_block;
    plan(p, tiny(p->nq, p->n, p->d), per_block ? per_block : 1);
    if (topk_alloc(st, p, p->in[0].ndim, fname) < 0) {
        goto error;
    }
    return submit(st, job, blocking);

error:
    ol_pyjob_free(job);
    return NULL;
}

static PyObject *
top_k(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
      PyObject *kwnames)
{
    return topk_impl(module, args, nargs, kwnames, 0);
}

static PyObject *
top_k_blocking(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    return topk_impl(module, args, nargs, kwnames, 1);
}

/* ---- ISA switch (tests, benchmarks) -------------------------------- */

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

/* ---- docstrings ---------------------------------------------------- */

/* numpydoc, shared by each call and its blocking twin: summary and notes,
 * Parameters, then Returns (which differs), then Raises and Examples. */

#define INPUTS_DOC                                                          \
    "Inputs are used in place, without a copy, when they are float32 and\n" \
    "C-contiguous buffers (numpy arrays, memoryview, array.array('f')):\n"  \
    "the call holds them until it ends, so the caller may drop them.\n"     \
    "float64 arrays and sequences of numbers are converted to float32\n"    \
    "once, at the call (a copy; values beyond float32's range become\n"     \
    "+-inf).  Bad arguments raise at the call; nothing is queued.\n\n"

#define NAN_DOC                                                             \
    "NaN and inf follow IEEE arithmetic: a vector holding them scores\n"    \
    "NaN (never a crash).  A zero vector scores 0.  Vectors whose\n"        \
    "squared norm overflows or underflows float32 (elements beyond about\n" \
    "1e19, or all below about 1e-19) are not supported: rescale them.\n\n"

#define RAISES_HEAD "Raises\n------\n"
#define DATA_ERRORS                                                         \
    "TypeError\n    An argument is not float32/float64 data.\n"             \
    "ValueError\n    An argument is empty, of the wrong ndim or not\n"      \
    "    C-contiguous"

#define COSINE_DOC_HEAD                                                     \
    "Cosine similarity of two vectors: dot(a, b) / (|a| |b|).\n\n"          \
    "Runs inline on the calling thread (a 768-d pair costs well under a\n"  \
    "microsecond); very long vectors run on the pool.\n\n"                  \
    INPUTS_DOC NAN_DOC                                                      \
    "Parameters\n----------\n"                                              \
    "a, b : array_like, float32, shape (D,)\n"                              \
    "    Vectors of the same length D >= 1.\n\n"
#define COSINE_DOC_TAIL                                                     \
    RAISES_HEAD DATA_ERRORS "; the lengths differ.\n\n"

PyDoc_STRVAR(cosine_similarity_doc,
             "cosine_similarity($module, a, b)\n--\n\n" COSINE_DOC_HEAD
             "Returns\n-------\n"
             "asyncio.Future[float]\n"
             "    Done already when the call ran inline.\n\n"
             COSINE_DOC_TAIL
             "Examples\n--------\n"
             ">>> a = numpy.ones(768, numpy.float32)\n"
             ">>> await offloop.cosine_similarity(a, a)\n"
             "1.0\n");

PyDoc_STRVAR(cosine_similarity_blocking_doc,
             "cosine_similarity_blocking($module, a, b)\n--\n\n"
             COSINE_DOC_HEAD "Returns\n-------\nfloat\n\n" COSINE_DOC_TAIL);

#define NORMALIZE_DOC_HEAD                                                  \
    "Scale each row of x to unit L2 norm.\n\n"                              \
    "Zero rows stay zero.  A big x is split into chunks of rows across\n"   \
    "every worker.\n\n" INPUTS_DOC                                          \
    "NaN and inf follow IEEE arithmetic: a row holding them becomes NaN\n"  \
    "or zero, never a crash.  Rows whose squared norm overflows float32\n"  \
    "(elements beyond about 1e19) become zero.\n\n"                         \
    "Parameters\n----------\n"                                              \
    "x : array_like, float32, shape (N, D)\n"                               \
    "out : numpy.ndarray or writable buffer, float32, shape (N, D), "       \
    "optional\n"                                                            \
    "    Where to write the rows; may be x itself (in place).  If the\n"    \
    "    call is cancelled, out holds some rows normalized and the\n"       \
    "    others untouched.  Default: a new array (or, when x was\n"         \
    "    converted, the converted copy).\n\n"
#define NORMALIZE_DOC_TAIL                                                  \
    RAISES_HEAD                                                             \
    "TypeError\n    x is not float32/float64 data; out is not float32.\n"   \
    "ValueError\n    x is empty, not 2-D or not C-contiguous; out has\n"    \
    "    another shape, is read-only, or overlaps x without being x.\n\n"

PyDoc_STRVAR(batch_normalize_doc,
             "batch_normalize($module, x, *, out=None)\n--\n\n"
             NORMALIZE_DOC_HEAD
             "Returns\n-------\n"
             "asyncio.Future[numpy.ndarray]\n"
             "    Resolves to out (float32, shape (N, D)).\n\n"
             NORMALIZE_DOC_TAIL
             "Examples\n--------\n"
             ">>> x = numpy.random.rand(100_000, 768).astype(numpy.float32)\n"
             ">>> y = await offloop.batch_normalize(x, out=x)  # in place\n"
             ">>> y is x\n"
             "True\n");

PyDoc_STRVAR(batch_normalize_blocking_doc,
             "batch_normalize_blocking($module, x, *, out=None)\n--\n\n"
             NORMALIZE_DOC_HEAD "Returns\n-------\nnumpy.ndarray\n"
             "    out.\n\n" NORMALIZE_DOC_TAIL);

#define SIMS_DOC_HEAD                                                       \
    "Cosine similarity of each query with each row of m.\n\n"               \
    "Each row's norm is computed in the same pass as its dot products.\n"   \
    "A big call is split into chunks of rows (and of queries) across\n"    \
    "every worker.\n\n" INPUTS_DOC NAN_DOC                                  \
    "Parameters\n----------\n"                                              \
    "q : array_like, float32, shape (D,) or (Q, D)\n"                       \
    "m : array_like, float32, shape (N, D)\n\n"
#define SIMS_DOC_TAIL                                                       \
    RAISES_HEAD DATA_ERRORS "; D differs; the result would not\n"           \
    "    fit in memory.\n\n"

PyDoc_STRVAR(cosine_similarities_doc,
             "cosine_similarities($module, q, m)\n--\n\n" SIMS_DOC_HEAD
             "Returns\n-------\n"
             "asyncio.Future[numpy.ndarray]\n"
             "    float32 scores, shape (N,) for q of shape (D,), (Q, N)\n"
             "    for q of shape (Q, D).\n\n"
             SIMS_DOC_TAIL
             "Examples\n--------\n"
             ">>> scores = await offloop.cosine_similarities(q, m)\n");

PyDoc_STRVAR(cosine_similarities_blocking_doc,
             "cosine_similarities_blocking($module, q, m)\n--\n\n"
             SIMS_DOC_HEAD "Returns\n-------\nnumpy.ndarray\n"
             "    float32, shape (N,) or (Q, N).\n\n" SIMS_DOC_TAIL);

#define TOPK_DOC_HEAD                                                       \
    "The k rows of m most cosine-similar to each query, best first.\n\n"    \
    "The best k are kept during the scan; all N scores are never\n"         \
    "stored.  Equal scores: the lower index first.  NaN scores rank\n"      \
    "after every number (lower index first among them), so a NaN query\n"   \
    "gives rows 0..k-1 with NaN scores.  With normalized=True the rows\n"   \
    "are trusted to be unit length; a row holding inf may then score\n"    \
    "+-inf.\n\n" INPUTS_DOC NAN_DOC                                         \
    "Parameters\n----------\n"                                              \
    "q : array_like, float32, shape (D,) or (Q, D)\n"                       \
    "m : array_like, float32, shape (N, D)\n"                               \
    "k : int, default 10\n    From 1 to N.\n"                               \
    "normalized : bool, default False\n"                                    \
    "    m's rows are already unit length: skip their norms (faster).\n\n"
#define TOPK_DOC_TAIL                                                       \
    RAISES_HEAD                                                             \
    "TypeError\n    An argument is not float32/float64 data; k is not\n"   \
    "    an int.\n"                                                         \
    "ValueError\n    An argument is empty, of the wrong ndim or not\n"      \
    "    C-contiguous; D differs; k is not in [1, N].\n\n"

PyDoc_STRVAR(top_k_doc,
             "top_k($module, q, m, k=10, *, normalized=False)\n--\n\n"
             TOPK_DOC_HEAD
             "Returns\n-------\n"
             "asyncio.Future[tuple[numpy.ndarray, numpy.ndarray]]\n"
             "    (scores, indices): float32 and int64, shape (k,) for q\n"
             "    of shape (D,), (Q, k) for q of shape (Q, D).\n\n"
             TOPK_DOC_TAIL
             "Examples\n--------\n"
             ">>> scores, idx = await offloop.top_k(q, m, k=10)\n");

PyDoc_STRVAR(top_k_blocking_doc,
             "top_k_blocking($module, q, m, k=10, *, normalized=False)\n"
             "--\n\n" TOPK_DOC_HEAD
             "Returns\n-------\ntuple[numpy.ndarray, numpy.ndarray]\n"
             "    (scores, indices), as for the awaitable call.\n\n"
             TOPK_DOC_TAIL);

#define FASTCALL(fn) ((PyCFunction)(void (*)(void))(fn))
#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

PyMethodDef ol_vector_methods[] = {
    {"cosine_similarity", FASTCALL(cosine_similarity), FASTKW,
     cosine_similarity_doc},
    {"cosine_similarity_blocking", FASTCALL(cosine_similarity_blocking),
     FASTKW, cosine_similarity_blocking_doc},
    {"batch_normalize", FASTCALL(batch_normalize), FASTKW,
     batch_normalize_doc},
    {"batch_normalize_blocking", FASTCALL(batch_normalize_blocking), FASTKW,
     batch_normalize_blocking_doc},
    {"cosine_similarities", FASTCALL(cosine_similarities), FASTKW,
     cosine_similarities_doc},
    {"cosine_similarities_blocking", FASTCALL(cosine_similarities_blocking),
     FASTKW, cosine_similarities_blocking_doc},
    {"top_k", FASTCALL(top_k), FASTKW, top_k_doc},
    {"top_k_blocking", FASTCALL(top_k_blocking), FASTKW,
     top_k_blocking_doc},
    {"_set_isa", set_isa, METH_O,
     "_set_isa($module, name, /)\n--\n\nForce the kernels' ISA ('scalar', "
     "'avx2', 'avx512'); returns the previous one.  Tests only."},
    {"_isa", get_isa, METH_NOARGS,
     "_isa($module, /)\n--\n\nThe kernels' ISA in use."},
    {NULL, NULL, 0, NULL},
};

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

#include "vectors.h"

/* ---- kinds --------------------------------------------------------- */

static void
vec_release(ol_pyjob *job)
{
    vec_payload *p = OL_PAYLOAD(job, vec_payload);

    vec_buf_release(&p->in[0]);
    vec_buf_release(&p->in[1]);
    vec_buf_release(&p->out[0]);
    vec_buf_release(&p->out[1]);
    vec_buf_release(&p->scales);
    vec_buf_release(&p->rerank);
    Py_CLEAR(p->result);
    vec_batch_release(p);
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

    vec_pass_normalize_gate();
    vec_chunk_range(p, chunk, &r0, &r1, &q0, &q1);
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

    vec_chunk_range(p, chunk, &r0, &r1, &q0, &q1);
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
            size_t at = (size_t)(lists + i - p->lists) * p->kc;
            ol_topk_init(&lists[i], p->pscores + at, p->pindices + at,
                         p->kc);
        }
        vec_scan_topk(p, p->in[0].data + q0 * p->d, inv, q1 - q0, r0, r1,
                      lists);
    }
    else {
        vec_scan_sims(p, p->in[0].data + q0 * p->d, inv, q1 - q0, 0, r0, r1,
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
    vec_payload *p = PAYLOAD(job);

    return p->batch ? vec_batch_work(p, chunk, 0) : scan_chunk(p, chunk, 0);
}

static const ol_jobkind sims_kind = {.name = "cosine_similarities",
                                     .work = sims_work,
                                     .complete = result_complete,
                                     .release = vec_release};

static int
topk_work(ol_job_t *job, size_t chunk)
{
    vec_payload *p = PAYLOAD(job);

    return p->batch ? vec_batch_work(p, chunk, 1) : scan_chunk(p, chunk, 1);
}

/* On the last worker: merge each query's row-block lists into the first,
 * then sort it (or re-rank it) into the outputs. */
static int
topk_finish(ol_job_t *job)
{
    vec_payload *p = PAYLOAD(job);
    size_t i, r;

    if (p->batch != NULL) {
        return vec_batch_finish(p);
    }
    for (i = 0; i < p->nq; i++) {
        ol_topk *dst = &p->lists[i];
        for (r = 1; r < p->rblocks; r++) {
            ol_topk_merge(dst, &p->lists[r * p->nq + i]);
        }
        vec_topk_write(p, i, p->in[0].data + i * p->d, dst);
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
    int inline_run = p->qblocks * p->rblocks == 1 && vec_tiny(p->nq, p->n, p->d);

    job->core.nchunks = p->qblocks * p->rblocks;
    if (!inline_run &&
        (job->kind == &topk_kind || job->kind == &sims_kind)) {
        vec_make_batchable(job, job->kind);
    }
    return blocking ? ol_submit_blocking(st, job, inline_run)
                    : ol_submit_async(st, job, inline_run);
}

static ol_pyjob *
new_job(const ol_jobkind *kind)
{
    return ol_pyjob_new(kind, sizeof(vec_payload), 1);
}

/* ---- cosine_similarity --------------------------------------------- */

/* Borrow a and b as two 1-D float32 vectors of one length. */
static int
cosine_inputs(vec_buf in[2], PyObject *const *argv, const char *fname)
{
    if (vec_get_input(&in[0], argv[0], fname, "a") < 0 ||
        vec_get_input(&in[1], argv[1], fname, "b") < 0) {
        return -1;
    }
    if (in[0].ndim != 1 || in[1].ndim != 1) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s must be 1-D, got %d dimensions", fname,
                     in[0].ndim != 1 ? "a" : "b",
                     in[0].ndim != 1 ? in[0].ndim : in[1].ndim);
        return -1;
    }
    if (in[0].cols != in[1].cols) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): a and b must have the same length, got %zu "
                     "and %zu",
                     fname, in[0].cols, in[1].cols);
        return -1;
    }
    return 0;
}

static PyObject *
cosine_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames, int blocking)
{
    static const char *const names[] = {"a", "b"};
    static const char fname[] = "cosine_similarity";
    PyObject *argv[2];
    vec_buf in[2] = {{.held = 0}, {.held = 0}};
    ol_pyjob *job;
    vec_payload *p;

    if (kwnames == NULL && nargs == 2) {
        argv[0] = args[0];
        argv[1] = args[1];
    }
    else if (vec_parse_args(fname, names, 2, 0, 2, args, nargs, kwnames,
                            argv) < 0) {
        return NULL;
    }
    if (cosine_inputs(in, argv, fname) < 0) {
        goto error;
    }
    if (blocking && vec_tiny(1, 1, in[0].cols)) {
        /* The blocking twin of a pair that runs inline anyway: no job.
         * Its call overhead is the whole cost of a 768-d pair, and the
         * figure users compare with SimSIMD's. */
        double value = ol_cosine_f32(in[0].data, in[1].data, in[0].cols);
        vec_buf_release(&in[0]);
        vec_buf_release(&in[1]);
        ol_count.inline_runs++;
        ol_count.completed++;
        return PyFloat_FromDouble(value);
    }
    if ((job = new_job(&cosine_kind)) == NULL) {
        goto error;
    }
    p = OL_PAYLOAD(job, vec_payload);
    p->in[0] = in[0]; /* the job owns the views from here on */
    p->in[1] = in[1];
    p->nq = p->n = 1;
    p->d = p->in[0].cols;
    p->qb = p->qblocks = p->rb = p->rblocks = 1;
    return submit(ol_get_state(module), job, blocking);

error:
    vec_buf_release(&in[0]);
    vec_buf_release(&in[1]);
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

    if (vec_parse_args(fname, names, 1, 1, 1, args, nargs, kwnames,
                       argv) < 0) {
        return NULL;
    }
    if ((job = new_job(&normalize_kind)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    x = &p->in[0];
    if (vec_get_input(x, argv[0], fname, "x") < 0) {
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
        if (vec_checked_size(x->rows, x->cols, sizeof(float), &bytes, fname,
                             "x is too big: the result") < 0) {
            goto error;
        }
        p->result = vec_new_array(st, x->rows, x->cols, 0);
        if (p->result == NULL) {
            goto error;
        }
    }
    if (vec_get_output(&p->out[0], p->result, fname, "out", 2, x->rows,
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
    vec_plan(p, vec_tiny(1, p->n, p->d), 0);
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

/* q (D,) or (Q, D) and m (N, D) into in[0] and in[1]; m may be a
 * QuantizedMatrix (quantize.c). */
static int
get_query_matrix(vec_payload *p, PyObject *q, PyObject *m,
                 const char *fname)
{
    int quantized;

    if (vec_get_input(&p->in[0], q, fname, "q") < 0 ||
        (quantized = vec_get_quantized(p, m, fname)) < 0 ||
        (!quantized && vec_get_input(&p->in[1], m, fname, "m") < 0)) {
        return -1;
    }
    if (!quantized && p->in[1].ndim != 2) {
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

    if (vec_parse_args(fname, names, 2, 0, 2, args, nargs, kwnames,
                       argv) < 0) {
        return NULL;
    }
    if ((job = new_job(&sims_kind)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    if (get_query_matrix(p, argv[0], argv[1], fname) < 0 ||
        vec_checked_size(p->nq, p->n, sizeof(float), &bytes, fname,
                         "q and m are too big: Q x N scores") < 0) {
        goto error;
    }
    p->result = vec_new_array(st, p->in[0].ndim == 2 ? p->nq : 0, p->n, 0);
    if (p->result == NULL ||
        vec_get_output(&p->out[0], p->result, fname, "result",
                       p->in[0].ndim, p->nq, p->n) < 0) {
        goto error;
    }
    vec_plan(p, vec_tiny(p->nq, p->n, p->d), 0);
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

/* k: an int from 1 to n; whatever operator.index() takes (numpy
 * integers, __index__), except bool, which reads as a mistake. */
static int
parse_k(PyObject *obj, size_t n, size_t *k, const char *fname)
{
    PyObject *idx;
    long long v;

    if (obj == NULL) {
        v = 10;
    }
    else {
        idx = PyBool_Check(obj) ? NULL : PyNumber_Index(obj);
        if (idx == NULL) {
            if (!PyBool_Check(obj) &&
                !PyErr_ExceptionMatches(PyExc_TypeError)) {
                return -1; /* __index__ raised something else: keep it */
            }
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "%s(): k must be an int, not %.100s", fname,
                         Py_TYPE(obj)->tp_name);
            return -1;
        }
        v = PyLong_AsLongLong(idx);
        Py_DECREF(idx);
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

    if (vec_checked_size(p->nq, p->k, sizeof(int64_t), &bytes, fname,
                         "q and k are too big: Q x k results") < 0) {
        return -1;
    }
    scores = vec_new_array(st, ndim == 2 ? p->nq : 0, p->k, 0);
    if (scores == NULL) {
        return -1;
    }
    indices = vec_new_array(st, ndim == 2 ? p->nq : 0, p->k, 1);
    if (indices == NULL) {
        Py_DECREF(scores);
        return -1;
    }
    p->result = PyTuple_Pack(2, scores, indices);
    Py_DECREF(scores);
    Py_DECREF(indices);
    if (p->result == NULL ||
        vec_get_output(&p->out[0], PyTuple_GET_ITEM(p->result, 0), fname,
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
    /* kc >= k; rblocks is bounded by plan(). */
    if (vec_checked_size(p->nq, p->kc, sizeof(int64_t), &bytes, fname,
                         "q and k are too big: candidates") < 0 ||
        vec_checked_size(p->rblocks, p->nq * p->kc,
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
    p->pscores = (float *)(p->pindices + lists * p->kc);
    return 0;
}

static PyObject *
topk_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames, int blocking)
{
    static const char *const names[] = {"q", "m", "k", "normalized",
                                        "rerank"};
    static const char fname[] = "top_k";
    ol_state *st = ol_get_state(module);
    PyObject *argv[5];
    ol_pyjob *job;
    vec_payload *p;
    size_t per_block;

    if (vec_parse_args(fname, names, 3, 2, 2, args, nargs, kwnames,
                       argv) < 0) {
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
    if (vec_parse_rerank(p, argv[4], fname) < 0) {
        goto error;
    }
    per_block = __builtin_mul_overflow(p->nq, p->kc, &per_block)
                    ? TOPK_PARTIAL_MAX
                    : per_block;
    vec_plan(p, vec_tiny(p->nq, p->n, p->d), per_block ? per_block : 1);
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

/* ---- benchmark hook ------------------------------------------------ */

/* _stream_read(buffer, variant): read the buffer with bandwidth.c's
 * variant, GIL released, so that benchmark threads stream in parallel.
 * Returns the OR of its words; ValueError if the variant cannot run. */
static PyObject *
stream_read(PyObject *module, PyObject *args)
{
    Py_buffer view;
    int variant, rc;
    uint64_t sink = 0;

    if (!PyArg_ParseTuple(args, "y*i:_stream_read", &view, &variant)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = ol_stream_read(view.buf, (size_t)view.len & ~(size_t)7, variant,
                        &sink);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc < 0) {
        PyErr_Format(PyExc_ValueError,
                     "_stream_read(): variant %d cannot run here", variant);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(sink);
}

static PyObject *
stream_read_names(PyObject *module, PyObject *unused)
{
    PyObject *list = PyList_New(0);
    const char *name;

    for (int i = 0; list != NULL && (name = ol_stream_read_name(i)); i++) {
        PyObject *s = PyUnicode_FromString(name);
        if (s == NULL || PyList_Append(list, s) < 0) {
            Py_XDECREF(s);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(s);
    }
    return list;
}

#include "vectors_doc.h"

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
    {"_stream_read", stream_read, METH_VARARGS,
     "_stream_read($module, buffer, variant, /)\n--\n\n"
     "Benchmark hook: read buffer with a bandwidth.c variant."},
    {"_stream_read_names", stream_read_names, METH_NOARGS,
     "_stream_read_names($module, /)\n--\n\n"
     "Benchmark hook: the _stream_read variants by number."},
    {"_quantize", FASTCALL(vec_quantize), FASTKW,
     "_quantize(m, codes, scales, result)\n--\n\n"
     "Fill a QuantizedMatrix's arrays from m on the pool (use "
     "offloop.quantize)."},
    {"_quantize_blocking", FASTCALL(vec_quantize_blocking), FASTKW,
     "_quantize_blocking(m, codes, scales, result)\n--\n\n"
     "The blocking twin of _quantize (use offloop.blocking.quantize)."},
    {NULL, NULL, 0, NULL},
};

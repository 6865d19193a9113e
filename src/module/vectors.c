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

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "vec_args.h"

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

static void
pass_normalize_gate(void)
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

    vec_buf_release(&p->in[0]);
    vec_buf_release(&p->in[1]);
    vec_buf_release(&p->out[0]);
    vec_buf_release(&p->out[1]);
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

    pass_normalize_gate();
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
    else if (vec_parse_args(fname, names, 2, 0, 2, args, nargs, kwnames,
                            argv) < 0) {
        return NULL;
    }
    if ((job = new_job(&cosine_kind)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    if (vec_get_input(&p->in[0], argv[0], fname, "a") < 0 ||
        vec_get_input(&p->in[1], argv[1], fname, "b") < 0) {
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
    if (vec_get_input(&p->in[0], q, fname, "q") < 0 ||
        vec_get_input(&p->in[1], m, fname, "m") < 0) {
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
    /* nq * k fits (checked above); rblocks is bounded by plan(). */
    if (vec_checked_size(p->rblocks, p->nq * p->k,
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

    if (vec_parse_args(fname, names, 3, 1, 2, args, nargs, kwnames,
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

/* Quantized matrices in the vector kernels: offloop.quantize's job, and
 * what top_k and cosine_similarities do when m is a QuantizedMatrix
 * (python/offloop/_quantized.py): borrow its codes and scales, scan them,
 * and re-rank top_k's candidates against float32 rows when asked.
 *
 * DESIGN
 *
 * Storage.  quantize divides each row by its L2 norm, then stores it as
 * bfloat16 (2 bytes a value) or int8 with a float32 scale per row (1 byte
 * a value; kernels.h).  A score is the query's cosine with the decoded
 * unit row, so no norm is computed during a scan and a scan reads half
 * or a quarter of the float32 bytes.  The codes are plain numpy arrays
 * owned by the Python object; a job holds buffers on them as it does on
 * a float32 matrix (vectors.c's DESIGN), read-only views included, so a
 * memory-mapped np.load(..., mmap_mode="r") is scanned in place.
 *
 * Re-rank.  top_k(q, qm, k, rerank=m) keeps kc = min(n, 4k + 64)
 * candidates per query in the quantized scan, then re-scores them with
 * ol_cosine_f32 against m's float32 rows and returns the k best.  Why
 * that many: a true top-k row is lost only if more than kc - k rows that
 * score below it overtake it after quantization.  The score error of a
 * row is |q| times the norm of its rounding error: int8 rounds each value
 * of a unit row by at most half a step (step = max|value| / 127), about
 * 3e-4 of a cosine in 768 dimensions, bfloat16 about 4e-4 of each value.
 * Only rows within twice that of the k-th score can overtake; on the
 * benchmark's 200,000 x 768 rows the 64 spare candidates cover them (re-
 * ranked recall@10 = 1.0, benchmarks/bench_vectors.py), and 4k keeps the
 * margin proportional for large k.  The re-rank costs kc float32 rows
 * per query, read at random: 104 rows for k = 10, well under 1% of a
 * scan of 200,000 rows.
 */
#include "binding.h"

#include <stdlib.h>
#include <string.h>

#include "vectors.h"

/* ---- quantize ------------------------------------------------------ */

static void
quant_release(ol_pyjob *job)
{
    vec_payload *p = OL_PAYLOAD(job, vec_payload);

    vec_buf_release(&p->in[0]);
    vec_buf_release(&p->out[0]);
    vec_buf_release(&p->out[1]);
    Py_CLEAR(p->result);
}

static PyObject *
quant_complete(ol_pyjob *job)
{
    return Py_NewRef(OL_PAYLOAD(job, vec_payload)->result);
}

static int
quant_work(ol_job_t *job, size_t chunk)
{
    vec_payload *p = PAYLOAD(job);
    size_t r0, r1, q0, q1;

    vec_chunk_range(p, chunk, &r0, &r1, &q0, &q1);
    ol_quantize_rows((ol_qtype)p->qtype, p->in[0].data, p->out[0].data,
                     p->qtype == OL_Q_INT8 ? p->out[1].data : NULL, p->d, r0,
                     r1);
    return 0;
}

static const ol_jobkind quant_kind = {.name = "quantize",
                                      .work = quant_work,
                                      .complete = quant_complete,
                                      .release = quant_release};

/* _quantize(m, codes, scales, result): the arrays come from
 * offloop._quantized._prepare, which checked the dtype name and made
 * codes and scales for m's shape; this checks them again (a private call
 * is still a call) and queues the chunks. */
static PyObject *
quantize_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames, int blocking)
{
    static const char *const names[] = {"m", "codes", "scales", "result"};
    static const char fname[] = "quantize";
    ol_state *st = ol_get_state(module);
    PyObject *argv[4];
    ol_pyjob *job;
    vec_payload *p;
    int inline_run;

    if (vec_parse_args(fname, names, 4, 0, 4, args, nargs, kwnames,
                       argv) < 0) {
        return NULL;
    }
    if ((job = ol_pyjob_new(&quant_kind, sizeof(vec_payload), 1)) == NULL) {
        return NULL;
    }
    p = OL_PAYLOAD(job, vec_payload);
    p->qtype = argv[2] == Py_None ? OL_Q_BF16 : OL_Q_INT8;
    if (vec_get_input(&p->in[0], argv[0], fname, "m") < 0 ||
        vec_get_codes(&p->out[0], argv[1], fname, "codes",
                      p->qtype == OL_Q_BF16 ? 'H' : 'b', 2) < 0 ||
        (p->qtype == OL_Q_INT8 &&
         vec_get_output(&p->out[1], argv[2], fname, "scales", 1, 1,
                        p->in[0].rows) < 0)) {
        goto error;
    }
    if (p->in[0].ndim != 2 || p->out[0].view.readonly ||
        p->out[0].rows != p->in[0].rows || p->out[0].cols != p->in[0].cols) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): m must be 2-D and codes writable, of m's shape",
                     fname);
        goto error;
    }
    p->result = Py_NewRef(argv[3]);
    p->nq = 1;
    p->n = p->in[0].rows;
    p->d = p->in[0].cols;
    inline_run = vec_tiny(1, p->n, p->d);
    vec_plan(p, inline_run, 0);
    job->core.nchunks = p->qblocks * p->rblocks;
    inline_run = inline_run && job->core.nchunks == 1;
    return blocking ? ol_submit_blocking(st, job, inline_run)
                    : ol_submit_async(st, job, inline_run);

error:
    ol_pyjob_free(job);
    return NULL;
}

PyObject *
vec_quantize(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    return quantize_impl(module, args, nargs, kwnames, 0);
}

PyObject *
vec_quantize_blocking(PyObject *module, PyObject *const *args,
                      Py_ssize_t nargs, PyObject *kwnames)
{
    return quantize_impl(module, args, nargs, kwnames, 1);
}

/* ---- a QuantizedMatrix as m ---------------------------------------- */

int
vec_get_quantized(vec_payload *p, PyObject *m, const char *fname)
{
    PyObject *t, *codes, *scales;
    long qt;
    int rc;

    if (PyObject_CheckBuffer(m)) {
        return 0;
    }
    t = PyObject_GetAttrString(m, "_offloop_qtype");
    if (t == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            return 0; /* not quantized: vec_get_input names the error */
        }
        return -1;
    }
    qt = PyLong_Check(t) ? PyLong_AsLong(t) : -1;
    Py_DECREF(t);
    if (qt != OL_Q_BF16 && qt != OL_Q_INT8) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s(): m is not a valid QuantizedMatrix", fname);
        return -1;
    }
    if ((codes = PyObject_GetAttrString(m, "codes")) == NULL) {
        return -1;
    }
    rc = vec_get_codes(&p->in[1], codes, fname, "m.codes",
                       qt == OL_Q_BF16 ? 'H' : 'b', 2);
    Py_DECREF(codes);
    if (rc < 0) {
        return -1;
    }
    if (qt == OL_Q_INT8) {
        if ((scales = PyObject_GetAttrString(m, "scales")) == NULL) {
            return -1;
        }
        rc = vec_get_codes(&p->scales, scales, fname, "m.scales", 'f', 1);
        Py_DECREF(scales);
        if (rc < 0) {
            return -1;
        }
        if (p->scales.rows != p->in[1].rows) {
            PyErr_Format(PyExc_ValueError,
                         "%s(): m.scales has %zu rows, m.codes %zu", fname,
                         p->scales.rows, p->in[1].rows);
            return -1;
        }
    }
    if (p->in[1].rows == 0 || p->in[1].cols == 0) {
        PyErr_Format(PyExc_ValueError, "%s(): m must not be empty", fname);
        return -1;
    }
    p->qtype = (int)qt;
    return 1;
}

int
vec_parse_rerank(vec_payload *p, PyObject *rerank, const char *fname)
{
    vec_buf *b = &p->rerank;

    p->kc = p->k;
    if (rerank == NULL || rerank == Py_None) {
        return 0;
    }
    if (!p->qtype) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): rerank= needs m to be a QuantizedMatrix (a "
                     "float32 m is scored exactly already)",
                     fname);
        return -1;
    }
    if (vec_get_input(b, rerank, fname, "rerank") < 0) {
        return -1;
    }
    if (b->ndim != 2 || b->rows != p->n || b->cols != p->d) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): rerank must have m's shape (%zu, %zu), got "
                     "(%zu, %zu)",
                     fname, p->n, p->d, b->ndim == 2 ? b->rows : 0, b->cols);
        return -1;
    }
    /* min(n, 4k + 64): the DESIGN note says why. */
    p->kc = p->k >= p->n / 4 ? p->n : 4 * p->k + 64;
    if (p->kc > p->n) {
        p->kc = p->n;
    }
    return 0;
}

/* ---- scans and results --------------------------------------------- */

static const float *
scales_of(const vec_payload *p, size_t off)
{
    return p->qtype == OL_Q_INT8 ? (const float *)p->scales.data + off
                                 : NULL;
}

void
vec_scan_topk(const vec_payload *p, const float *q, const float *inv,
              size_t nq, size_t r0, size_t r1, ol_topk *lists)
{
    if (p->qtype) {
        ol_qscan_rows((ol_qtype)p->qtype, q, inv, nq, p->in[1].data,
                      scales_of(p, 0), p->d, r0, r1, NULL, 0, lists);
    }
    else {
        ol_topk_rows_f32(q, inv, nq, p->in[1].data, p->d, r0, r1,
                         p->normalized, lists);
    }
}

void
vec_scan_sims(const vec_payload *p, const float *q, const float *inv,
              size_t nq, size_t off, size_t r0, size_t r1, float *out,
              size_t stride)
{
    if (p->qtype) {
        size_t esize = ol_qtype_size((ol_qtype)p->qtype);
        const char *codes = (const char *)p->in[1].data + off * p->d * esize;
        ol_qscan_rows((ol_qtype)p->qtype, q, inv, nq, codes,
                      scales_of(p, off), p->d, r0, r1, out, stride, NULL);
    }
    else {
        ol_cosine_rows_f32(q, inv, nq, p->in[1].data + off * p->d, p->d, r0,
                           r1, 0, out, stride);
    }
}

void
vec_topk_write(const vec_payload *p, size_t qi, const float *q,
               ol_topk *merged)
{
    float *scores = p->out[0].data + qi * p->k;
    int64_t *indices = (int64_t *)(void *)p->out[1].data + qi * p->k;
    ol_topk best;
    size_t c;

    if (!p->rerank.held) {
        ol_topk_sort(merged);
        /* count == k: k <= n, and every row was offered. */
        memcpy(scores, merged->scores, merged->count * sizeof(float));
        memcpy(indices, merged->indices, merged->count * sizeof(int64_t));
        return;
    }
    /* Exact float32 cosines of the candidates; their heap order no longer
     * holds, but merge only offers each entry to `best`. */
    for (c = 0; c < merged->count; c++) {
        merged->scores[c] = ol_cosine_f32(
            q, p->rerank.data + (size_t)merged->indices[c] * p->d, p->d);
    }
    ol_topk_init(&best, scores, indices, p->k);
    ol_topk_merge(&best, merged);
    ol_topk_sort(&best);
}

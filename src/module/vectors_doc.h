/* Docstrings of the vector kernels (vectors.c's method table). */
#ifndef OFFLOOP_VECTORS_DOC_H
#define OFFLOOP_VECTORS_DOC_H

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
    "m : array_like, float32, shape (N, D), or QuantizedMatrix\n"          \
    "    offloop.quantize(m, 'bfloat16' | 'int8'): scores are cosines\n"     \
    "    with the decoded unit rows; a row that held NaN/inf scores NaN.\n" \
    "k : int, default 10\n    From 1 to N.\n"                               \
    "normalized : bool, default False\n"                                    \
    "    m's rows are already unit length: skip their norms (faster).\n"   \
    "rerank : array_like, float32, shape (N, D), optional\n"              \
    "    Only with a QuantizedMatrix m: its float32 rows (a read-only\n"    \
    "    memory map is fine).  The scan keeps min(N, 4k + 64)\n"            \
    "    candidates, which are re-scored exactly against these rows;\n"    \
    "    the k best are returned (README: why that many).\n\n"
#define TOPK_DOC_TAIL                                                       \
    RAISES_HEAD                                                             \
    "TypeError\n    An argument is not float32/float64 data; k is not\n"   \
    "    an int.\n"                                                         \
    "ValueError\n    An argument is empty, of the wrong ndim or not\n"      \
    "    C-contiguous; D differs; k is not in [1, N]; rerank is not of\n"   \
    "    m's shape, or m is not quantized.\n\n"

PyDoc_STRVAR(top_k_doc,
             "top_k($module, q, m, k=10, *, normalized=False, rerank=None)\n"
             "--\n\n"
             TOPK_DOC_HEAD
             "Returns\n-------\n"
             "asyncio.Future[tuple[numpy.ndarray, numpy.ndarray]]\n"
             "    (scores, indices): float32 and int64, shape (k,) for q\n"
             "    of shape (D,), (Q, k) for q of shape (Q, D).\n\n"
             TOPK_DOC_TAIL
             "Examples\n--------\n"
             ">>> scores, idx = await offloop.top_k(q, m, k=10)\n");

PyDoc_STRVAR(top_k_blocking_doc,
             "top_k_blocking($module, q, m, k=10, *, normalized=False, "
             "rerank=None)\n"
             "--\n\n" TOPK_DOC_HEAD
             "Returns\n-------\ntuple[numpy.ndarray, numpy.ndarray]\n"
             "    (scores, indices), as for the awaitable call.\n\n"
             TOPK_DOC_TAIL);

#endif /* OFFLOOP_VECTORS_DOC_H */

/* The C API capsule: what include/offloop.h reaches.
 *
 * Another extension submits (execute, complete, release, ctx); this file
 * wraps that in a job kind of its own ("capi"), whose payload holds the
 * four, and hands it to the same ol_submit_async() / ol_submit_blocking()
 * paths as offloop's own kernels.  The table behind the capsule is static
 * and never changes, so extensions may keep a bare pointer to it.
 *
 * DESIGN
 *
 * Ownership: ctx belongs to offloop from the submit call on.  The user's
 * release(ctx) runs exactly once, with the GIL: right after complete(ctx)
 * when that runs (so that an exception it raises reaches the future as
 * SystemError), otherwise from the kind's release hook, which the binding
 * calls whenever a job is freed (cancelled, dropped with its loop, submit
 * refused).  `released` records that it ran; only GIL holders touch it.
 *
 * Interpreter exit: the core forgets queued jobs at shutdown instead of
 * delivering them, so their release hooks would never run.  Every live
 * capi job is therefore on a list (GIL), and ol_capi_at_exit(), the last
 * step of offloop's one shutdown sequence (module.c, after the pool's
 * shutdown), releases the ctx of each job no worker is inside.  A worker and that hook agree
 * through two seq_cst atomics in Dekker style: the worker increments
 * `inside` then reads `closed`; the hook sets `closed` then reads
 * `inside`.  At least one sees the other, so either the worker stays out
 * of ctx or the hook leaves ctx alone.  Jobs of a parent process (before
 * fork) are never released in the child: nothing of the parent's runs
 * twice.
 */
#include "binding.h"

#include "offloop.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct capi_payload_s {
    /* Set at submit, read-only afterwards (workers read them). */
    offloop_execute_fn execute;             /* one of these two */
    offloop_execute_chunk_fn execute_chunk;
    offloop_execute_batch_fn execute_batch; /* ... or this one */
    size_t nchunks;                         /* the caller's; may be 0 */
    offloop_complete_fn complete;
    offloop_release_fn release;
    void *ctx;
    unsigned generation;                    /* fork generation */

    atomic_int rc;     /* first non-zero execute return; workers */
    atomic_int inside; /* workers inside execute; see DESIGN */
    atomic_int closed; /* set by the exit hook; see DESIGN */

    /* GIL only. */
    int released; /* the user's release(ctx) ran */
    int linked;   /* on the live list */
    struct capi_payload_s *prev, *next;
} capi_payload;

static capi_payload *live_head; /* GIL */
static PyObject *capi_module;   /* borrowed; NULL once its capsule died */

#define PAYLOAD(job) OL_PAYLOAD((job), capi_payload)

/* ---- diagnostics --------------------------------------------------- */

/* Name a user callback for an error message: "my_complete in
 * /path/ext.so" when the dynamic linker knows its name (not for static
 * functions: "at 0x... in /path/ext.so"), its bare address otherwise. */
static void
describe(void (*fn)(void), char *buf, size_t size)
{
    Dl_info info = {0};
    void *addr;

    memcpy(&addr, &fn, sizeof(addr)); /* function to data pointer */
    if (dladdr(addr, &info) != 0 && info.dli_sname != NULL) {
        snprintf(buf, size, "%s in %s", info.dli_sname,
                 info.dli_fname ? info.dli_fname : "?");
    }
    else if (info.dli_fname != NULL) { /* a static function */
        snprintf(buf, size, "at %p in %s", addr, info.dli_fname);
    }
    else {
        snprintf(buf, size, "at %p", addr);
    }
}

/* Raise SystemError(message) with `cause` (stolen; may be NULL) as its
 * __cause__.  Returns NULL. */
static PyObject *
system_error(PyObject *cause, const char *what, void (*fn)(void),
             const char *message)
{
    char name[512];
    PyObject *exc;

    describe(fn, name, sizeof(name));
    PyErr_Format(PyExc_SystemError, "offloop C API: the %s callback %s %s",
                 what, name, message);
    if (cause != NULL) {
        exc = ol_fetch_exception();
        PyException_SetCause(exc, cause); /* steals cause */
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* ---- release ------------------------------------------------------- */

static void
unlink_job(capi_payload *p)
{
    if (!p->linked) {
        return;
    }
    if (p->prev != NULL) {
        p->prev->next = p->next;
    }
    else {
        live_head = p->next;
    }
    if (p->next != NULL) {
        p->next->prev = p->prev;
    }
    p->prev = p->next = NULL;
    p->linked = 0;
}

/* Run the user's release(ctx), once.  Returns the exception it left set
 * (a new reference), or NULL; the caller's pending exception, if any, is
 * kept as it was. */
static PyObject *
release_ctx(capi_payload *p)
{
    PyObject *type, *value, *tb, *raised = NULL;

    if (p->released) {
        return NULL;
    }
    p->released = 1;
    if (p->release == NULL) {
        return NULL;
    }
    PyErr_Fetch(&type, &value, &tb);
    p->release(p->ctx);
    if (PyErr_Occurred()) {
        raised = ol_fetch_exception();
    }
    PyErr_Restore(type, value, tb);
    return raised;
}

/* Hand an error to the loop's exception handler (as asyncio does for a
 * callback that raised), or, with no open loop to take it, to
 * sys.unraisablehook.  Steals `exc`. */
static void
report_to_loop(PyObject *fut, PyObject *exc, const char *message)
{
    PyObject *loop = NULL, *closed = NULL, *context = NULL, *r = NULL;

    if (fut != NULL) {
        loop = PyObject_CallMethod(fut, "get_loop", NULL);
        closed = loop ? PyObject_CallMethod(loop, "is_closed", NULL) : NULL;
    }
    if (closed == Py_False) {
        context = Py_BuildValue("{s:s,s:O,s:O}", "message", message,
                                "exception", exc, "future", fut);
        r = context ? PyObject_CallMethod(loop, "call_exception_handler",
                                          "O", context)
                    : NULL;
    }
    if (r == NULL) {
        PyErr_Clear();
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        PyErr_WriteUnraisable(fut);
    }
    Py_XDECREF(r);
    Py_XDECREF(context);
    Py_XDECREF(closed);
    Py_XDECREF(loop);
    Py_DECREF(exc);
}

/* release(ctx) of a job whose future cannot carry the error (cancelled,
 * dropped with its loop, or already resolved). */
static void
release_ctx_reported(capi_payload *p, PyObject *fut)
{
    PyObject *type, *value, *tb, *raised = release_ctx(p);

    if (raised == NULL) {
        return;
    }
    PyErr_Fetch(&type, &value, &tb);
    system_error(raised, "release", (void (*)(void))p->release,
                 "raised an exception");
    report_to_loop(fut, ol_fetch_exception(),
                   "offloop: a C-API release callback raised");
    PyErr_Restore(type, value, tb);
}

/* The kind's hook: the binding frees the job (any reason), GIL held. */
static void
capi_release(ol_pyjob *job)
{
    capi_payload *p = PAYLOAD(job);

    unlink_job(p);
    release_ctx_reported(p, job->future);
}

/* ---- the job kind -------------------------------------------------- */

/* A batch (or a lone batchable job): every member counts itself inside
 * (the exit handshake, per ctx) before the one execute_batch call, whose
 * result each member keeps as its own. */
#define CAPI_BATCH_STACK 64
static int
capi_batch_work(ol_job_t *core, const offloop_cancel_t *token)
{
    void *stack[CAPI_BATCH_STACK], **ctxs = stack;
    size_t n = 0;
    ol_job_t *m;
    int rc = 0, closed = 0;

    if (core->batch_size > CAPI_BATCH_STACK) {
        ctxs = malloc(core->batch_size * sizeof(*ctxs));
        if (ctxs == NULL) {
            return OL_ENOMEM;
        }
    }
    for (m = core; m != NULL; m = m->batch_next) {
        capi_payload *p = PAYLOAD((ol_pyjob *)m);
        atomic_fetch_add(&p->inside, 1);
        closed |= atomic_load(&p->closed);
        ctxs[n++] = p->ctx;
    }
    if (!closed) {
        rc = PAYLOAD((ol_pyjob *)core)->execute_batch(ctxs, n, token);
    }
    for (m = core; m != NULL; m = m->batch_next) {
        capi_payload *p = PAYLOAD((ol_pyjob *)m);
        atomic_store(&p->rc, rc);
        atomic_fetch_sub(&p->inside, 1);
    }
    if (ctxs != stack) {
        free(ctxs);
    }
    return closed ? OL_ESHUTDOWN : 0;
}

static int
capi_work(ol_job_t *core, size_t chunk)
{
    capi_payload *p = PAYLOAD((ol_pyjob *)core);
    const offloop_cancel_t *token = (const offloop_cancel_t *)core;
    int rc = 0, zero = 0;

    if (p->execute_batch != NULL) {
        return capi_batch_work(core, token);
    }
    atomic_fetch_add(&p->inside, 1);
    if (atomic_load(&p->closed)) {
        atomic_fetch_sub(&p->inside, 1);
        return OL_ESHUTDOWN; /* ctx released at exit: hands off */
    }
    if (atomic_load_explicit(&p->rc, memory_order_relaxed) == 0) {
        if (p->execute_chunk != NULL) {
            if (chunk < p->nchunks) {
                rc = p->execute_chunk(p->ctx, chunk, token);
            }
        }
        else {
            rc = p->execute(p->ctx, token);
        }
        if (rc != 0) { /* keep the first; later chunks are skipped */
            atomic_compare_exchange_strong(&p->rc, &zero, rc);
        }
    }
    atomic_fetch_sub(&p->inside, 1);
    return 0;
}

/* The result of the user's complete(ctx), checked. */
static PyObject *
call_complete(capi_payload *p)
{
    PyObject *res;
    int rc = atomic_load(&p->rc);

    if (p->complete == NULL) {
        if (rc != 0) {
            char name[512];
            describe(p->execute_batch != NULL
                         ? (void (*)(void))p->execute_batch
                     : p->execute_chunk != NULL
                         ? (void (*)(void))p->execute_chunk
                         : (void (*)(void))p->execute,
                     name, sizeof(name));
            return PyErr_Format(PyExc_RuntimeError,
                                "offloop C API: the execute callback %s "
                                "failed with code %d",
                                name, rc);
        }
        Py_RETURN_NONE;
    }
    res = p->complete(p->ctx);
    if (res == NULL && !PyErr_Occurred()) {
        return system_error(NULL, "complete", (void (*)(void))p->complete,
                            "returned NULL without setting an exception");
    }
    if (res != NULL && PyErr_Occurred()) {
        PyObject *cause = ol_fetch_exception();
        Py_DECREF(res);
        return system_error(cause, "complete", (void (*)(void))p->complete,
                            "returned a result with an exception set");
    }
    return res;
}

/* GIL held, status 0: complete(ctx), then release(ctx) at once, so that
 * an exception release leaves reaches the caller too. */
static PyObject *
capi_complete(ol_pyjob *job)
{
    capi_payload *p = PAYLOAD(job);
    PyObject *res, *raised;

    if (p->released) { /* released at interpreter exit */
        PyErr_SetString(PyExc_RuntimeError, ol_strerror(OL_ESHUTDOWN));
        return NULL;
    }
    res = call_complete(p);
    unlink_job(p);
    raised = release_ctx(p);
    if (raised != NULL) {
        if (res == NULL) {
            /* complete's own error is the one to see; report this one
             * as unraisable rather than lose either. */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            system_error(raised, "release", (void (*)(void))p->release,
                         "raised an exception");
            PyErr_WriteUnraisable(NULL);
            PyErr_Restore(type, value, tb);
            return NULL;
        }
        Py_DECREF(res);
        return system_error(raised, "release", (void (*)(void))p->release,
                            "raised an exception");
    }
    return res;
}

static const ol_jobkind capi_kind = {.name = "capi",
                                     .work = capi_work,
                                     .complete = capi_complete,
                                     .release = capi_release};

/* ---- the table ----------------------------------------------------- */

typedef struct {
    offloop_execute_fn execute; /* exactly one of the three */
    offloop_execute_chunk_fn execute_chunk;
    offloop_execute_batch_fn execute_batch;
    size_t nchunks;
    unsigned long long key; /* execute_batch only */
} capi_work_spec;

static PyObject *
submit_common(const capi_work_spec *w, offloop_complete_fn complete,
              offloop_release_fn release, void *ctx, int blocking)
{
    capi_payload orphan = {.release = release, .ctx = ctx};
    ol_state *st = capi_module ? ol_get_state(capi_module) : NULL;
    ol_pyjob *job;
    capi_payload *p;

    if (st == NULL || st->ports == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "offloop C API: offloop._core is finalizing");
        goto refuse;
    }
    if (w->execute == NULL && w->execute_chunk == NULL &&
        w->execute_batch == NULL) {
        PyErr_SetString(PyExc_SystemError,
                        "offloop C API: the execute callback is NULL");
        goto refuse;
    }
    job = ol_pyjob_new(&capi_kind, sizeof(capi_payload),
                       w->nchunks > 0 ? w->nchunks : 1);
    if (job == NULL) {
        goto refuse;
    }
    p = PAYLOAD(job);
    p->execute = w->execute;
    p->execute_chunk = w->execute_chunk;
    p->execute_batch = w->execute_batch;
    p->nchunks = w->nchunks;
    if (w->execute_batch != NULL) {
        /* The function and the key: what may share a run. */
        job->core.batch.tag = &capi_kind;
        job->core.batch.words[0] = (uint64_t)(uintptr_t)w->execute_batch;
        job->core.batch.words[1] = w->key;
    }
    p->complete = complete;
    p->release = release;
    p->ctx = ctx;
    p->generation = ol_fork_generation();
    p->linked = 1;
    p->next = live_head;
    if (live_head != NULL) {
        live_head->prev = p;
    }
    live_head = p;
    /* Both free the job on failure, which releases ctx. */
    return blocking ? ol_submit_blocking(st, job, 0)
                    : ol_submit_async(st, job, 0);

refuse:
    release_ctx_reported(&orphan, NULL);
    return NULL;
}

static PyObject *
capi_submit(offloop_execute_fn execute, offloop_complete_fn complete,
            offloop_release_fn release, void *ctx, int blocking)
{
    capi_work_spec w = {.execute = execute, .nchunks = 1};

    return submit_common(&w, complete, release, ctx, blocking);
}

static PyObject *
capi_submit_chunks(size_t nchunks, offloop_execute_chunk_fn execute_chunk,
                   offloop_complete_fn complete, offloop_release_fn release,
                   void *ctx, int blocking)
{
    capi_work_spec w = {.execute_chunk = execute_chunk, .nchunks = nchunks};

    return submit_common(&w, complete, release, ctx, blocking);
}

static PyObject *
capi_submit_batch(offloop_execute_batch_fn execute_batch,
                  unsigned long long key, offloop_complete_fn complete,
                  offloop_release_fn release, void *ctx, int blocking)
{
    capi_work_spec w = {
        .execute_batch = execute_batch, .nchunks = 1, .key = key};

    return submit_common(&w, complete, release, ctx, blocking);
}

static int
capi_cancelled(const offloop_cancel_t *cancel)
{
    ol_job_t *core = (ol_job_t *)cancel;

    return ol_job_stopped(core) ||
           atomic_load_explicit(&PAYLOAD((ol_pyjob *)core)->closed,
                                memory_order_relaxed);
}

static const offloop_capi capi_table = {
    .abi_version = OFFLOOP_ABI_VERSION,
    .flags = 0,
    .size = sizeof(offloop_capi),
    .submit = capi_submit,
    .submit_chunks = capi_submit_chunks,
    .cancelled = capi_cancelled,
    .submit_batch = capi_submit_batch,
};

/* ---- interpreter exit ---------------------------------------------- */

/* After offloop's pool shutdown: release every ctx no worker uses.
 * Restarts from the head after each release, since a release callback may
 * free other jobs (and so unlink them). */
void
ol_capi_at_exit(void)
{
    unsigned gen = ol_fork_generation();
    capi_payload *p;

    ol_drain_orphans(); /* these release the ordinary way */
again:
    for (p = live_head; p != NULL; p = p->next) {
        if (p->generation != gen || p->released) {
            continue;
        }
        atomic_store(&p->closed, 1);
        if (atomic_load(&p->inside) != 0) {
            continue; /* a worker still runs it: leave ctx alone */
        }
        unlink_job(p);
        release_ctx_reported(p, NULL);
        goto again;
    }
}

/* ---- module init --------------------------------------------------- */

static void
capsule_destructor(PyObject *capsule)
{
    if (PyCapsule_GetContext(capsule) == capi_module) {
        capi_module = NULL;
    }
}

int
ol_capi_init(PyObject *module)
{
    PyObject *capsule;
    int rc;

    capsule = PyCapsule_New((void *)&capi_table, OFFLOOP_CAPSULE_NAME,
                            capsule_destructor);
    if (capsule == NULL) {
        return -1;
    }
    if (PyCapsule_SetContext(capsule, module) < 0) {
        Py_DECREF(capsule);
        return -1;
    }
    rc = PyModule_AddObjectRef(module, "_C_API", capsule);
    Py_DECREF(capsule);
    if (rc < 0) {
        return -1;
    }
    capi_module = module; /* borrowed: the capsule dies with it */
    return 0;
}

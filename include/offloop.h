/* offloop.h: the public C API of offloop, for other C extensions.
 *
 * It lets an extension run its own C function on offloop's thread pool and
 * hand Python an awaitable asyncio future, in the shape of Node-API's
 * async work:
 *
 *   execute(ctx, cancel)  on a pool worker, WITHOUT the GIL: the work.
 *                         Never call into Python here.  Poll
 *                         offloop_cancelled(cancel) in long loops.
 *   complete(ctx)         on the thread that resolves the job, WITH the
 *                         GIL: build the result object (a new reference),
 *                         or return NULL with an exception set.
 *   release(ctx)          WITH the GIL, exactly once, whatever happened:
 *                         completed, failed, cancelled, the loop closed
 *                         and the job dropped, the interpreter exiting,
 *                         or the submit itself refused.  Free ctx here.
 *
 * Usage, in one .c file:
 *
 *     #include <offloop.h>
 *
 *     static int
 *     my_exec(void *ctx, const offloop_cancel_t *cancel) { ... return 0; }
 *     static PyObject *
 *     my_complete(void *ctx) { return PyLong_FromLong(((my_t *)ctx)->r); }
 *     static void
 *     my_release(void *ctx) { PyMem_RawFree(ctx); }
 *
 *     static PyObject *
 *     work(PyObject *mod, PyObject *arg)
 *     {
 *         my_t *ctx = PyMem_RawMalloc(sizeof(*ctx));   (fill it here)
 *         return offloop_submit(my_exec, my_complete, my_release, ctx);
 *     }
 *
 *     module exec slot:  if (offloop_import() < 0) return -1;
 *
 * Ownership of ctx passes to offloop at every offloop_submit*() call:
 * from then on offloop calls release(ctx) exactly once, even when the call
 * returns NULL.  Allocate ctx with malloc() or PyMem_RawMalloc(), not
 * PyMem_Malloc(): workers touch it without the GIL.
 *
 * Build: offloop.get_include() (or `python -m offloop --include`) is the
 * folder of this header; CMake projects use find_package(offloop) with
 * offloop_DIR from `python -m offloop --cmake-dir` and link
 * offloop::headers.  There is nothing to link against: every function
 * below is reached through a table that offloop_import() reads from the
 * capsule offloop._core._C_API.
 *
 * The table is kept in a static variable of each translation unit that
 * includes this header: call offloop_import() once in every .c file that
 * uses it (numpy's import_array() has the same rule).  Thread safety: the
 * submit calls need the GIL; offloop_cancelled() is for workers and needs
 * nothing.
 */
#ifndef OFFLOOP_H
#define OFFLOOP_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the table below.  Bumped on any incompatible change; an
 * extension built against another version gets an ImportError from
 * offloop_import(), never a crash. */
#define OFFLOOP_ABI_VERSION 1

/* Where the table lives: the attribute _C_API of offloop._core. */
#define OFFLOOP_CAPSULE_NAME "offloop._core._C_API"

/* A job's cancellation token, opaque: pass it to offloop_cancelled(). */
typedef struct offloop_cancel_s offloop_cancel_t;

/* The work, on a pool worker without the GIL.  Return 0 on success.  A
 * non-zero return marks the job failed: chunks not yet started are
 * skipped, and complete() still runs to raise the error (keep its details
 * in ctx).  If the job was cancelled, whatever it returns, it ends as
 * cancelled and complete() does not run. */
typedef int (*offloop_execute_fn)(void *ctx, const offloop_cancel_t *cancel);

/* One chunk, 0 <= chunk < nchunks, of a job split with
 * offloop_submit_chunks(): chunks run concurrently on several workers, in
 * no set order, each exactly once unless the job fails or is cancelled.
 * Chunks must write to disjoint memory.  Returns as offloop_execute_fn. */
typedef int (*offloop_execute_chunk_fn)(void *ctx, size_t chunk,
                                        const offloop_cancel_t *cancel);

/* The work of a batch, on a pool worker without the GIL: ctxs[0..n) are
 * the contexts of n jobs submitted with offloop_submit_batch() with the
 * same execute_batch and key, that waited in the queue together (n may
 * be 1).  Do each one's work; each job's complete(ctx) then runs on its
 * own loop or blocking caller.  A non-zero return fails every job of the
 * batch (each complete() still runs, as for offloop_execute_fn).
 * offloop_cancelled(cancel) turns true once every job of the batch is
 * cancelled. */
typedef int (*offloop_execute_batch_fn)(void *const *ctxs, size_t n,
                                        const offloop_cancel_t *cancel);

/* With the GIL, after the last chunk: the job's result (a new reference),
 * or NULL with an exception set.  Runs on the event loop's thread for an
 * awaitable job, in the waiting thread for a blocking one.  Returning NULL
 * without an exception, or a result with an exception set, is reported as
 * SystemError.  A NULL complete callback gives the result None, or
 * RuntimeError if execute() returned non-zero. */
typedef PyObject *(*offloop_complete_fn)(void *ctx);

/* With the GIL, exactly once per submitted ctx, after complete() if that
 * runs.  Must not raise: an exception left set here is reported as
 * SystemError through the job's future when complete() has just run, and
 * as an unraisable exception otherwise.  NULL: nothing to release.
 *
 * One exception to "exactly once": at interpreter exit, a job whose
 * execute() is still running after offloop's bounded shutdown wait
 * (offloop.SHUTDOWN_TIMEOUT seconds) is never released, since a worker
 * still uses ctx; the process is ending. */
typedef void (*offloop_release_fn)(void *ctx);

/* The table behind the capsule.  Read it only through the functions
 * below; its layout is fixed for one OFFLOOP_ABI_VERSION. */
typedef struct {
    unsigned int abi_version; /* OFFLOOP_ABI_VERSION of the provider */
    unsigned int flags;       /* reserved, 0 */
    size_t size;              /* sizeof(offloop_capi) of the provider */
    PyObject *(*submit)(offloop_execute_fn execute,
                        offloop_complete_fn complete,
                        offloop_release_fn release, void *ctx,
                        int blocking);
    PyObject *(*submit_chunks)(size_t nchunks,
                               offloop_execute_chunk_fn execute_chunk,
                               offloop_complete_fn complete,
                               offloop_release_fn release, void *ctx,
                               int blocking);
    int (*cancelled)(const offloop_cancel_t *cancel);
    /* Appended in offloop 0.2: providers of this header have it. */
    PyObject *(*submit_batch)(offloop_execute_batch_fn execute_batch,
                              unsigned long long key,
                              offloop_complete_fn complete,
                              offloop_release_fn release, void *ctx,
                              int blocking);
} offloop_capi;

/* This translation unit's copy of the table; set by offloop_import(). */
static const offloop_capi *offloop__api = NULL;

/* Import offloop and read its C API.  Call with the GIL, once per
 * translation unit, before any other offloop_* call: typically in the
 * module's exec slot (or PyInit).  Returns 0, or -1 with ImportError set
 * if offloop is missing or was built with another OFFLOOP_ABI_VERSION. */
static inline int
offloop_import(void)
{
    const offloop_capi *api;

    if (offloop__api != NULL) {
        return 0;
    }
    api = (const offloop_capi *)PyCapsule_Import(OFFLOOP_CAPSULE_NAME, 0);
    if (api == NULL) {
        return -1;
    }
    if (api->abi_version != OFFLOOP_ABI_VERSION ||
        api->size < sizeof(offloop_capi)) {
        PyErr_Format(PyExc_ImportError,
                     "offloop C API version mismatch: this extension was "
                     "built against ABI version %d, the installed offloop "
                     "provides version %u; rebuild the extension against "
                     "the installed offloop (offloop.get_include())",
                     OFFLOOP_ABI_VERSION, api->abi_version);
        return -1;
    }
    offloop__api = api;
    return 0;
}

/* Sets RuntimeError if offloop_import() has not succeeded in this file.
 * Calls release(ctx), since ownership of ctx passed at the call. */
static inline PyObject *
offloop__not_imported(offloop_release_fn release, void *ctx)
{
    if (release != NULL) {
        release(ctx);
    }
    PyErr_SetString(PyExc_RuntimeError,
                    "offloop C API used before offloop_import() succeeded "
                    "in this source file");
    return NULL;
}

/* Run execute(ctx, cancel) once on the pool.  Call with the GIL, from a
 * coroutine's thread: returns a new reference to an asyncio.Future of the
 * running event loop (an offloop.Future), resolved on that loop with
 * complete(ctx)'s result.  Cancelling it (or the task awaiting it)
 * cancels the job: a queued job never starts; a running one sees
 * offloop_cancelled() turn true.
 *
 * Returns NULL with an exception set, release(ctx) having run, if no
 * event loop is running in this thread (RuntimeError), execute is NULL
 * (SystemError), the queue is full or the interpreter is exiting
 * (RuntimeError), or memory ran out. */
static inline PyObject *
offloop_submit(offloop_execute_fn execute, offloop_complete_fn complete,
               offloop_release_fn release, void *ctx)
{
    if (offloop__api == NULL) {
        return offloop__not_imported(release, ctx);
    }
    return offloop__api->submit(execute, complete, release, ctx, 0);
}

/* Run execute(ctx, cancel) on the pool and wait for it, with the GIL
 * released, then return complete(ctx)'s result: a new reference, or NULL
 * with an exception set.  Needs no event loop (Flask, Celery, scripts).
 * In the main thread, Ctrl-C cancels the job and raises
 * KeyboardInterrupt.  On an offloop worker it runs inline.  release(ctx)
 * has run when it returns. */
static inline PyObject *
offloop_submit_blocking(offloop_execute_fn execute,
                        offloop_complete_fn complete,
                        offloop_release_fn release, void *ctx)
{
    if (offloop__api == NULL) {
        return offloop__not_imported(release, ctx);
    }
    return offloop__api->submit(execute, complete, release, ctx, 1);
}

/* As offloop_submit(), for work split in nchunks independent pieces:
 * idle workers share the chunks, and cancellation is checked between
 * chunks (and by offloop_cancelled() within one).  complete(ctx) runs
 * once, after every chunk.  nchunks may be 0 (no chunk runs, complete
 * still does). */
static inline PyObject *
offloop_submit_chunks(size_t nchunks, offloop_execute_chunk_fn execute_chunk,
                      offloop_complete_fn complete,
                      offloop_release_fn release, void *ctx)
{
    if (offloop__api == NULL) {
        return offloop__not_imported(release, ctx);
    }
    return offloop__api->submit_chunks(nchunks, execute_chunk, complete,
                                       release, ctx, 0);
}

/* As offloop_submit_blocking(), for work split in nchunks pieces. */
static inline PyObject *
offloop_submit_chunks_blocking(size_t nchunks,
                               offloop_execute_chunk_fn execute_chunk,
                               offloop_complete_fn complete,
                               offloop_release_fn release, void *ctx)
{
    if (offloop__api == NULL) {
        return offloop__not_imported(release, ctx);
    }
    return offloop__api->submit_chunks(nchunks, execute_chunk, complete,
                                       release, ctx, 1);
}

/* As offloop_submit(), for work that is cheaper done for many callers at
 * once (a model's forward pass, a scan over shared data): jobs with the
 * same execute_batch and `key` that wait in the queue together run as one
 * execute_batch(ctxs, n, cancel) call (at most offloop's max_batch, 64 by
 * default: offloop.configure(max_batch=...)).  Nothing waits for a batch
 * to fill: a job that finds no companion runs at once, alone (n = 1).
 * Each job is still cancelled, completed and released on its own: a job
 * cancelled while queued never reaches execute_batch; one cancelled after
 * its batch started has its result discarded.  Choose `key` so that jobs
 * with equal keys can share a run (e.g. the address of the shared data,
 * kept alive by every ctx). */
static inline PyObject *
offloop_submit_batch(offloop_execute_batch_fn execute_batch,
                     unsigned long long key, offloop_complete_fn complete,
                     offloop_release_fn release, void *ctx)
{
    if (offloop__api == NULL) {
        return offloop__not_imported(release, ctx);
    }
    return offloop__api->submit_batch(execute_batch, key, complete, release,
                                      ctx, 0);
}

/* As offloop_submit_blocking(), for batchable work: a blocking caller's
 * job joins batches with awaitable ones. */
static inline PyObject *
offloop_submit_batch_blocking(offloop_execute_batch_fn execute_batch,
                              unsigned long long key,
                              offloop_complete_fn complete,
                              offloop_release_fn release, void *ctx)
{
    if (offloop__api == NULL) {
        return offloop__not_imported(release, ctx);
    }
    return offloop__api->submit_batch(execute_batch, key, complete, release,
                                      ctx, 1);
}

/* True (non-zero) once the job should stop: its future or awaiting task
 * was cancelled, a blocking caller got Ctrl-C, or the interpreter is
 * exiting.  For execute(), from the worker, without the GIL; cheap (an
 * atomic load behind one call), but poll it every millisecond or so of
 * work, not in the innermost loop. */
static inline int
offloop_cancelled(const offloop_cancel_t *cancel)
{
    return offloop__api->cancelled(cancel);
}

#ifdef __cplusplus
}
#endif

#endif /* OFFLOOP_H */

/* Ports: how finished jobs reach an event loop.
 *
 * DESIGN
 *
 * A port is a done-list plus an fd the loop watches (an eventfd, or a pipe
 * where there is none).  Workers append finished jobs under port->lock and
 * write the fd only when the list goes from empty to non-empty, so one
 * wake-up of the loop resolves every job finished since the last one.
 *
 * The write happens after the lock is released.  Written under it, the
 * wake-up let the loop thread preempt the (SCHED_IDLE) worker inside its
 * critical section, then block on the lock in ol_port_take() until the
 * worker ran again: a futex wait on nearly every wake-up, and, when other
 * threads held both cores, a loop stalled for milliseconds (seen as 3-6 ms
 * GET /health outliers in bench_fastapi).  A worker about to write counts
 * itself in port->writers under the lock; ol_port_close() waits for that
 * count to reach zero before it closes the fd, so a worker still never
 * writes into a closed (or reused) fd number.
 *
 * The owner (the loop thread) first clears the fd's readiness, then swaps
 * the list out under the lock.  A job appended in between is taken with
 * this swap; a job appended after it writes the fd again.  At worst a
 * wake-up finds an empty list.
 *
 * Lifetime.  port->refs counts the owner plus every submitted job that
 * names the port; the memory is freed by the last ol_port_decref().  After
 * ol_port_close() jobs still finishing go to the orphan list, which any
 * thread holding the interpreter can empty with ol_orphans_take().
 *
 * Lock order: a port lock and the orphan lock are never held together
 * (ol__port_push releases the port lock before it touches the orphans).
 *
 * The blocking callers' counterpart of a port, the waiter, is in
 * waiter.c.
 */
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* OL_HAVE_EVENTFD: Linux, unless OL_PORTABLE asks for the pipe that
 * macOS and the BSDs get (internal.h). */
#ifdef OL_HAVE_EVENTFD
#include <sys/eventfd.h>
#endif

struct ol_port_s {
    pthread_mutex_t lock;
    ol_job_t *head, *tail; /* (lock) the done-list, oldest first */
    int closed;            /* (lock) ol_port_close() was called */
    int writers;           /* (lock) workers writing wfd outside the lock */
    pthread_cond_t written; /* writers fell to 0 with the port closed */
    int rfd, wfd;          /* equal for an eventfd; closed once writers
                              is 0, under the lock */
    atomic_uint refs;
    ol_port_t *space_next; /* (space.lock) in the list waiting for room */
    int space_linked;      /* (space.lock) */
};

static struct {
    pthread_mutex_t lock;
    ol_job_t *head, *tail; /* (lock) */
    atomic_int count;
} orphans = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Ports whose loop holds jobs back because the queue was full (FIFO).
 * Each holds a reference on its port while linked. */
static struct {
    pthread_mutex_t lock;
    ol_port_t *head, *tail; /* (lock) */
    atomic_int count;
} space = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int
open_fds(int *rfd, int *wfd)
{
#ifdef OL_HAVE_EVENTFD
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
        return -errno;
    }
    *rfd = *wfd = fd;
    return 0;
#else
    int fds[2];
    if (pipe(fds) != 0) {
        return -errno;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(fds[i], F_SETFD, FD_CLOEXEC);
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
    }
    *rfd = fds[0];
    *wfd = fds[1];
    return 0;
#endif
}

static void
close_fds(ol_port_t *port)
{
    if (port->rfd >= 0) {
        close(port->rfd);
    }
    if (port->wfd >= 0 && port->wfd != port->rfd) {
        close(port->wfd);
    }
    port->rfd = port->wfd = -1;
}

int
ol_port_new(ol_port_t **out)
{
    ol_port_t *port = calloc(1, sizeof(*port));
    int err;

    if (port == NULL) {
        return OL_ENOMEM;
    }
    err = open_fds(&port->rfd, &port->wfd);
    if (err < 0) {
        free(port);
        return err;
    }
    OL__CHECK(pthread_mutex_init(&port->lock, NULL));
    OL__CHECK(pthread_cond_init(&port->written, NULL));
    atomic_init(&port->refs, 1);
    *out = port;
    return 0;
}

int
ol_port_fd(const ol_port_t *port)
{
    return port->rfd;
}

static void
write_fd(ol_port_t *port)
{
#ifdef OL_HAVE_EVENTFD
    uint64_t one = 1;
    ssize_t n = write(port->wfd, &one, sizeof(one));
#else
    char one = 1;
    ssize_t n = write(port->wfd, &one, 1);
#endif
    /* EAGAIN: the fd is readable already, which is all a write is for. */
    (void)n;
}

/* Port lock held, port open: this thread will write the fd once it has
 * released the lock (wake_unlocked). */
static void
begin_wake(ol_port_t *port)
{
    port->writers++;
}

/* Without the port lock, after begin_wake(): write the fd, then let a
 * waiting ol_port_close() go on.  The owner's reference keeps the port
 * alive until ol_port_close() has returned, so until this has ended. */
static void
wake_unlocked(ol_port_t *port)
{
    write_fd(port);
    OL__CHECK(pthread_mutex_lock(&port->lock));
    if (--port->writers == 0 && port->closed) {
        OL__CHECK(pthread_cond_signal(&port->written));
    }
    OL__CHECK(pthread_mutex_unlock(&port->lock));
}

void
ol__orphan_push(ol_job_t *job)
{
    OL__CHECK(pthread_mutex_lock(&orphans.lock));
    if (orphans.tail != NULL) {
        orphans.tail->done_next = job;
    }
    else {
        orphans.head = job;
    }
    orphans.tail = job;
    atomic_fetch_add(&orphans.count, 1);
    OL__CHECK(pthread_mutex_unlock(&orphans.lock));
}

void
ol__port_push(ol_port_t *port, ol_job_t *job)
{
    int woke = 0;

    job->done_next = NULL;
    OL__CHECK(pthread_mutex_lock(&port->lock));
    if (port->closed) {
        OL__CHECK(pthread_mutex_unlock(&port->lock));
        ol__orphan_push(job);
        return;
    }
    if (port->tail != NULL) {
        port->tail->done_next = job;
        port->tail = job;
    }
    else {
        port->head = port->tail = job;
        begin_wake(port);
        woke = 1;
    }
    OL__CHECK(pthread_mutex_unlock(&port->lock));
    /* The job may be taken, resolved and freed from here on: only the
     * port is touched. */
    if (woke) {
        wake_unlocked(port);
    }
}

static void
clear_readiness(ol_port_t *port)
{
#ifdef OL_HAVE_EVENTFD
    uint64_t count;
    /* One read resets an eventfd's counter to zero. */
    (void)!read(port->rfd, &count, sizeof(count));
#else
    char buf[64];
    while (read(port->rfd, buf, sizeof(buf)) > 0) {
    }
#endif
}

ol_job_t *
ol_port_take(ol_port_t *port)
{
    ol_job_t *list;

    clear_readiness(port);
    OL__CHECK(pthread_mutex_lock(&port->lock));
    list = port->head;
    port->head = port->tail = NULL;
    OL__CHECK(pthread_mutex_unlock(&port->lock));
    return list;
}

int
ol_port_visit(ol_port_t *port, int (*visit)(ol_job_t *, void *), void *arg)
{
    int rc = 0;

    /* Workers only append while we walk: the lock keeps the links whole,
     * and a job appended after the walk is simply not seen this time. */
    OL__CHECK(pthread_mutex_lock(&port->lock));
    for (ol_job_t *job = port->head; job != NULL && rc == 0;
         job = job->done_next) {
        rc = visit(job, arg);
    }
    OL__CHECK(pthread_mutex_unlock(&port->lock));
    return rc;
}

ol_job_t *
ol_port_close(ol_port_t *port)
{
    ol_job_t *list;

    OL__CHECK(pthread_mutex_lock(&port->lock));
    port->closed = 1;
    list = port->head;
    port->head = port->tail = NULL;
    while (port->writers > 0) {
        OL__CHECK(pthread_cond_wait(&port->written, &port->lock));
    }
    close_fds(port);
    OL__CHECK(pthread_mutex_unlock(&port->lock));
    return list;
}

void
ol_port_forget(ol_port_t *port)
{
    /* The parent may have held port->lock at fork(): do not take it. */
    close_fds(port);
    port->closed = 1;
    port->head = port->tail = NULL;
}

void
ol_port_incref(ol_port_t *port)
{
    atomic_fetch_add_explicit(&port->refs, 1, memory_order_relaxed);
}

void
ol_port_decref(ol_port_t *port)
{
    if (atomic_fetch_sub_explicit(&port->refs, 1, memory_order_acq_rel) ==
        1) {
        close_fds(port);
        pthread_cond_destroy(&port->written);
        pthread_mutex_destroy(&port->lock);
        free(port);
    }
}

ol_job_t *
ol_orphans_take(void)
{
    ol_job_t *list;

    if (atomic_load(&orphans.count) == 0) {
        return NULL;
    }
    OL__CHECK(pthread_mutex_lock(&orphans.lock));
    list = orphans.head;
    orphans.head = orphans.tail = NULL;
    atomic_store(&orphans.count, 0);
    OL__CHECK(pthread_mutex_unlock(&orphans.lock));
    return list;
}

int
ol_orphans_pending(void)
{
    return atomic_load(&orphans.count) > 0;
}

void
ol__ports_lock_for_fork(void)
{
    OL__CHECK(pthread_mutex_lock(&orphans.lock));
    OL__CHECK(pthread_mutex_lock(&space.lock));
}

void
ol__ports_unlock_for_fork(void)
{
    OL__CHECK(pthread_mutex_unlock(&space.lock));
    OL__CHECK(pthread_mutex_unlock(&orphans.lock));
}

void
ol__ports_reset_after_fork(void)
{
    orphans.head = orphans.tail = NULL;
    atomic_store(&orphans.count, 0);
    space.head = space.tail = NULL;
    atomic_store(&space.count, 0);
}

/* ---- waiting for queue room ---------------------------------------- */

void
ol_port_wait_space(ol_port_t *port)
{
    OL__CHECK(pthread_mutex_lock(&space.lock));
    if (!port->space_linked) {
        port->space_linked = 1;
        port->space_next = NULL;
        ol_port_incref(port);
        if (space.tail != NULL) {
            space.tail->space_next = port;
        }
        else {
            space.head = port;
        }
        space.tail = port;
        atomic_fetch_add(&space.count, 1);
    }
    OL__CHECK(pthread_mutex_unlock(&space.lock));
    /* Room may have freed between the failed submit and the line above,
     * with nobody registered to hear of it. */
    if (ol_pool_has_space()) {
        ol__ports_notify_space(1);
    }
}

int
ol__ports_waiting_for_space(void)
{
    return atomic_load(&space.count) > 0;
}

void
ol__ports_notify_space(int all)
{
    do {
        OL__CHECK(pthread_mutex_lock(&space.lock));
        ol_port_t *port = space.head;
        if (port != NULL) {
            space.head = port->space_next;
            if (space.head == NULL) {
                space.tail = NULL;
            }
            port->space_linked = 0;
            atomic_fetch_sub(&space.count, 1);
        }
        OL__CHECK(pthread_mutex_unlock(&space.lock));
        if (port == NULL) {
            return;
        }
        OL__CHECK(pthread_mutex_lock(&port->lock));
        int open = !port->closed;
        if (open) {
            begin_wake(port);
        }
        OL__CHECK(pthread_mutex_unlock(&port->lock));
        if (open) {
            wake_unlocked(port);
        }
        ol_port_decref(port);
    } while (all);
}

/* Private to the core: what its files share (the pool's pool.c,
 * worker.c, batch.c and deliver.c, and port.c, priority.c, waiter.c).
 * The pool's own files also share pool_state.h. */
#ifndef OFFLOOP_CORE_INTERNAL_H
#define OFFLOOP_CORE_INTERNAL_H

#include "offloop-core.h"

/* What the system offers, decided here once.  OL_PORTABLE builds take the
 * paths macOS and the BSDs take (CMakeLists.txt, option OL_PORTABLE), and
 * also define OL_NO_CONDATTR_SETCLOCK, macOS's lack, which Linux and the
 * BSDs do not share.  OL_HAVE_FUTEX is in offloop-core.h (it sizes
 * ol_waiter_t). */
#if defined(__linux__) && !defined(OL_PORTABLE)
#define OL_HAVE_EVENTFD 1 /* else a pipe (port.c) */
#endif
#if !defined(__APPLE__) && !defined(OL_NO_CONDATTR_SETCLOCK)
#define OL_HAVE_CONDATTR_SETCLOCK 1
#endif
#if defined(__APPLE__)
#define OL_HAVE_COND_TIMEDWAIT_RELATIVE_NP 1
#endif

#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Hand a finished job to its port, or to the orphan list if the port is
 * closed.  Called by the worker that ended the job, without the pool lock
 * (a worker never holds the pool lock and a port lock at once). */
void ol__port_push(ol_port_t *port, ol_job_t *job);

/* Hand a job whose owner is gone to the orphan list.  Any thread, no
 * lock held. */
void ol__orphan_push(ol_job_t *job);

/* Wake a blocking caller. */
void ol__waiter_wake(ol_waiter_t *w);

/* In a child after fork(): empty the orphan list (the parent's jobs) and
 * the list of ports waiting for queue room (the parent's ports). */
void ol__ports_reset_after_fork(void);

/* Take/release port.c's global locks around fork(). */
void ol__ports_lock_for_fork(void);
void ol__ports_unlock_for_fork(void);

/* Ports waiting for queue room (ol_port_wait_space). */
int ol__ports_waiting_for_space(void);
/* Wake the first waiting port (or all), outside the pool lock. */
void ol__ports_notify_space(int all);

/* For the tests: the spin budget of a worker after its job, and the
 * number of workers asleep waiting for work. */
long ol__pool_spin_budget_ns(void);
unsigned ol__pool_idle_workers(void);
#define OL__SPIN_MIN_NS 2000L
#define OL__SPIN_MAX_NS 50000L

/* The workers' scheduling priority (priority.c).  ol__priority_init()
 * reads OFFLOOP_WORKER_PRIORITY once, when the pool starts (a value it
 * cannot use keeps the default; the Python shim warns about it);
 * ol__priority_apply() sets it on the calling worker's own thread. */
void ol__priority_init(void);
void ol__priority_apply(void);

/* Timed waits (waiter.c).  Every deadline is absolute, on
 * CLOCK_MONOTONIC: *ts = now + timeout_ms. */
struct timespec;
void ol__deadline_after(struct timespec *ts, long timeout_ms);
/* Create a condition variable for ol__cond_timedwait(): on
 * CLOCK_MONOTONIC where pthread_condattr_setclock() exists. */
void ol__cond_init(pthread_cond_t *cond);
/* pthread_cond_timedwait() until the monotonic `deadline`, whatever clock
 * the system gave `cond`.  Returns 0 (woken, perhaps spuriously: re-check
 * the predicate and call again with the same deadline) or ETIMEDOUT once
 * the deadline has passed.  Any other error aborts. */
int ol__cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *lock,
                       const struct timespec *deadline);

/* Abort with a message: a broken invariant (a pthread call that cannot
 * fail when used correctly). */
void ol__fatal(const char *what, int err);

#define OL__CHECK(call)              \
    do {                             \
        int ol__err = (call);        \
        if (ol__err != 0) {          \
            ol__fatal(#call, ol__err); \
        }                            \
    } while (0)

#endif /* OFFLOOP_CORE_INTERNAL_H */

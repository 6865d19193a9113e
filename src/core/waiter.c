/* Waiting: the blocking callers' waiters, and the timed condition-variable
 * waits every core file uses.
 *
 * DESIGN
 *
 * Clocks.  Every deadline in the core is an absolute time on
 * CLOCK_MONOTONIC (ol__deadline_after), so that setting the wall clock
 * neither ends a wait early nor stretches it.  How a condition variable
 * is made to honour it depends on the system:
 *
 * - Linux and the BSDs have pthread_condattr_setclock(): each condition
 *   is created on CLOCK_MONOTONIC (ol__cond_init) and pthread_cond_timedwait
 *   takes the deadline as it is.
 * - macOS has no pthread_condattr_setclock(); its conditions time out on
 *   the realtime clock.  There ol__cond_timedwait() turns what is left of
 *   the monotonic deadline into a relative wait,
 *   pthread_cond_timedwait_relative_np(), which no clock step can move.
 * - Anywhere else without the attribute (and in OL_PORTABLE builds on
 *   Linux, which take this path on purpose so that CI runs it), the
 *   remainder is added to CLOCK_REALTIME, the conditions' default clock.
 *
 * Handing a condition with the default clock a CLOCK_MONOTONIC deadline
 * was the bug this file's helpers exist for: the monotonic clock counts
 * from boot, so as a realtime date it lies in 1970 and every timed wait
 * returned at once.  In the two relative cases a wait that times out
 * before the monotonic deadline (a realtime step forward) reports a
 * spurious wake-up (0) instead, and every caller loops back to its
 * predicate and waits again for what is left.  What no relative scheme
 * can undo is a realtime step backwards during one wait on the realtime
 * path; macOS's relative wait has no such case.
 *
 * Waiters.  A blocking caller (a Flask handler, a script) submits a job
 * naming an ol_waiter_t on its stack and sleeps in ol_waiter_wait(); the
 * worker that ends the job calls ol__waiter_wake().  On Linux the waiter
 * is a futex (below, for why); elsewhere, and in OL_PORTABLE builds, a
 * mutex and a condition variable with the clock rules above.
 */
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
/* pthread_cond_timedwait_relative_np() is a Darwin extension. */
#define _DARWIN_C_SOURCE 1
#endif
#include "internal.h"

#include <time.h>
#include <unistd.h>

#ifdef OL_HAVE_FUTEX
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

/* ---- deadlines and timed waits ------------------------------------- */

void
ol__deadline_after(struct timespec *ts, long timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void
ol__cond_init(pthread_cond_t *cond)
{
#ifdef OL_HAVE_CONDATTR_SETCLOCK
    pthread_condattr_t attr;

    OL__CHECK(pthread_condattr_init(&attr));
    OL__CHECK(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC));
    OL__CHECK(pthread_cond_init(cond, &attr));
    OL__CHECK(pthread_condattr_destroy(&attr));
#else
    /* The default clock: ol__cond_timedwait() converts each deadline. */
    OL__CHECK(pthread_cond_init(cond, NULL));
#endif
}

#ifndef OL_HAVE_CONDATTR_SETCLOCK
/* What is left until the monotonic `deadline`; 0 once it has passed. */
static int
remaining(const struct timespec *deadline, struct timespec *left)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    left->tv_sec = deadline->tv_sec - now.tv_sec;
    left->tv_nsec = deadline->tv_nsec - now.tv_nsec;
    if (left->tv_nsec < 0) {
        left->tv_sec--;
        left->tv_nsec += 1000000000L;
    }
    return left->tv_sec > 0 || (left->tv_sec == 0 && left->tv_nsec > 0);
}
#endif

int
ol__cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *lock,
                   const struct timespec *deadline)
{
#ifdef OL_HAVE_CONDATTR_SETCLOCK
    int rc = pthread_cond_timedwait(cond, lock, deadline);
#else
    struct timespec left;
    int rc;

    if (!remaining(deadline, &left)) {
        return ETIMEDOUT;
    }
#ifdef OL_HAVE_COND_TIMEDWAIT_RELATIVE_NP
    rc = pthread_cond_timedwait_relative_np(cond, lock, &left);
#else
    struct timespec abs;
    clock_gettime(CLOCK_REALTIME, &abs);
    abs.tv_sec += left.tv_sec;
    abs.tv_nsec += left.tv_nsec;
    if (abs.tv_nsec >= 1000000000L) {
        abs.tv_sec++;
        abs.tv_nsec -= 1000000000L;
    }
    rc = pthread_cond_timedwait(cond, lock, &abs);
#endif
    /* Timed out on the other clock before the monotonic deadline: a
     * spurious wake-up for the caller, who waits again for the rest. */
    if (rc == ETIMEDOUT && remaining(deadline, &left)) {
        rc = 0;
    }
#endif
    if (rc != 0 && rc != ETIMEDOUT) {
        ol__fatal("pthread_cond_timedwait", rc);
    }
    return rc;
}

/* ---- waiters ------------------------------------------------------- */

#ifdef OL_HAVE_FUTEX
/* A futex, so that the worker holds no lock when the caller wakes: with a
 * mutex and condition variable the caller, of normal priority, preempted
 * the SCHED_IDLE worker inside pthread_cond_signal() and then blocked on
 * the mutex until the worker ran again (831 such waits in 5,000 blocking
 * calls).  glibc's own semaphores work this way. */

static long
futex(atomic_uint *word, int op, unsigned value, const struct timespec *ts)
{
    return syscall(SYS_futex, word, op, value, ts, NULL,
                   FUTEX_BITSET_MATCH_ANY);
}

void
ol_waiter_init(ol_waiter_t *w)
{
    atomic_init(&w->done, 0);
}

void
ol_waiter_destroy(ol_waiter_t *w)
{
    (void)w;
}

void
ol__waiter_wake(ol_waiter_t *w)
{
    atomic_store_explicit(&w->done, 1, memory_order_release);
    /* The caller may have seen `done` and reused the memory already: the
     * wake then names a stale address and at worst wakes some other futex
     * waiter there early, which every futex user tolerates (it re-checks
     * its word).  The address stays mapped while the caller's thread
     * lives, and a wake on an unmapped one fails with EFAULT. */
    (void)futex(&w->done, FUTEX_WAKE_BITSET | FUTEX_PRIVATE_FLAG, 1, NULL);
}

int
ol_waiter_wait(ol_waiter_t *w, long timeout_ms)
{
    struct timespec deadline;

    if (timeout_ms >= 0) {
        ol__deadline_after(&deadline, timeout_ms);
    }
    while (!atomic_load_explicit(&w->done, memory_order_acquire)) {
        /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline
         * (no FUTEX_CLOCK_REALTIME), so a retry does not extend it.
         * EINTR, and EAGAIN (done was set meanwhile), loop back to the
         * check. */
        if (futex(&w->done, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, 0,
                  timeout_ms >= 0 ? &deadline : NULL) != 0 &&
            errno == ETIMEDOUT) {
            break;
        }
    }
    return (int)atomic_load_explicit(&w->done, memory_order_acquire);
}

#else /* the portable waiter */

void
ol_waiter_init(ol_waiter_t *w)
{
    OL__CHECK(pthread_mutex_init(&w->lock, NULL));
    /* On CLOCK_MONOTONIC where the system allows it; the timed wait
     * below copes with the default clock elsewhere. */
    ol__cond_init(&w->cond);
    w->done = 0;
}

void
ol_waiter_destroy(ol_waiter_t *w)
{
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}

void
ol__waiter_wake(ol_waiter_t *w)
{
    OL__CHECK(pthread_mutex_lock(&w->lock));
    w->done = 1;
    OL__CHECK(pthread_cond_signal(&w->cond));
    /* The waiter may destroy w as soon as we unlock. */
    OL__CHECK(pthread_mutex_unlock(&w->lock));
}

int
ol_waiter_wait(ol_waiter_t *w, long timeout_ms)
{
    struct timespec deadline;
    int rc = 0, done;

    if (timeout_ms >= 0) {
        ol__deadline_after(&deadline, timeout_ms);
    }
    OL__CHECK(pthread_mutex_lock(&w->lock));
    while (!w->done && rc == 0) {
        if (timeout_ms < 0) {
            OL__CHECK(pthread_cond_wait(&w->cond, &w->lock));
        }
        else {
            rc = ol__cond_timedwait(&w->cond, &w->lock, &deadline);
        }
    }
    done = w->done;
    OL__CHECK(pthread_mutex_unlock(&w->lock));
    return done;
}

#endif

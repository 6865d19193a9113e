/* Tests of the timed waits (src/core/waiter.c): a blocking caller's waiter,
 * ol_pool_wait_idle() and ol_pool_wait_space() each wait about their
 * timeout, never much less and never without end, on whichever clock path
 * this build took; and the build took the path it was asked for.
 *
 * The clock bug these guard against: a condition variable left on the
 * realtime clock, handed a CLOCK_MONOTONIC deadline (a date in 1970),
 * times out at once.  The lower bounds below are what catch it; they are
 * exact (a deadline never passes early on the monotonic clock).  The upper
 * bound is loose on purpose (OL_TEST_TIMEOUT_MS, 10 s by default): it only
 * catches a wait on the wrong clock that never ends, not a slow machine.
 */
#include <unistd.h>

#include "internal.h" /* ol__cond_*, and which paths the build took */
#include "test_util.h"

#define WAIT_MS 150L

static long tmo;

static long
elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (long)((t1.tv_sec - t0->tv_sec) * 1000 +
                  (t1.tv_nsec - t0->tv_nsec) / 1000000);
}

/* The build took the paths its options name: OL_PORTABLE means what
 * macOS gets, as far as Linux allows. */
static void
build_paths(void)
{
    int futex = 0, eventfd = 0, setclock = 0, portable = 0;

#ifdef OL_HAVE_FUTEX
    futex = 1;
#endif
#ifdef OL_HAVE_EVENTFD
    eventfd = 1;
#endif
#ifdef OL_HAVE_CONDATTR_SETCLOCK
    setclock = 1;
#endif
#ifdef OL_PORTABLE
    portable = 1;
#endif
    printf("     portable=%d futex=%d eventfd=%d condattr_setclock=%d\n",
           portable, futex, eventfd, setclock);
    if (portable) {
        ASSERT_EQ(futex, 0);
        ASSERT_EQ(eventfd, 0);
        ASSERT_EQ(setclock, 0);
    }
#if defined(__linux__)
    else {
        ASSERT_EQ(futex, 1);
        ASSERT_EQ(eventfd, 1);
        ASSERT_EQ(setclock, 1);
    }
#endif
}

/* Nobody wakes the waiter: it times out after WAIT_MS, not before. */
static void
waiter_times_out(void)
{
    ol_waiter_t w;
    struct timespec t0;
    long ms;

    ol_waiter_init(&w);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ASSERT_EQ(ol_waiter_wait(&w, WAIT_MS), 0);
    ms = elapsed_ms(&t0);
    ASSERT_GE(ms, WAIT_MS);
    ASSERT_LE(ms, WAIT_MS + tmo);
    /* A zero timeout returns at once, still 0. */
    ASSERT_EQ(ol_waiter_wait(&w, 0), 0);
    ol_waiter_destroy(&w);
}

typedef struct {
    ol_job_t job;
    gate_t *gate;
} held_t;

static int
held_work(ol_job_t *job, size_t chunk)
{
    held_t *h = (held_t *)job;

    return h->gate != NULL ? gate_enter(h->gate) : 0;
}

static void
held_init(held_t *h, gate_t *g, ol_waiter_t *w)
{
    memset(h, 0, sizeof(*h));
    h->job.work = held_work;
    h->job.nchunks = 1;
    h->job.waiter = w;
    h->gate = g;
}

/* A job that finishes while the caller waits with a long timeout: the
 * wait ends with the delivery, well before the timeout. */
static void
waiter_wakes_before_timeout(void)
{
    gate_t g;
    held_t h;
    ol_waiter_t w;

    ASSERT_OK(ol_pool_configure(1, 0));
    gate_init(&g);
    ol_waiter_init(&w);
    held_init(&h, &g, &w);
    ASSERT_OK(ol_pool_submit(&h.job, 0));
    ASSERT(gate_wait_entered(&g, 1, tmo));
    /* Held: a short wait times out, and the job still completes. */
    ASSERT_EQ(ol_waiter_wait(&w, 20), 0);
    gate_open(&g);
    ASSERT_EQ(ol_waiter_wait(&w, tmo), 1);
    ASSERT_EQ(ol_job_status(&h.job), 0);
    ol_waiter_destroy(&w);
    ASSERT_OK(ol_pool_wait_idle(tmo));
    gate_destroy(&g);
}

/* ol_pool_wait_idle() and ol_pool_wait_space() wait on the pool's
 * condition variables: with the only worker held and the queue full,
 * each times out after its timeout, not before. */
static void
pool_waits_time_out(void)
{
    gate_t g;
    held_t running, queued;
    ol_waiter_t w1, w2;
    struct timespec t0;
    long ms;

    ASSERT_OK(ol_pool_configure(1, 1));
    gate_init(&g);
    ol_waiter_init(&w1);
    ol_waiter_init(&w2);
    held_init(&running, &g, &w1);
    held_init(&queued, NULL, &w2);
    ASSERT_OK(ol_pool_submit(&running.job, 0));
    ASSERT(gate_wait_entered(&g, 1, tmo));
    ASSERT_OK(ol_pool_submit(&queued.job, 0)); /* the queue is full now */
    ASSERT(!ol_pool_has_space());

    clock_gettime(CLOCK_MONOTONIC, &t0);
    ASSERT_EQ(ol_pool_wait_idle(WAIT_MS), -ETIMEDOUT);
    ms = elapsed_ms(&t0);
    ASSERT_GE(ms, WAIT_MS);
    ASSERT_LE(ms, WAIT_MS + tmo);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    ASSERT_EQ(ol_pool_wait_space(WAIT_MS), -ETIMEDOUT);
    ms = elapsed_ms(&t0);
    ASSERT_GE(ms, WAIT_MS);
    ASSERT_LE(ms, WAIT_MS + tmo);

    gate_open(&g);
    ASSERT_EQ(ol_waiter_wait(&w1, tmo), 1);
    ASSERT_EQ(ol_waiter_wait(&w2, tmo), 1);
    ASSERT_OK(ol_pool_wait_space(tmo));
    ASSERT_OK(ol_pool_wait_idle(tmo));
    ol_waiter_destroy(&w1);
    ol_waiter_destroy(&w2);
    gate_destroy(&g);
    ASSERT_OK(ol_pool_configure(2, 0));
}

/* The helper itself: a deadline already past times out at once, and a
 * wait never reports ETIMEDOUT before its monotonic deadline, however
 * often it is called (a caller loops on 0). */
static void
cond_timedwait_deadlines(void)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond;
    struct timespec deadline, t0;
    int rc = 0, calls = 0;
    long ms;

    ol__cond_init(&cond);
    CHECK_PT(pthread_mutex_lock(&lock));
    ol__deadline_after(&deadline, 0);
    ASSERT_EQ(ol__cond_timedwait(&cond, &lock, &deadline), ETIMEDOUT);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    ol__deadline_after(&deadline, WAIT_MS);
    while (rc == 0) {
        rc = ol__cond_timedwait(&cond, &lock, &deadline);
        calls++;
        ASSERT_LE(calls, 1000); /* spurious wake-ups, but not a spin */
    }
    ASSERT_EQ(rc, ETIMEDOUT);
    ms = elapsed_ms(&t0);
    ASSERT_GE(ms, WAIT_MS);
    ASSERT_LE(ms, WAIT_MS + tmo);
    CHECK_PT(pthread_mutex_unlock(&lock));
    CHECK_PT(pthread_cond_destroy(&cond));
}

int
main(int argc, char **argv)
{
    static const ol_test_case_t cases[] = {
        {"build_paths", build_paths},
        {"waiter_times_out", waiter_times_out},
        {"waiter_wakes_before_timeout", waiter_wakes_before_timeout},
        {"pool_waits_time_out", pool_waits_time_out},
        {"cond_timedwait_deadlines", cond_timedwait_deadlines},
    };
    int rc;

    tmo = ol_test_timeout_ms();
    rc = ol_test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
    ASSERT_OK(ol_pool_shutdown(tmo, NULL));
    return rc;
}

/* Shared helpers of the C tests of the core (test_pool.c, test_port.c).
 *
 * ASSERT* stay on in release builds (they do not use assert()).  A failed
 * check prints the case, file, line and expression, then aborts: after a
 * failure the pool may still own jobs that live on the test's stack, so
 * going on could only turn one failure into a crash elsewhere.
 *
 * Every wait is bounded by ol_test_timeout_ms() (10 s, or OL_TEST_TIMEOUT_MS),
 * so a lost wake-up fails a case instead of hanging it.  Loop counts go
 * through ol_test_scaled(), which multiplies by OL_TEST_SCALE (default 1;
 * e.g. 0.05 under valgrind).
 *
 * A test program lists its cases in a ol_test_case_t array and calls
 * ol_test_main(); `test_x NAME...` runs the named cases only.
 */
#ifndef OL_TEST_UTIL_H
#define OL_TEST_UTIL_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "offloop-core.h"

static const char *ol_test_current = "?";

#define ASSERT(expr)                                                       \
    do {                                                                   \
        if (!(expr)) {                                                     \
            fprintf(stderr, "FAIL %s: %s:%d: %s\n", ol_test_current,       \
                    __FILE__, __LINE__, #expr);                            \
            fflush(NULL);                                                  \
            abort();                                                       \
        }                                                                  \
    } while (0)

#define ASSERT_CMP(a, op, b)                                               \
    do {                                                                   \
        long long ol_a_ = (long long)(a), ol_b_ = (long long)(b);          \
        if (!(ol_a_ op ol_b_)) {                                           \
            fprintf(stderr, "FAIL %s: %s:%d: %s %s %s (%lld vs %lld)\n",   \
                    ol_test_current, __FILE__, __LINE__, #a, #op, #b,      \
                    ol_a_, ol_b_);                                         \
            fflush(NULL);                                                  \
            abort();                                                       \
        }                                                                  \
    } while (0)

#define ASSERT_EQ(a, b) ASSERT_CMP(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_CMP(a, !=, b)
#define ASSERT_LE(a, b) ASSERT_CMP(a, <=, b)
#define ASSERT_GE(a, b) ASSERT_CMP(a, >=, b)
#define ASSERT_OK(call) ASSERT_EQ(call, 0)

/* pthread calls that cannot fail in a correct test. */
#define CHECK_PT(call) ASSERT_EQ(call, 0)

static inline long
ol_test_env_long(const char *name, long dflt)
{
    const char *s = getenv(name);

    return s != NULL && *s != '\0' ? strtol(s, NULL, 10) : dflt;
}

static inline long
ol_test_timeout_ms(void)
{
    return ol_test_env_long("OL_TEST_TIMEOUT_MS", 10000);
}

/* n times OL_TEST_SCALE, at least `min`. */
static inline size_t
ol_test_scaled(size_t n, size_t min)
{
    const char *s = getenv("OL_TEST_SCALE");
    double f = s != NULL && *s != '\0' ? strtod(s, NULL) : 1.0;
    double v = (double)n * f;

    return v < (double)min ? min : (size_t)v;
}

static inline void
ol_test_deadline(struct timespec *ts, long timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static inline int
ol_test_past(const struct timespec *deadline)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec &&
            now.tv_nsec >= deadline->tv_nsec);
}

/* ---- gate: jobs that block until the test lets them go ------------- */

/* Workers call gate_enter() and block until gate_open() (or the timeout:
 * then gate_enter() returns -ETIMEDOUT, so a broken test still ends).
 * The test waits for `entered` with gate_wait_entered(). */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int open;         /* lock */
    unsigned entered; /* lock: gate_enter() calls so far */
} gate_t;

/* The gate's condition runs on CLOCK_MONOTONIC where the system allows
 * it; macOS has no pthread_condattr_setclock(), and there the gate's
 * deadlines are on the realtime clock, its conditions' default.  (The
 * core's own waits do better: src/core/waiter.c.) */
#if defined(__APPLE__)
#define OL_TEST_GATE_CLOCK CLOCK_REALTIME
#else
#define OL_TEST_GATE_CLOCK CLOCK_MONOTONIC
#endif

static inline void
gate_deadline(struct timespec *ts, long timeout_ms)
{
    clock_gettime(OL_TEST_GATE_CLOCK, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static inline void
gate_init(gate_t *g)
{
    pthread_condattr_t attr;

    CHECK_PT(pthread_mutex_init(&g->lock, NULL));
    CHECK_PT(pthread_condattr_init(&attr));
#if !defined(__APPLE__)
    CHECK_PT(pthread_condattr_setclock(&attr, OL_TEST_GATE_CLOCK));
#endif
    CHECK_PT(pthread_cond_init(&g->cond, &attr));
    CHECK_PT(pthread_condattr_destroy(&attr));
    g->open = 0;
    g->entered = 0;
}

static inline void
gate_destroy(gate_t *g)
{
    CHECK_PT(pthread_cond_destroy(&g->cond));
    CHECK_PT(pthread_mutex_destroy(&g->lock));
}

static inline int
gate_enter(gate_t *g)
{
    struct timespec deadline;
    int rc = 0;

    gate_deadline(&deadline, ol_test_timeout_ms());
    CHECK_PT(pthread_mutex_lock(&g->lock));
    g->entered++;
    CHECK_PT(pthread_cond_broadcast(&g->cond));
    while (!g->open && rc == 0) {
        rc = pthread_cond_timedwait(&g->cond, &g->lock, &deadline);
    }
    rc = g->open ? 0 : -ETIMEDOUT;
    CHECK_PT(pthread_mutex_unlock(&g->lock));
    return rc;
}

static inline void
gate_open(gate_t *g)
{
    CHECK_PT(pthread_mutex_lock(&g->lock));
    g->open = 1;
    CHECK_PT(pthread_cond_broadcast(&g->cond));
    CHECK_PT(pthread_mutex_unlock(&g->lock));
}

/* Wait until `n` threads entered.  Returns 1, or 0 on timeout. */
static inline int
gate_wait_entered(gate_t *g, unsigned n, long timeout_ms)
{
    struct timespec deadline;
    int rc = 0, ok;

    gate_deadline(&deadline, timeout_ms);
    CHECK_PT(pthread_mutex_lock(&g->lock));
    while (g->entered < n && rc == 0) {
        rc = pthread_cond_timedwait(&g->cond, &g->lock, &deadline);
    }
    ok = g->entered >= n;
    CHECK_PT(pthread_mutex_unlock(&g->lock));
    return ok;
}

static inline unsigned
gate_entered(gate_t *g)
{
    unsigned n;

    CHECK_PT(pthread_mutex_lock(&g->lock));
    n = g->entered;
    CHECK_PT(pthread_mutex_unlock(&g->lock));
    return n;
}

/* ---- running the cases --------------------------------------------- */

typedef struct {
    const char *name;
    void (*fn)(void);
} ol_test_case_t;

static inline int
ol_test_main(int argc, char **argv, const ol_test_case_t *cases, size_t n)
{
    int ran = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < n; i++) {
        int wanted = argc <= 1;
        for (int a = 1; a < argc; a++) {
            wanted |= strcmp(argv[a], cases[i].name) == 0;
        }
        if (!wanted) {
            continue;
        }
        struct timespec t0, t1;
        ol_test_current = cases[i].name;
        printf("RUN  %s\n", cases[i].name);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        cases[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("ok   %s (%ld ms)\n", cases[i].name,
               (long)((t1.tv_sec - t0.tv_sec) * 1000 +
                      (t1.tv_nsec - t0.tv_nsec) / 1000000));
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "no such test case\n");
        return 2;
    }
    printf("all %d cases passed\n", ran);
    return 0;
}

#endif /* OL_TEST_UTIL_H */

/* Tests of completion ports (src/core/port.c): delivery to the port, fd
 * readiness, oldest-first takes, coalesced wake-ups, concurrent delivery
 * against a taker, close (untaken jobs back, late jobs to the orphan
 * list), close racing deliveries, reference counts and the closed fd.
 *
 * Most cases run the pool with ONE worker: it delivers jobs in queue
 * order, and it ends a job before it takes the next one, so a job with a
 * waiter submitted last (a "sentinel") proves that every job before it
 * has reached the port, in that order.
 */
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "internal.h" /* ol__port_push: the workers' delivery path */
#include "test_util.h"

/* The port's fd is an eventfd on Linux and a pipe with OL_PORTABLE (as on
 * macOS and the BSDs): internal.h says which. */
#ifdef OL_HAVE_EVENTFD
#include <sys/eventfd.h>
#endif

static long tmo;

typedef struct {
    ol_job_t job; /* first: an ol_job_t * is a pjob_t * */
    size_t index;
    atomic_int runs;
    gate_t *gate; /* work blocks on it if set */
} pjob_t;

#define PJOB(j) ((pjob_t *)(j))

static int
pjob_work(ol_job_t *job, size_t chunk)
{
    pjob_t *p = PJOB(job);

    atomic_fetch_add(&p->runs, 1);
    return p->gate != NULL ? gate_enter(p->gate) : 0;
}

static void
pjob_init(pjob_t *p, ol_port_t *port, size_t index)
{
    memset(p, 0, sizeof(*p));
    p->job.work = pjob_work;
    p->job.nchunks = 1 + index % 3;
    p->job.port = port;
    p->index = index;
}

static int
readable(ol_port_t *port, long timeout_ms)
{
    struct pollfd pfd = {.fd = ol_port_fd(port), .events = POLLIN};
    int rc = poll(&pfd, 1, (int)timeout_ms);

    ASSERT(rc >= 0);
    return rc > 0 && (pfd.revents & POLLIN);
}

/* Submit a waiter job behind everything queued and wait for it: with one
 * worker, every job submitted before has been delivered when it returns. */
static void
sentinel(void)
{
    ol_waiter_t w;
    pjob_t s;

    pjob_init(&s, NULL, 0);
    ol_waiter_init(&w);
    s.job.waiter = &w;
    ASSERT_OK(ol_pool_submit(&s.job, 0));
    ASSERT_EQ(ol_waiter_wait(&w, tmo), 1);
    ol_waiter_destroy(&w);
}

/* Check that `list` is exactly jobs[from..to), oldest first; give their
 * references back.  Returns the number taken. */
static size_t
expect_list(ol_port_t *port, ol_job_t *list, pjob_t *jobs, size_t from,
            size_t to)
{
    size_t i = from;

    for (ol_job_t *j = list; j != NULL;) {
        ol_job_t *next = j->done_next;
        ASSERT(i < to);
        ASSERT(j == &jobs[i].job);
        ASSERT_EQ(jobs[i].runs, jobs[i].job.nchunks);
        ol_port_decref(port);
        i++;
        j = next;
    }
    return i - from;
}

/* ---- cases --------------------------------------------------------- */

static void
port_new(void)
{
    ol_port_t *port;
    int fd;

    ASSERT_OK(ol_port_new(&port));
    fd = ol_port_fd(port);
    ASSERT_GE(fd, 0);
    ASSERT(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    ASSERT(fcntl(fd, F_GETFL) & O_NONBLOCK);
    ASSERT(!readable(port, 0));
    ASSERT_EQ(ol_port_take(port), NULL); /* a spurious wake-up is fine */
    ASSERT_EQ(ol_port_close(port), NULL);
    ASSERT_EQ(fcntl(fd, F_GETFD), -1); /* nothing opened in between */
    ASSERT_EQ(errno, EBADF);
    ol_port_decref(port);
}

static void
port_delivery_order(void)
{
    pjob_t jobs[5];
    ol_port_t *port;
    gate_t g;
    size_t got = 0;

    ASSERT_OK(ol_pool_configure(1, 0));
    ASSERT_OK(ol_port_new(&port));
    gate_init(&g);
    for (size_t i = 0; i < 5; i++) {
        pjob_init(&jobs[i], port, i);
    }
    jobs[0].gate = &g;
    ASSERT_OK(ol_pool_submit(&jobs[0].job, 0));
    ASSERT(gate_wait_entered(&g, 1, tmo));
    for (size_t i = 1; i < 5; i++) {
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    ASSERT(!readable(port, 0)); /* nothing delivered yet */
    gate_open(&g);
    while (got < 5) {
        ASSERT(readable(port, tmo)); /* the first job landed */
        got += expect_list(port, ol_port_take(port), jobs, got, 5);
    }
    ASSERT(!readable(port, 0));
    ASSERT_EQ(ol_port_close(port), NULL);
    ol_port_decref(port);
    gate_destroy(&g);
}

static void
port_coalesced_wakeup(void)
{
    size_t n = ol_test_scaled(200, 10);
    pjob_t *jobs = calloc(n + 1, sizeof(*jobs));
    ol_port_t *port;
    gate_t g;

    ASSERT(jobs != NULL);
    ASSERT_OK(ol_pool_configure(1, 0));
    ASSERT_OK(ol_port_new(&port));
    gate_init(&g);
    for (size_t i = 0; i <= n; i++) {
        pjob_init(&jobs[i], port, i);
    }
    jobs[0].gate = &g; /* hold the worker until all are queued */
    for (size_t i = 0; i < n; i++) {
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    gate_open(&g);
    sentinel(); /* all n delivered, none taken */
    ASSERT(readable(port, 0));
    {
#ifdef OL_HAVE_EVENTFD
        /* The eventfd was written once for the n deliveries. */
        uint64_t count = 0;
        ASSERT_EQ(read(ol_port_fd(port), &count, sizeof(count)),
                  sizeof(count));
        ASSERT_EQ(count, 1);
#else
        /* The pipe holds one byte for the n deliveries. */
        char buf[64];
        ASSERT_EQ(read(ol_port_fd(port), buf, sizeof(buf)), 1);
#endif
    }
    ASSERT_EQ(expect_list(port, ol_port_take(port), jobs, 0, n), n);
    ASSERT(!readable(port, 0)); /* until the next delivery */
    ASSERT_EQ(ol_port_take(port), NULL);

    ASSERT_OK(ol_pool_submit(&jobs[n].job, 0));
    ASSERT(readable(port, tmo));
    ASSERT_EQ(expect_list(port, ol_port_take(port), jobs, n, n + 1), 1);
    ASSERT(!readable(port, 0));
    ASSERT_EQ(ol_port_close(port), NULL);
    ol_port_decref(port);
    gate_destroy(&g);
    free(jobs);
}

/* The taker: the port owner's side, polling the fd like an event loop. */
typedef struct {
    ol_port_t *port;
    size_t total;
    int *seen;          /* per job index */
    ol_job_t *base;     /* jobs[0], with stride: index = (j - base) */
    size_t stride;      /* sizeof the job record */
    int decref;         /* give back the submit's port reference */
    size_t producers;   /* for the per-producer order check, or 0 */
    size_t *last_seq;   /* per producer: the next seq expected */
    size_t taken, wakeups, empty_takes;
    int out_of_order;
    int timed_out;
} taker_t;

static void *
taker(void *arg)
{
    taker_t *t = arg;
    struct timespec deadline;

    ol_test_deadline(&deadline, tmo * 3);
    while (t->taken < t->total) {
        if (ol_test_past(&deadline)) {
            t->timed_out = 1;
            break;
        }
        if (!readable(t->port, 100)) {
            continue;
        }
        t->wakeups++;
        ol_job_t *j = ol_port_take(t->port);
        t->empty_takes += j == NULL;
        while (j != NULL) {
            ol_job_t *next = j->done_next;
            size_t i = (size_t)((char *)j - (char *)t->base) / t->stride;
            t->seen[i]++;
            if (t->producers > 0) {
                size_t p = i % t->producers, seq = i / t->producers;
                t->out_of_order += seq != t->last_seq[p];
                t->last_seq[p] = seq + 1;
            }
            if (t->decref) {
                ol_port_decref(t->port);
            }
            t->taken++;
            j = next;
        }
    }
    return NULL;
}

static void
port_concurrent_pool(void)
{
    size_t n = ol_test_scaled(20000, 200);
    pjob_t *jobs = calloc(n, sizeof(*jobs));
    taker_t t = {0};
    pthread_t tid;
    ol_port_t *port;

    ASSERT(jobs != NULL);
    ASSERT_OK(ol_pool_configure(4, 0));
    ASSERT_OK(ol_port_new(&port));
    t.port = port;
    t.total = n;
    t.seen = calloc(n, sizeof(int));
    t.base = &jobs[0].job;
    t.stride = sizeof(pjob_t);
    t.decref = 1;
    ASSERT(t.seen != NULL);
    CHECK_PT(pthread_create(&tid, NULL, taker, &t));
    for (size_t i = 0; i < n; i++) {
        pjob_init(&jobs[i], port, i);
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    CHECK_PT(pthread_join(tid, NULL));
    ASSERT(!t.timed_out);
    ASSERT_EQ(t.taken, n);
    for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(t.seen[i], 1);
        ASSERT_EQ(jobs[i].runs, jobs[i].job.nchunks);
    }
    ASSERT_LE(t.wakeups, n);
    printf("     %zu jobs, %zu wake-ups, %zu empty\n", n, t.wakeups,
           t.empty_takes);
    ASSERT(!readable(port, 0));
    ASSERT_EQ(ol_port_close(port), NULL);
    ol_port_decref(port);
    free(t.seen);
    free(jobs);
}

/* Four threads on the workers' delivery path itself, against a taker;
 * each thread's jobs must come out in the order it pushed them. */
typedef struct {
    pthread_t tid;
    ol_port_t *port;
    ol_job_t *jobs;
    size_t p, producers, n;
} pusher_t;

static void *
pusher(void *arg)
{
    pusher_t *u = arg;

    for (size_t s = 0; s < u->n; s++) {
        ol__port_push(u->port, &u->jobs[s * u->producers + u->p]);
    }
    return NULL;
}

static void
port_concurrent_push(void)
{
    enum { P = 4 };
    size_t n = ol_test_scaled(50000, 500);
    ol_job_t *jobs = calloc(n * P, sizeof(*jobs));
    size_t last_seq[P] = {0};
    pusher_t u[P];
    taker_t t = {0};
    pthread_t tid;
    ol_port_t *port;

    ASSERT(jobs != NULL);
    ASSERT_OK(ol_port_new(&port));
    t.port = port;
    t.total = n * P;
    t.seen = calloc(n * P, sizeof(int));
    t.base = jobs;
    t.stride = sizeof(ol_job_t);
    t.producers = P;
    t.last_seq = last_seq;
    ASSERT(t.seen != NULL);
    CHECK_PT(pthread_create(&tid, NULL, taker, &t));
    for (size_t p = 0; p < P; p++) {
        u[p] = (pusher_t){.port = port, .jobs = jobs, .p = p,
                          .producers = P, .n = n};
        CHECK_PT(pthread_create(&u[p].tid, NULL, pusher, &u[p]));
    }
    for (size_t p = 0; p < P; p++) {
        CHECK_PT(pthread_join(u[p].tid, NULL));
    }
    CHECK_PT(pthread_join(tid, NULL));
    ASSERT(!t.timed_out);
    ASSERT_EQ(t.taken, n * P);
    ASSERT_EQ(t.out_of_order, 0);
    for (size_t i = 0; i < n * P; i++) {
        ASSERT_EQ(t.seen[i], 1);
    }
    for (size_t p = 0; p < P; p++) {
        ASSERT_EQ(last_seq[p], n);
    }
    printf("     %zu jobs, %zu wake-ups, %zu empty\n", n * P, t.wakeups,
           t.empty_takes);
    ASSERT(!readable(port, 0));
    ASSERT_EQ(ol_port_close(port), NULL);
    ol_port_decref(port);
    free(t.seen);
    free(jobs);
}

static void
port_close_and_orphans(void)
{
    pjob_t jobs[3];
    ol_port_t *port;
    ol_job_t *list;
    gate_t g;
    int fd;

    ASSERT_OK(ol_pool_configure(1, 0));
    ASSERT_EQ(ol_orphans_take(), NULL);
    ASSERT(!ol_orphans_pending());
    ASSERT_OK(ol_port_new(&port));
    fd = ol_port_fd(port);
    gate_init(&g);
    for (size_t i = 0; i < 3; i++) {
        pjob_init(&jobs[i], port, i);
    }
    ASSERT_OK(ol_pool_submit(&jobs[0].job, 0));
    ASSERT_OK(ol_pool_submit(&jobs[1].job, 0));
    sentinel(); /* 0 and 1 delivered, not taken */
    jobs[2].gate = &g;
    ASSERT_OK(ol_pool_submit(&jobs[2].job, 0));
    ASSERT(gate_wait_entered(&g, 1, tmo)); /* 2 runs */

    /* Close: the untaken jobs come back, oldest first. */
    list = ol_port_close(port);
    ASSERT(list == &jobs[0].job);
    ASSERT(list->done_next == &jobs[1].job);
    ASSERT(jobs[1].job.done_next == NULL);
    ASSERT_EQ(fcntl(fd, F_GETFD), -1); /* nothing opened in between */
    ASSERT_EQ(errno, EBADF);
    /* Drop the owner's reference: job 2 still holds one, and its
     * delivery below touches the port (ASan, valgrind check that). */
    ol_port_decref(port);

    gate_open(&g);
    sentinel(); /* 2 delivered, to the orphans */
    ASSERT(ol_orphans_pending());
    list = ol_orphans_take();
    ASSERT(list == &jobs[2].job);
    ASSERT(list->done_next == NULL);
    ASSERT(!ol_orphans_pending());
    ASSERT_EQ(ol_orphans_take(), NULL);
    ASSERT_EQ(jobs[2].runs, jobs[2].job.nchunks);
    ASSERT_EQ(ol_job_status(&jobs[2].job), 0);
    /* The last three references: the port is freed by the last. */
    ol_port_decref(port);
    ol_port_decref(port);
    ol_port_decref(port);
    gate_destroy(&g);
}

/* Workers write the fd after releasing the port lock.  Close the port
 * while pushers deliver, open a new eventfd or pipe (it takes the lowest
 * free numbers: the old ones) and check that no late delivery wrote it:
 * close must wait for the writes already under way. */
static size_t
drop_list(ol_port_t *port, ol_job_t *list)
{
    size_t n = 0;

    for (ol_job_t *j = list; j != NULL; j = j->done_next) {
        ol_port_decref(port);
        n++;
    }
    return n;
}

/* A fresh fd pair like the port's, on the lowest free numbers: *rfd is
 * the end a stray write would make readable. */
static void
open_fresh(int *rfd, int *wfd)
{
#ifdef OL_HAVE_EVENTFD
    *rfd = *wfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ASSERT(*rfd >= 0);
#else
    int fds[2];
    ASSERT_OK(pipe(fds));
    ASSERT_NE(fcntl(fds[0], F_SETFL, O_NONBLOCK), -1);
    *rfd = fds[0];
    *wfd = fds[1];
#endif
}

static void
port_close_during_delivery(void)
{
    enum { P = 2 };
    size_t rounds = ol_test_scaled(300, 20), n = 2000;
    ol_job_t *jobs = calloc(n * P, sizeof(*jobs));

    ASSERT(jobs != NULL);
    for (size_t r = 0; r < rounds; r++) {
        pusher_t u[P];
        ol_port_t *port;
        size_t got = 0;
        uint64_t count;
        int fd, fresh, fresh_w;

        ASSERT_OK(ol_port_new(&port));
        fd = ol_port_fd(port);
        for (size_t i = 0; i < n * P; i++) {
            ol_port_incref(port); /* each job's, as a submit takes */
        }
        for (size_t p = 0; p < P; p++) {
            u[p] = (pusher_t){.port = port, .jobs = jobs, .p = p,
                              .producers = P, .n = n};
            CHECK_PT(pthread_create(&u[p].tid, NULL, pusher, &u[p]));
        }
        /* Empty the list a few times, so that deliveries write the fd. */
        for (int i = 0; i < 1 + (int)(r % 8); i++) {
            got += drop_list(port, ol_port_take(port));
        }
        got += drop_list(port, ol_port_close(port));
        ASSERT_EQ(fcntl(fd, F_GETFD), -1);
        open_fresh(&fresh, &fresh_w);
        for (size_t p = 0; p < P; p++) {
            CHECK_PT(pthread_join(u[p].tid, NULL));
        }
        got += drop_list(port, ol_orphans_take());
        ASSERT_EQ(got, n * P);
        ASSERT_EQ(read(fresh, &count, sizeof(count)), -1); /* never written */
        ASSERT_EQ(errno, EAGAIN);
        close(fresh);
        if (fresh_w != fresh) {
            close(fresh_w);
        }
        ol_port_decref(port); /* the owner's, the last */
    }
    free(jobs);
}

int
main(int argc, char **argv)
{
    static const ol_test_case_t cases[] = {
        {"port_new", port_new},
        {"port_delivery_order", port_delivery_order},
        {"port_coalesced_wakeup", port_coalesced_wakeup},
        {"port_concurrent_pool", port_concurrent_pool},
        {"port_concurrent_push", port_concurrent_push},
        {"port_close_and_orphans", port_close_and_orphans},
        {"port_close_during_delivery", port_close_during_delivery},
    };
    int rc;

    tmo = ol_test_timeout_ms();
    rc = ol_test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
    /* No worker outlives main (valgrind would see their stacks). */
    ASSERT_OK(ol_pool_shutdown(tmo, NULL));
    return rc;
}

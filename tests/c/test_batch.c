/* Tests of coalescing in the pool (src/core/batch.c): jobs with equal batch
 * keys queued together run as one batch, each member delivered on its own
 * with its own status.  Workers are held by blockers (gate_t) while the
 * members queue, so every case is deterministic.
 */
#include "test_util.h"

/* A batchable test job.  `job` comes first. */
typedef struct bjob_s {
    ol_job_t job;
    ol_waiter_t waiter;
    int input;
    int output;           /* written by the leader's run */
    atomic_int runs;      /* work calls made with this job as leader */
    atomic_int begins;
    size_t seen_members;  /* batch size the leader saw */
    gate_t *gate;         /* blocker: work waits on it */
    int fail;             /* leader's work returns this */
} bjob_t;

#define BJOB(j) ((bjob_t *)(j))

static long tmo;
static int tag_a, tag_b; /* two kinds of batchable job */

static int
bjob_work(ol_job_t *job, size_t chunk)
{
    bjob_t *t = BJOB(job);
    size_t n = 0;

    atomic_fetch_add(&t->runs, 1);
    if (t->gate != NULL) {
        int rc = gate_enter(t->gate);
        if (rc != 0) {
            return rc;
        }
    }
    if (t->fail) {
        return t->fail;
    }
    /* The leader computes every member's output. */
    for (ol_job_t *m = job; m != NULL; m = m->batch_next, n++) {
        BJOB(m)->output = BJOB(m)->input * 2;
    }
    t->seen_members = n;
    return 0;
}

static int
bjob_begin(ol_job_t *leader)
{
    atomic_fetch_add(&BJOB(leader)->begins, 1);
    return 0;
}

static void
bjob_init(bjob_t *t, const int *tag, uint64_t word, int input)
{
    memset(t, 0, sizeof(*t));
    t->job.work = bjob_work;
    t->job.nchunks = 1;
    t->job.batch.tag = tag;
    t->job.batch.words[0] = word;
    t->job.batch_begin = bjob_begin;
    t->input = input;
    ol_waiter_init(&t->waiter);
    t->job.waiter = &t->waiter;
}

static void
bjob_wait(bjob_t *t)
{
    ASSERT_EQ(ol_waiter_wait(&t->waiter, tmo), 1);
}

/* Occupy every worker with a blocker on `g`. */
static void
hold_workers(gate_t *g, bjob_t *blockers, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        bjob_init(&blockers[i], NULL, 0, 0);
        blockers[i].gate = g;
        ASSERT_OK(ol_pool_submit(&blockers[i].job, 0));
        ASSERT(gate_wait_entered(g, i + 1, tmo));
    }
}

static void
release_workers(gate_t *g, bjob_t *blockers, unsigned n)
{
    gate_open(g);
    for (unsigned i = 0; i < n; i++) {
        bjob_wait(&blockers[i]);
        ol_waiter_destroy(&blockers[i].waiter);
    }
}

#define THREADS 2
#define N 20

static void
batch_same_key_runs_once(void)
{
    bjob_t blockers[THREADS], jobs[N];
    ol_pool_stats_t before, after;
    gate_t g;
    int runs = 0, begins = 0;

    ASSERT_OK(ol_pool_configure(THREADS, 0));
    ASSERT_OK(ol_pool_set_max_batch(64));
    gate_init(&g);
    hold_workers(&g, blockers, THREADS);
    ol_pool_stats(&before);
    for (int i = 0; i < N; i++) {
        bjob_init(&jobs[i], &tag_a, 7, i);
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    release_workers(&g, blockers, THREADS);
    for (int i = 0; i < N; i++) {
        bjob_wait(&jobs[i]);
        ASSERT_EQ(ol_job_status(&jobs[i].job), 0);
        ASSERT_EQ(jobs[i].output, i * 2);
        runs += jobs[i].runs;
        begins += jobs[i].begins;
    }
    ASSERT_EQ(runs, 1);   /* one run served all twenty */
    ASSERT_EQ(begins, 1);
    ASSERT_EQ(jobs[0].seen_members, N);
    ol_pool_stats(&after);
    ASSERT_EQ(after.batches - before.batches, 1);
    ASSERT_EQ(after.batched - before.batched, N);
    ASSERT_OK(ol_pool_wait_idle(tmo));
    for (int i = 0; i < N; i++) {
        ol_waiter_destroy(&jobs[i].waiter);
    }
    gate_destroy(&g);
}

static void
batch_keys_never_mix(void)
{
    bjob_t blockers[THREADS], jobs[12];
    gate_t g;

    ASSERT_OK(ol_pool_configure(THREADS, 0));
    gate_init(&g);
    hold_workers(&g, blockers, THREADS);
    for (int i = 0; i < 12; i++) {
        /* Three keys: tag a word 1, tag a word 2, tag b word 1. */
        bjob_init(&jobs[i], i % 3 == 2 ? &tag_b : &tag_a, 1 + (i % 3 == 1),
                  i);
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    release_workers(&g, blockers, THREADS);
    for (int i = 0; i < 12; i++) {
        bjob_wait(&jobs[i]);
        ASSERT_EQ(ol_job_status(&jobs[i].job), 0);
        ASSERT_EQ(jobs[i].output, i * 2);
    }
    /* The first job of each key led a batch of its four. */
    for (int i = 0; i < 12; i++) {
        ASSERT_EQ(jobs[i].runs, i < 3);
        if (i < 3) {
            ASSERT_EQ(jobs[i].seen_members, 4);
        }
    }
    for (int i = 0; i < 12; i++) {
        ol_waiter_destroy(&jobs[i].waiter);
    }
    gate_destroy(&g);
}

static void
batch_max_is_honoured(void)
{
    bjob_t blockers[THREADS], jobs[N];
    gate_t g;
    int runs = 0;

    ASSERT_OK(ol_pool_configure(THREADS, 0));
    ASSERT_OK(ol_pool_set_max_batch(8));
    ASSERT_EQ(ol_pool_set_max_batch(0), OL_EINVAL);
    ASSERT_EQ(ol_pool_set_max_batch(OL_MAX_BATCH_LIMIT + 1), OL_EINVAL);
    gate_init(&g);
    hold_workers(&g, blockers, THREADS);
    for (int i = 0; i < N; i++) {
        bjob_init(&jobs[i], &tag_a, 3, i);
        jobs[i].job.batch.max = i < 8 ? 0 : 5; /* the job's own bound */
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    release_workers(&g, blockers, THREADS);
    for (int i = 0; i < N; i++) {
        bjob_wait(&jobs[i]);
        ASSERT_EQ(jobs[i].output, i * 2);
        runs += jobs[i].runs;
        if (jobs[i].runs) {
            ASSERT_LE(jobs[i].seen_members, i < 8 ? 8 : 5);
        }
    }
    ASSERT_EQ(jobs[0].seen_members, 8); /* 20 = 8 + 5 + 5 + 2 */
    ASSERT_EQ(runs, 4);
    /* Coalescing off: every job runs alone. */
    ASSERT_OK(ol_pool_set_max_batch(1));
    hold_workers(&g, blockers, THREADS); /* the gate is open: pass */
    for (int i = 0; i < N; i++) {
        ol_waiter_destroy(&jobs[i].waiter);
        bjob_init(&jobs[i], &tag_a, 3, i);
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    for (int i = 0; i < N; i++) {
        bjob_wait(&jobs[i]);
        ASSERT_EQ(jobs[i].runs, 1);
        ASSERT_EQ(jobs[i].seen_members, 1);
    }
    for (unsigned i = 0; i < THREADS; i++) {
        bjob_wait(&blockers[i]);
        ol_waiter_destroy(&blockers[i].waiter);
    }
    for (int i = 0; i < N; i++) {
        ol_waiter_destroy(&jobs[i].waiter);
    }
    ASSERT_OK(ol_pool_set_max_batch(OL_DEFAULT_MAX_BATCH));
    gate_destroy(&g);
}

static void
batch_cancel_members(void)
{
    bjob_t blockers[THREADS], jobs[6], *leader = NULL;
    gate_t g, inside;

    ASSERT_OK(ol_pool_configure(THREADS, 0));
    gate_init(&g);
    gate_init(&inside);
    hold_workers(&g, blockers, THREADS);
    for (int i = 0; i < 6; i++) {
        bjob_init(&jobs[i], &tag_a, 9, i);
        jobs[i].gate = &inside; /* whoever leads waits inside its run */
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    /* Cancelled while queued: ends here, never runs, never delivered. */
    ASSERT_EQ(ol_job_cancel(&jobs[1].job), 1);
    release_workers(&g, blockers, THREADS);
    ASSERT(gate_wait_entered(&inside, 1, tmo));
    for (int i = 0; i < 6; i++) {
        if (jobs[i].runs) {
            leader = &jobs[i];
        }
    }
    ASSERT(leader == &jobs[0]);
    ASSERT_EQ(leader->seen_members, 0); /* still inside, before the loop */
    /* Cancelled after the batch started: flagged, delivered cancelled. */
    ASSERT_EQ(ol_job_cancel(&jobs[3].job), 0);
    ASSERT_EQ(ol_job_cancel(&jobs[0].job), 0); /* the leader too */
    gate_open(&inside);
    for (int i = 0; i < 6; i++) {
        if (i == 1) {
            continue;
        }
        bjob_wait(&jobs[i]);
        ASSERT_EQ(ol_job_status(&jobs[i].job),
                  i == 0 || i == 3 ? OL_ECANCELED : 0);
        if (i != 0 && i != 3) {
            ASSERT_EQ(jobs[i].output, i * 2);
        }
    }
    ASSERT_EQ(leader->seen_members, 5);
    ASSERT_EQ(ol_waiter_wait(&jobs[1].waiter, 0), 0);
    ASSERT_EQ(jobs[1].runs, 0);
    ASSERT_OK(ol_pool_wait_idle(tmo));
    for (int i = 0; i < 6; i++) {
        ol_waiter_destroy(&jobs[i].waiter);
    }
    gate_destroy(&g);
    gate_destroy(&inside);
}

static void
batch_all_cancelled_stops(void)
{
    bjob_t blockers[THREADS], jobs[3];
    gate_t g;

    ASSERT_OK(ol_pool_configure(THREADS, 0));
    gate_init(&g);
    hold_workers(&g, blockers, THREADS);
    for (int i = 0; i < 3; i++) {
        bjob_init(&jobs[i], &tag_b, 4, i);
        jobs[i].job.nchunks = 3;
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(ol_job_cancel(&jobs[i].job), 1); /* all queued */
    }
    release_workers(&g, blockers, THREADS);
    ASSERT_OK(ol_pool_wait_idle(tmo));
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(jobs[i].runs, 0);
        ol_waiter_destroy(&jobs[i].waiter);
    }
    gate_destroy(&g);
}

static void
batch_error_reaches_every_member(void)
{
    bjob_t blockers[THREADS], jobs[5];
    gate_t g;

    ASSERT_OK(ol_pool_configure(THREADS, 0));
    gate_init(&g);
    hold_workers(&g, blockers, THREADS);
    for (int i = 0; i < 5; i++) {
        bjob_init(&jobs[i], &tag_a, 11, i);
        jobs[i].fail = i == 0 ? -EIO : 0; /* only a leader's counts */
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    release_workers(&g, blockers, THREADS);
    for (int i = 0; i < 5; i++) {
        bjob_wait(&jobs[i]);
        ASSERT_EQ(ol_job_status(&jobs[i].job), -EIO);
    }
    /* The next batch runs normally. */
    for (int i = 0; i < 5; i++) {
        ol_waiter_destroy(&jobs[i].waiter);
        bjob_init(&jobs[i], &tag_a, 11, i);
        ASSERT_OK(ol_pool_submit(&jobs[i].job, 0));
    }
    for (int i = 0; i < 5; i++) {
        bjob_wait(&jobs[i]);
        ASSERT_EQ(ol_job_status(&jobs[i].job), 0);
        ASSERT_EQ(jobs[i].output, i * 2);
        ol_waiter_destroy(&jobs[i].waiter);
    }
    gate_destroy(&g);
}

int
main(int argc, char **argv)
{
    static const ol_test_case_t cases[] = {
        {"batch_same_key_runs_once", batch_same_key_runs_once},
        {"batch_keys_never_mix", batch_keys_never_mix},
        {"batch_max_is_honoured", batch_max_is_honoured},
        {"batch_cancel_members", batch_cancel_members},
        {"batch_all_cancelled_stops", batch_all_cancelled_stops},
        {"batch_error_reaches_every_member", batch_error_reaches_every_member},
    };

    tmo = ol_test_timeout_ms();
    return ol_test_main(argc, argv, cases, sizeof(cases) / sizeof(cases[0]));
}

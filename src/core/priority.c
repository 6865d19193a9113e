/* The workers' scheduling priority: OFFLOOP_WORKER_PRIORITY, read once
 * when the pool starts, and applied by each worker to its own thread.
 *
 * DESIGN
 *
 * The trade.  Workers share the cores with the event loop's thread, which
 * must answer at once when it wakes, and with other processes (sibling
 * gunicorn or uvicorn workers, any busy neighbour), beside which a job
 * must not starve.  Measured on a 2-core VM shared with other tenants
 * (load average 5-10; benchmarks/README.md has the lines), an awaited
 * top-10 over 20,000 x 384 with two busy normal-priority processes
 * (bench_contention.py), and GET /health p99 under bench_fastapi.py:
 *
 * - SCHED_IDLE (the default until now): contended p50 2.3-757 ms and p99
 *   1.1-3.8 s over four runs, from 1.9-4.0 ms idle: a starved worker gets
 *   a sliver of a core.  /health p99 4.7-16 ms (median 6).
 * - Normal policy at the kernel's default slice, nice 0, +5 or
 *   SCHED_BATCH: no starvation (contended p50 5-20 ms), but a woken loop
 *   thread waits for the running worker's slice (EEVDF's run-to-parity):
 *   /health p99 21-65 ms where SCHED_IDLE gave 4.4-16 in the same session.
 *   A short worker slice (0.1 ms) did no better: the worker's deadline
 *   then always comes first.
 * - The default now: the normal policy at the starting thread's nice,
 *   with the longest slice Linux grants (sched_setattr's sched_runtime:
 *   EEVDF custom slices, Linux 6.12+).  The weight, hence the share of
 *   the cores, is a normal thread's, so a job never starves: contended
 *   p50 2.4-6.9 ms over three runs, 1.1-3.2x its idle p50 (within 2x in
 *   5 of 6 figures), 0.8-1.8x asyncio.to_thread's.  A woken worker waits
 *   for a busy sibling's slice to end (its own deadline is later), up to
 *   a scheduler tick: that is the 3.2x.
 *   The slice only pushes the worker's deadline back, so a thread at the
 *   default slice (the loop's) that wakes has the earlier deadline and
 *   preempts the worker (PREEMPT_SHORT).  /health p99 8.0-10.0 ms
 *   against SCHED_IDLE's 4.7-16 in four alternating runs: 2-4 ms more at
 *   the median.  What is left: a loop thread that was preempted rather
 *   than woken, or that used more than its share, is not picked before
 *   the next scheduler tick (4 ms here), where SCHED_IDLE would yield at
 *   once.  Only that rule avoids it, and it is the rule that starves.
 *   Switching the slice around each sleep (short to win the wake-up,
 *   long once running) did not lower the contended p50 and raised its
 *   p99 from 23-33 to 119-143 ms.
 *
 * Dynamic schemes that switch between SCHED_IDLE and the normal policy
 * (say, lower the workers only while the loop thread is runnable) cannot
 * work without privileges: leaving SCHED_IDLE, like lowering a nice
 * value, needs CAP_SYS_NICE or an RLIMIT_NICE that allows nice 0, and
 * neither is there by default.  A slice can be set freely.
 *
 * Kernels before 6.12 ignore sched_runtime for the normal policy: there
 * the default is plain nice 0 (no starvation, a longer /health tail), and
 * OFFLOOP_WORKER_PRIORITY=idle gives the other trade.
 *
 * Off Linux (and in the OL_PORTABLE build that stands for it) workers keep
 * the priority of the thread that started them: macOS has no per-thread
 * nice (setpriority() is per process) and neither system has SCHED_IDLE
 * or custom slices.
 *
 * The setting.  OFFLOOP_WORKER_PRIORITY unset or empty: the default;
 * "idle": SCHED_IDLE; a whole number N from 0 to 19 (a leading '+'
 * allowed): the normal policy with the long slice at nice +N over the
 * process's (capped at 19).  Anything else, negative numbers included,
 * keeps the default; the Python shim warns about it at import.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__) && !defined(OL_PORTABLE)
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* The longest custom slice Linux accepts (it clamps to 0.1..100 ms). */
#define OL_SLICE_NS 100000000ULL
#define OL_NICE_MAX 19

/* Written once by ol__priority_init(), under the pool's pthread_once and
 * before any worker starts; only read afterwards. */
static int prio_idle;  /* SCHED_IDLE instead of the normal policy */
static int prio_nice;  /* increment over the process's nice, 0..19 */

void
ol__priority_init(void)
{
    const char *s = getenv("OFFLOOP_WORKER_PRIORITY");
    const char *digits;
    char *end;
    long nice;

    prio_idle = 0;
    prio_nice = 0;
    if (s == NULL || *s == '\0') {
        return;
    }
    if (strcmp(s, "idle") == 0) {
        prio_idle = 1;
        return;
    }
    digits = s + (*s == '+');
    if (*digits < '0' || *digits > '9') {
        return; /* not a number, or a negative one: the default */
    }
    nice = strtol(digits, &end, 10);
    if (*end == '\0' && nice <= OL_NICE_MAX) {
        prio_nice = (int)nice;
    }
}

#if defined(__linux__) && !defined(OL_PORTABLE)
/* struct sched_attr of sched_setattr(2), first version (48 bytes): glibc
 * declares it only from 2.41 on. */
struct ol_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
};
#endif

void
ol__priority_apply(void)
{
#if defined(__linux__) && !defined(OL_PORTABLE)
    struct ol_sched_attr attr;
    /* This thread's nice: on Linux, PRIO_PROCESS of 0 is the caller's
     * own thread, which inherited the nice of the thread that started
     * it. */
    int nice = getpriority(PRIO_PROCESS, 0);

    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    if (prio_idle) {
        attr.sched_policy = SCHED_IDLE;
        attr.sched_nice = nice;
    }
    else {
        attr.sched_policy = SCHED_OTHER;
        attr.sched_nice = nice + prio_nice > OL_NICE_MAX
                              ? OL_NICE_MAX
                              : nice + prio_nice;
        attr.sched_runtime = OL_SLICE_NS;
    }
    if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0 &&
        attr.sched_runtime != 0) {
        attr.sched_runtime = 0; /* in case a kernel refuses the slice */
        (void)syscall(SYS_sched_setattr, 0, &attr, 0);
    }
    /* A failure leaves the thread as it was started (a process under
     * SCHED_IDLE cannot leave it without privileges): not an error. */
#endif
}

/* The workers' scheduling priority: OFFLOOP_WORKER_PRIORITY, read once
 * when the pool starts, and applied by each worker to its own thread.
 *
 * DESIGN
 *
 * The trade.  Workers share the cores with the event loop's thread, which
 * must answer at once when it wakes, and with other processes (sibling
 * gunicorn or uvicorn workers, any busy neighbour), beside which a job
 * must not starve.  Measured on a 2-core VM (benchmarks/README.md has the
 * lines; the host was shared and noisy, so only orders of magnitude and
 * side-by-side ratios hold):
 *
 * - SCHED_IDLE (the default until now): the loop preempts a worker the
 *   moment it wakes, but two busy normal-priority processes leave the
 *   workers a sliver of a core: an awaited top-10 over 20,000 x 384 took
 *   p50 383-757 ms (from 2.7-4.0 ms idle), 38-190x asyncio.to_thread
 *   beside the same load (bench_contention.py).
 * - Normal policy at nice 0 or +5, or SCHED_BATCH: no starvation (4-20 ms
 *   contended), but a woken loop thread waits for the running worker's
 *   time slice to end (EEVDF's run-to-parity): GET /health p99 in
 *   bench_fastapi.py rose from 4-16 ms under SCHED_IDLE to 21-65 ms in the
 *   same noisy session, and from 1.1-3.6 to 5.5-6.1 ms (nice +5) on a
 *   quiet one.
 * - The default now: the normal policy at the process's nice, with the
 *   longest time slice the kernel grants (sched_setattr's sched_runtime,
 *   EEVDF custom slices, Linux 6.12 and later).  The weight, hence the
 *   fair share of the cores, is a normal thread's, so the workers never
 *   starve; the slice sets only the deadline.  A thread with a shorter
 *   slice (the loop thread and every other thread at the default) has an
 *   earlier deadline, and EEVDF lets it preempt the running worker when
 *   it wakes (PREEMPT_SHORT) rather than wait for the worker's slice to
 *   end.  Measured figures are in benchmarks/README.md (bench_contention
 *   and bench_fastapi).
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

#ifdef __linux__
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

#ifdef __linux__
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
#ifdef __linux__
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

/* The bounded "best k so far" list (ol_topk): insertion, merge, sort.
 *
 * A list that is being filled is a binary heap ordered worst-first: the
 * root scores[0] is the entry that the next better candidate evicts, and
 * the scan kernels compare against it inline (ol__topk_offer in
 * internal.h) so that a rejected row costs one comparison.  Only the rare
 * accepted candidates reach this file.
 *
 * The order is total: higher score is better; equal scores are ordered by
 * index (lower is better); NaN is worse than every number and NaNs are
 * ordered by index among themselves.  Indices in one list are distinct, so
 * no two entries compare equal, which keeps results independent of the
 * order in which rows or partial lists arrive.
 */
#include "internal.h"

/* Nonzero if entry (sa, ia) is better than entry (sb, ib). */
static int
better(float sa, int64_t ia, float sb, int64_t ib)
{
    if (sa != sa) {
        return sb != sb && ia < ib;
    }
    if (sb != sb) {
        return 1;
    }
    if (sa != sb) {
        return sa > sb;
    }
    return ia < ib;
}

static void
swap(ol_topk *t, size_t a, size_t b)
{
    float s = t->scores[a];
    int64_t i = t->indices[a];

    t->scores[a] = t->scores[b];
    t->indices[a] = t->indices[b];
    t->scores[b] = s;
    t->indices[b] = i;
}

/* Restore the heap below position `at` of a heap of n entries: move the
 * entry down while a child is worse than it. */
static void
sift_down(ol_topk *t, size_t at, size_t n)
{
    for (;;) {
        size_t c = 2 * at + 1, worst = at;
        if (c < n && better(t->scores[worst], t->indices[worst],
                            t->scores[c], t->indices[c])) {
            worst = c;
        }
        c++;
        if (c < n && better(t->scores[worst], t->indices[worst],
                            t->scores[c], t->indices[c])) {
            worst = c;
        }
        if (worst == at) {
            return;
        }
        swap(t, at, worst);
        at = worst;
    }
}

static void
sift_up(ol_topk *t, size_t at)
{
    while (at > 0) {
        size_t parent = (at - 1) / 2;
        if (!better(t->scores[parent], t->indices[parent], t->scores[at],
                    t->indices[at])) {
            return;
        }
        swap(t, at, parent);
        at = parent;
    }
}

static void
heapify(ol_topk *t)
{
    size_t i = t->count / 2;

    while (i-- > 0) {
        sift_down(t, i, t->count);
    }
}

void
ol_topk_init(ol_topk *t, float *scores, int64_t *indices, size_t k)
{
    t->scores = scores;
    t->indices = indices;
    t->k = k;
    t->count = 0;
}

void
ol__topk_push(ol_topk *t, float score, int64_t index)
{
    if (t->count < t->k) {
        t->scores[t->count] = score;
        t->indices[t->count] = index;
        sift_up(t, t->count++);
        return;
    }
    if (t->k == 0 ||
        !better(score, index, t->scores[0], t->indices[0])) {
        return;
    }
    t->scores[0] = score;
    t->indices[0] = index;
    sift_down(t, 0, t->count);
}

/* ol_topk_sort() leaves a list best-first, which breaks the heap.  In a
 * heap the root is worse than every other entry, so a root better than the
 * last entry can only mean a sorted list: rebuild the heap then.  This
 * lets callers sort, or merge into, a list that they already sorted. */
void
ol__topk_prepare(ol_topk *t)
{
    size_t n = t->count;

    if (n >= 2 && better(t->scores[0], t->indices[0], t->scores[n - 1],
                         t->indices[n - 1])) {
        heapify(t);
    }
}

void
ol_topk_merge(ol_topk *dst, const ol_topk *src)
{
    size_t i;

    ol__topk_prepare(dst);
    for (i = 0; i < src->count; i++) {
        ol__topk_offer(dst, src->scores[i], src->indices[i]);
    }
}

/* Heapsort: each step moves the worst remaining entry to the end of the
 * shrinking heap, which leaves the array best-first. */
void
ol_topk_sort(ol_topk *t)
{
    size_t n = t->count;

    ol__topk_prepare(t);
    while (n > 1) {
        swap(t, 0, --n);
        sift_down(t, 0, n);
    }
}

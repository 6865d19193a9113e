/* Picks the kernel implementation (scalar, AVX2+FMA, AVX-512F on x86-64;
 * scalar, NEON on aarch64) once, at the first call, and forwards the
 * public kernel functions to it.
 *
 * This is the only file that decides what the CPU can run: the x86 SIMD
 * files are compiled with their -m flags and must not be entered before
 * __builtin_cpu_supports() has said yes.  NEON (Advanced SIMD) is part of
 * the aarch64 baseline, on Linux and macOS alike, so it is always
 * supported where it is built; it is still a choice made here, so that
 * OFFLOOP_ISA=scalar and ol_kernels_force() can select the portable C
 * path on an aarch64 machine.  The choice is one atomic int.
 * The first callers may race to compute it; they all compute the same
 * value (it depends only on the CPU and the environment), and the
 * compare-and-swap keeps a value set by ol_kernels_force() meanwhile.  No
 * lock, and no pthread dependency, is needed for that.
 *
 * OFFLOOP_ISA=scalar|avx2|avx512|neon in the environment overrides the choice
 * (benchmarks, and testing the scalar path on an AVX machine); an ISA the
 * CPU cannot run, or an unknown name, falls back to the best one.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "quant.h"

#ifndef ENOTSUP
#define ENOTSUP EOPNOTSUPP
#endif

#define UNCHOSEN (-1)

/* Written by choose() (CAS from UNCHOSEN) and by ol_kernels_force(). */
static atomic_int current = UNCHOSEN;

static const ol__kernel_table *
table_of(ol_isa isa)
{
    switch (isa) {
#if defined(OL_HAVE_X86_SIMD)
        case OL_ISA_AVX2:
            return &ol__kernels_avx2;
        case OL_ISA_AVX512:
            return &ol__kernels_avx512;
#endif
#if defined(OL_HAVE_NEON)
        case OL_ISA_NEON:
            return &ol__kernels_neon;
#endif
        default:
            return &ol__kernels_scalar;
    }
}

static int
supported(ol_isa isa)
{
    switch (isa) {
        case OL_ISA_SCALAR:
            return 1;
#if defined(OL_HAVE_X86_SIMD)
        case OL_ISA_AVX2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") &&
                   __builtin_cpu_supports("fma");
        case OL_ISA_AVX512:
            /* The AVX-512 file also uses AVX2 and FMA instructions. */
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("avx2") &&
                   __builtin_cpu_supports("fma");
#endif
#if defined(OL_HAVE_NEON)
        case OL_ISA_NEON:
            return 1; /* the aarch64 baseline */
#endif
        default:
            return 0;
    }
}

ol_isa
ol_kernels_best_isa(void)
{
    if (supported(OL_ISA_NEON)) {
        return OL_ISA_NEON;
    }
    if (supported(OL_ISA_AVX512)) {
        return OL_ISA_AVX512;
    }
    if (supported(OL_ISA_AVX2)) {
        return OL_ISA_AVX2;
    }
    return OL_ISA_SCALAR;
}

static int
choose(void)
{
    int expected = UNCHOSEN;
    ol_isa isa = ol_kernels_best_isa();
    const char *env = getenv("OFFLOOP_ISA");

    if (env != NULL) {
        ol_isa want = isa;
        if (strcmp(env, "scalar") == 0) {
            want = OL_ISA_SCALAR;
        }
        else if (strcmp(env, "avx2") == 0) {
            want = OL_ISA_AVX2;
        }
        else if (strcmp(env, "avx512") == 0) {
            want = OL_ISA_AVX512;
        }
        else if (strcmp(env, "neon") == 0) {
            want = OL_ISA_NEON;
        }
        if (supported(want)) {
            isa = want;
        }
    }
    /* Lose quietly to a concurrent choose() or ol_kernels_force(). */
    if (!atomic_compare_exchange_strong(&current, &expected, (int)isa)) {
        return expected;
    }
    return (int)isa;
}

static const ol__kernel_table *
kernels(void)
{
    int isa = atomic_load_explicit(&current, memory_order_relaxed);

    if (isa == UNCHOSEN) {
        isa = choose();
    }
    return table_of((ol_isa)isa);
}

ol_isa
ol_kernels_isa(void)
{
    int isa = atomic_load(&current);

    return (ol_isa)(isa == UNCHOSEN ? choose() : isa);
}

int
ol_kernels_force(ol_isa isa)
{
    if (!supported(isa)) {
        return -ENOTSUP;
    }
    atomic_store(&current, (int)isa);
    return 0;
}

const char *
ol_isa_name(ol_isa isa)
{
    switch (isa) {
        case OL_ISA_SCALAR:
            return "scalar";
        case OL_ISA_AVX2:
            return "avx2";
        case OL_ISA_AVX512:
            return "avx512";
        case OL_ISA_NEON:
            return "neon";
    }
    return "unknown";
}

float
ol_cosine_f32(const float *a, const float *b, size_t n)
{
    return kernels()->cosine(a, b, n);
}

void
ol_normalize_rows_f32(const float *x, float *out, size_t d,
                      size_t row_begin, size_t row_end)
{
    kernels()->normalize_rows(x, out, d, row_begin, row_end);
}

void
ol_cosine_rows_f32(const float *q, const float *q_inv_norm, size_t nq,
                   const float *m, size_t d, size_t row_begin,
                   size_t row_end, int m_normalized, float *out,
                   size_t out_stride)
{
    kernels()->cosine_rows(q, q_inv_norm, nq, m, d, row_begin, row_end,
                           m_normalized, out, out_stride);
}

void
ol_topk_rows_f32(const float *q, const float *q_inv_norm, size_t nq,
                 const float *m, size_t d, size_t row_begin, size_t row_end,
                 int m_normalized, ol_topk *lists)
{
    kernels()->topk_rows(q, q_inv_norm, nq, m, d, row_begin, row_end,
                         m_normalized, lists);
}

/* Quantized scans: the table of the ISA in use.  An ISA without its own
 * quantized file (any added later) runs the portable one. */
static const ol__qkernel_table *
qkernels(void)
{
    switch (ol_kernels_isa()) {
#if defined(OL_HAVE_X86_SIMD)
        case OL_ISA_AVX2:
            return &ol__qkernels_avx2;
        case OL_ISA_AVX512:
            return &ol__qkernels_avx512;
#endif
        default:
            return &ol__qkernels_scalar;
    }
}

void
ol_qscan_rows(ol_qtype t, const float *q, const float *q_inv_norm,
              size_t nq, const void *codes, const float *scales, size_t d,
              size_t row_begin, size_t row_end, float *out,
              size_t out_stride, ol_topk *lists)
{
    const ol__qkernel_table *k = qkernels();

    (t == OL_Q_BF16 ? k->bf16 : k->int8)(q, q_inv_norm, nq, codes, scales,
                                         d, row_begin, row_end, out,
                                         out_stride, lists);
}

/* Streaming reads for the benchmarks' memory-bandwidth reference
 * (benchmarks/bench_vectors.py, through offloop._core._stream_read).
 *
 * A reference that a peer library beats is no reference: numpy's
 * reductions read at well under what SIMD kernels reach here.  So these
 * are the plainest loops that only read: OR every 64-bit word into eight
 * accumulators (the result is returned, so no compiler may drop the
 * loads), in several variants -- portable C, AVX2, AVX2 with software
 * prefetch, AVX2 non-temporal loads (vmovntdqa), AVX-512F and AVX-512F
 * non-temporal -- and the benchmark takes the fastest, each run from
 * several threads at once.  The SIMD variants are compiled with target
 * attributes and entered only after __builtin_cpu_supports() says yes.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#ifndef ENOTSUP
#define ENOTSUP EOPNOTSUPP
#endif

#if defined(OL_HAVE_X86_SIMD)
#include <immintrin.h>
#endif

static uint64_t
read_portable(const uint64_t *p, size_t n)
{
    uint64_t acc[8] = {0};
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        for (int a = 0; a < 8; a++) {
            acc[a] |= p[i + a];
        }
    }
    for (; i < n; i++) {
        acc[0] |= p[i];
    }
    return acc[0] | acc[1] | acc[2] | acc[3] | acc[4] | acc[5] | acc[6] |
           acc[7];
}

#if defined(OL_HAVE_X86_SIMD)
__attribute__((target("avx2"))) static uint64_t
read_avx2(const uint64_t *p, size_t n, int mode)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    const char *c = (const char *)p;
    size_t bytes = n * 8, i = 0;
    uint64_t out[4];

    for (; i + 128 <= bytes; i += 128) {
        const __m256i *v = (const __m256i *)(c + i);
        if (mode == 1) {
            _mm_prefetch(c + i + 1024, _MM_HINT_T0);
            _mm_prefetch(c + i + 1088, _MM_HINT_T0);
        }
        if (mode == 2) { /* vmovntdqa needs 32-byte alignment */
            a0 = _mm256_or_si256(a0, _mm256_stream_load_si256(v));
            a1 = _mm256_or_si256(a1, _mm256_stream_load_si256(v + 1));
            a2 = _mm256_or_si256(a2, _mm256_stream_load_si256(v + 2));
            a3 = _mm256_or_si256(a3, _mm256_stream_load_si256(v + 3));
        }
        else {
            a0 = _mm256_or_si256(a0, _mm256_loadu_si256(v));
            a1 = _mm256_or_si256(a1, _mm256_loadu_si256(v + 1));
            a2 = _mm256_or_si256(a2, _mm256_loadu_si256(v + 2));
            a3 = _mm256_or_si256(a3, _mm256_loadu_si256(v + 3));
        }
    }
    a0 = _mm256_or_si256(_mm256_or_si256(a0, a1), _mm256_or_si256(a2, a3));
    _mm256_storeu_si256((__m256i *)out, a0);
    return out[0] | out[1] | out[2] | out[3] |
           read_portable((const uint64_t *)(c + i), (bytes - i) / 8);
}

__attribute__((target("avx512f"))) static uint64_t
read_avx512(const uint64_t *p, size_t n, int nt)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const char *c = (const char *)p;
    size_t bytes = n * 8, i = 0;

    for (; i + 256 <= bytes; i += 256) {
        void *v = (void *)(c + i);
        if (nt) { /* 64-byte alignment */
            a0 = _mm512_or_si512(a0, _mm512_stream_load_si512(v));
            a1 = _mm512_or_si512(a1, _mm512_stream_load_si512((char *)v + 64));
            a2 = _mm512_or_si512(a2, _mm512_stream_load_si512((char *)v + 128));
            a3 = _mm512_or_si512(a3, _mm512_stream_load_si512((char *)v + 192));
        }
        else {
            a0 = _mm512_or_si512(a0, _mm512_loadu_si512(v));
            a1 = _mm512_or_si512(a1, _mm512_loadu_si512((char *)v + 64));
            a2 = _mm512_or_si512(a2, _mm512_loadu_si512((char *)v + 128));
            a3 = _mm512_or_si512(a3, _mm512_loadu_si512((char *)v + 192));
        }
    }
    a0 = _mm512_or_si512(_mm512_or_si512(a0, a1), _mm512_or_si512(a2, a3));
    return (uint64_t)_mm512_reduce_or_epi64(a0) |
           read_portable((const uint64_t *)(c + i), (bytes - i) / 8);
}
#endif

static const char *const names[] = {"c",        "avx2",   "avx2_prefetch",
                                    "avx2_nt",  "avx512", "avx512_nt"};

const char *
ol_stream_read_name(int variant)
{
    return variant >= 0 && variant < (int)(sizeof(names) / sizeof(*names))
               ? names[variant]
               : NULL;
}

int
ol_stream_read(const void *p, size_t nbytes, int variant, uint64_t *sink)
{
    size_t n = nbytes / 8;
#if defined(OL_HAVE_X86_SIMD)
    size_t align = variant == 5 ? 64 : 32;
#endif

    switch (variant) {
        case 0:
            *sink = read_portable(p, n);
            return 0;
#if defined(OL_HAVE_X86_SIMD)
        case 1:
        case 2:
        case 3:
            __builtin_cpu_init();
            if (!__builtin_cpu_supports("avx2") ||
                (variant == 3 && (uintptr_t)p % align != 0)) {
                return -ENOTSUP;
            }
            *sink = read_avx2(p, n, variant - 1);
            return 0;
        case 4:
        case 5:
            __builtin_cpu_init();
            if (!__builtin_cpu_supports("avx512f") ||
                (variant == 5 && (uintptr_t)p % align != 0)) {
                return -ENOTSUP;
            }
            *sink = read_avx512(p, n, variant == 5);
            return 0;
#endif
        default:
            return -ENOTSUP;
    }
}

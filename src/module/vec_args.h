/* The vector kernels' arguments (vec_args.c), shared with vectors.c. */
#ifndef OFFLOOP_VEC_ARGS_H
#define OFFLOOP_VEC_ARGS_H

#include "binding.h"

/* An input or output buffer, held from the call until the job's release. */
typedef struct {
    Py_buffer view; /* valid while `held` */
    int held;
    PyObject *copy; /* strong: the converted float32 copy, or NULL */
    float *data;
    size_t rows, cols; /* 1-D: rows = 1 */
    int ndim;
} vec_buf;

/* Fill `out` (npos + nkwonly slots) from a vectorcall.  The first `nreq`
 * parameters are required.  Unset optional slots are left NULL. */
int vec_parse_args(const char *fname, const char *const *names, int npos,
                   int nkwonly, int nreq, PyObject *const *args,
                   Py_ssize_t nargs, PyObject *kwnames, PyObject **out);
void vec_buf_release(vec_buf *b);
/* Borrow `obj` as float32, C-contiguous, converting it once if need be. */
int vec_get_input(vec_buf *b, PyObject *obj, const char *fname,
                  const char *name);
/* Borrow `obj` writable: float32, C-contiguous, shape rows x cols (ndim
 * 2), or cols (ndim 1).  Never converted. */
int vec_get_output(vec_buf *b, PyObject *obj, const char *fname,
                   const char *name, int ndim, size_t rows, size_t cols);
/* Borrow `obj` (read-only is fine) as C-contiguous codes of struct
 * format `fmt` ('H' uint16, 'b' int8, 'f' float32), `ndim` dimensions.
 * Never converted. */
int vec_get_codes(vec_buf *b, PyObject *obj, const char *fname,
                  const char *name, char fmt, int ndim);
/* A new numpy array of shape (rows, cols), or (cols,) if rows == 0;
 * float32, or int64 if `int64`. */
PyObject *vec_new_array(ol_state *st, size_t rows, size_t cols, int int64);
/* Checked a * b * c; -1 (with ValueError naming `what`) on overflow of
 * Py_ssize_t. */
int vec_checked_size(size_t a, size_t b, size_t c, size_t *out,
                     const char *fname, const char *what);

#endif /* OFFLOOP_VEC_ARGS_H */

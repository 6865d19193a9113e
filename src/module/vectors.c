/* The vector kernels' Python face: argument parsing, dispatch, results. */
#include "binding.h"

PyMethodDef ol_vector_methods[] = {
    {NULL, NULL, 0, NULL},
};

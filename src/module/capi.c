/* The C API capsule: what include/offloop.h reaches. */
#include "binding.h"

int
ol_capi_init(PyObject *module)
{
    return 0;
}

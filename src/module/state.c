/* The ground floor of the binding: the module state's getters and the
 * process-wide counters.  Every other binding file may include what this
 * file defines; it calls none of them.
 */
#include "binding.h"

/* Process-wide: the pool is; every update happens with the GIL held. */
ol_counters ol_count;

ol_state *
ol_get_state(PyObject *module)
{
    return (ol_state *)PyModule_GetState(module);
}

ol_state *
ol_get_state_by_type(PyTypeObject *tp)
{
    return (ol_state *)PyType_GetModuleState(tp);
}

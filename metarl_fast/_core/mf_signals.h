/* Ctrl-C inside long nogil kernels: look at pending signals between chunks of work.
 *
 * mf_signal_raised() takes the GIL briefly and runs the pending signal handlers; if one raised
 * (KeyboardInterrupt), its exception is moved into *pending, so that no exception is set while
 * the kernel unwinds in C (a C-API call made with an exception set is an error), and 1 is
 * returned.  The kernel's caller, back in Python with its locks released, re-raises it with
 * mf_raise_pending(), which returns -1.
 */
#ifndef MF_SIGNALS_H
#define MF_SIGNALS_H
#include <Python.h>

typedef struct {
    PyObject *type, *value, *traceback;
} mf_pending_t;

static int mf_signal_raised(mf_pending_t *pending)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    int raised = PyErr_CheckSignals() != 0;
    if (raised)
        PyErr_Fetch(&pending->type, &pending->value, &pending->traceback);
    PyGILState_Release(gil);
    return raised;
}

static int mf_raise_pending(mf_pending_t *pending)
{
    PyErr_Restore(pending->type, pending->value, pending->traceback); /* steals the references */
    pending->type = pending->value = pending->traceback = NULL;
    return -1;
}
#endif

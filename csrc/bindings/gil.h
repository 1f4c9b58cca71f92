// Releasing the GIL around a kernel call, exit-safe.
//
// At interpreter exit CPython ends a thread that asks for the GIL back (a daemon thread returning
// from a kernel) with pthread_exit (Python < 3.14), whose forced unwinding aborts the process
// ("terminate called without an active exception") when it meets a noexcept frame.
// py::gil_scoped_release takes the GIL back in its destructor, which is noexcept: a daemon thread
// inside a fastrnn call at exit aborted about one exit in two (tests/test_exit.py). Here the GIL
// is taken back in ordinary frames, through which the unwinding passes to the thread's end.
#pragma once
#include <pybind11/pybind11.h>

namespace fastrnn {

// Runs f() without the GIL. f must not touch Python objects.
template <class F>
void without_gil(F&& f) {
    PyThreadState* state = PyEval_SaveThread();
    try {
        f();
    } catch (...) {  // a C++ error from the core: back under the GIL, then on to pybind11
        PyEval_RestoreThread(state);
        throw;
    }
    PyEval_RestoreThread(state);
}

}  // namespace fastrnn

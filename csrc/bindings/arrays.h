// What both binding files check about the NumPy arrays they receive.
#pragma once
#include <pybind11/numpy.h>

namespace fastrnn {
namespace bindings {

// Whether `a` holds native-order T. Compared by kind and size, not by identity: an unpickled
// array carries its own dtype object, not NumPy's singleton.
template <class T>
bool holds(const pybind11::array& a) {
    const pybind11::dtype d = a.dtype();
    return d.is(pybind11::dtype::of<T>()) ||
           (d.kind() == 'f' && d.itemsize() == pybind11::ssize_t(sizeof(T)) && d.byteorder() != '>');
}

}  // namespace bindings
}  // namespace fastrnn

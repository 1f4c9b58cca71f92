# Marks fastrnn/cython as a Cython package: `cimport fastrnn.cython.fastrnn` (declarations of the
# C ABI in fastrnn.pxd). There is no Python module here.

// Compiling a stretch of a file for an instruction set: FASTRNN_TARGET_BEGIN("avx2,fma") ...
// FASTRNN_TARGET_END. A target pragma, not per-file flags, so that the rest of the library stays
// baseline and runs anywhere; dispatch (csrc/dispatch/) calls such code only on a CPU that has
// the instructions. Shared headers go before BEGIN (an inline function first seen inside would be
// compiled for the target, and the linker could pick that copy for baseline code); only headers
// of the ISA's own code, in its own namespace, go inside.
#pragma once

#define FASTRNN_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define FASTRNN_TARGET_BEGIN(isa) \
    FASTRNN_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define FASTRNN_TARGET_END FASTRNN_PRAGMA(clang attribute pop)
#else
#define FASTRNN_TARGET_BEGIN(isa) FASTRNN_PRAGMA(GCC push_options) FASTRNN_PRAGMA(GCC target(isa))
#define FASTRNN_TARGET_END FASTRNN_PRAGMA(GCC pop_options)
#endif

// How a cell header registers its kernels: it specializes CellForms for its row(s) of the cell
// table (table.h) and, in make(maker), names the forms the cell has. csrc/kernels/kernel_set.h
// builds them for every ISA; a row without a specialization does not compile.
//   maker.plain<Plain, Regularized>()    the plain cell, and the same with recurrent dropout /
//                                         zoneout (or a Li-GRU's candidate dropout) compiled in
//   maker.peephole<Cell>()               LSTM peepholes
//   maker.projection<Peephole>()         LSTMP, with or without peepholes
//   maker.layer_norm<Cell>()             LayerNorm of the recurrent projection
#pragma once
#include "table.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

template <int Row>
struct CellForms;

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn

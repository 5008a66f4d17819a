// pybind11 entry point of megatron.core.random_ltd.token_ops_cpp: the CPU token
// kernels of token_ops_cpu.cpp, called from token_ops.py with raw addresses and byte strides (no
// torch headers, so the module builds in pip's isolated environment).
//
// Tuples from Python: row view (addr, batch_stride, token_stride, elem_stride) in bytes; index
// view (addr, batch_stride, kept_stride) in int64 elements; row shape (batch, kept, seq, hidden,
// elem_size); mask view (addr, batch, head, row, col strides in bytes); mask shape (batch, heads,
// kept, seq, elem_size). An address of 0 means "absent, read as zeros" where the kernel allows it.
//
// KERNEL_API must equal api_version of TOKEN_OPS_CPU in megatron/core/kernels.py (stale-build
// detection); bump both together whenever a signature or a semantic changes.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "pybind_views.h"
#include "token_ops.h"

namespace py = pybind11;
using namespace random_ltd;

namespace {

void gather_rows(const RowTuple& src, const RowTuple& dst, const IndexTuple& indices,
                 const ShapeTuple& shape, int threads) {
  py::gil_scoped_release release;
  cpu::gather_rows(row_view(src), row_view(dst), index_view(indices), row_shape(shape), threads);
}

void merge_rows(const RowTuple& full, const RowTuple& part, const RowTuple& out,
                const IndexTuple& indices, const ShapeTuple& shape, int threads) {
  py::gil_scoped_release release;
  cpu::merge_rows(row_view(full), row_view(part), row_view(out), index_view(indices),
                  row_shape(shape), threads);
}

void gather_mask(const MaskTuple& src, const MaskTuple& dst, const IndexTuple& indices,
                 const ShapeTuple& shape, int threads) {
  py::gil_scoped_release release;
  cpu::gather_mask(mask_view(src), mask_view(dst), index_view(indices), mask_shape(shape),
                   threads);
}

void sort_rows(const IndexTuple& in, uint64_t out, int64_t batch, int64_t kept, int threads) {
  py::gil_scoped_release release;
  cpu::sort_rows(index_view(in), reinterpret_cast<int64_t*>(out), batch, kept, threads);
}

}  // namespace

PYBIND11_MODULE(token_ops_cpp, m) {
  m.doc() = "CPU random-LTD token kernels (gather, scatter/merge, mask gather, sort) over raw "
            "strided buffers; see megatron/core/random_ltd/token_ops.py.";
  m.attr("KERNEL_API") = 1;
  m.def("gather_rows", &gather_rows, py::arg("src"), py::arg("dst"), py::arg("indices"),
        py::arg("shape"), py::arg("threads") = 0,
        "dst[b][j] = src[b][indices[b][j]] for every (b, j); raises ValueError for an index "
        "outside [0, seq).");
  m.def("merge_rows", &merge_rows, py::arg("full"), py::arg("part"), py::arg("out"),
        py::arg("indices"), py::arg("shape"), py::arg("threads") = 0,
        "out[b][t] = part[b][j] where indices[b][j] == t, else full[b][t] (address 0 = zeros); "
        "raises ValueError for an out-of-range or repeated index.");
  m.def("gather_mask", &gather_mask, py::arg("src"), py::arg("dst"), py::arg("indices"),
        py::arg("shape"), py::arg("threads") = 0,
        "dst[b][n][r][c] = src[b][n][indices[b][r]][indices[b][c]]; shape is (batch, heads, "
        "kept, seq, elem_size).");
  m.def("sort_rows", &sort_rows, py::arg("indices"), py::arg("out"), py::arg("batch"),
        py::arg("kept"), py::arg("threads") = 0,
        "out (contiguous int64 [batch, kept]) = every row of indices sorted ascending.");
  m.def("openmp_threads", &cpu::openmp_threads,
        "OpenMP's default thread count, or 0 when built without OpenMP.");
}

// pybind11 entry point of megatron.core.random_ltd.token_ops_cuda: the CUDA token
// kernels of token_ops_cuda.cu. Compiled by the host compiler without CUDA or torch headers; the
// tuple layouts are those of module_cpu.cpp, plus the device index and the cudaStream_t as an
// integer (torch.cuda.current_stream(device).cuda_stream). Launches are asynchronous; a launch
// error raises RuntimeError with CUDA's description.
//
// KERNEL_API must equal api_version of TOKEN_OPS_CUDA in megatron/core/kernels.py (stale-build
// detection); bump both together whenever a signature or a semantic changes.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "pybind_views.h"
#include "token_ops_cuda.h"

namespace py = pybind11;
using namespace random_ltd;

namespace {

void check(int code, const char* op) {
  if (code != 0) {
    throw std::runtime_error(std::string("random-LTD CUDA kernel ") + op + " failed: " +
                             cuda::error_string(code) + " (error " + std::to_string(code) + ")");
  }
}

void gather_rows(const RowTuple& src, const RowTuple& dst, const IndexTuple& indices,
                 const ShapeTuple& shape, int device, uint64_t stream) {
  int code;
  {
    py::gil_scoped_release release;
    code = cuda::gather_rows(row_view(src), row_view(dst), index_view(indices), row_shape(shape),
                             device, stream);
  }
  check(code, "gather_rows");
}

void merge_rows(const RowTuple& full, const RowTuple& part, const RowTuple& out,
                const IndexTuple& indices, const ShapeTuple& shape, uint64_t slots, int device,
                uint64_t stream) {
  int code;
  {
    py::gil_scoped_release release;
    code = cuda::merge_rows(row_view(full), row_view(part), row_view(out), index_view(indices),
                            row_shape(shape), slots, device, stream);
  }
  check(code, "merge_rows");
}

void gather_mask(const MaskTuple& src, const MaskTuple& dst, const IndexTuple& indices,
                 const ShapeTuple& shape, int device, uint64_t stream) {
  int code;
  {
    py::gil_scoped_release release;
    code = cuda::gather_mask(mask_view(src), mask_view(dst), index_view(indices),
                             mask_shape(shape), device, stream);
  }
  check(code, "gather_mask");
}

void sort_rows(const IndexTuple& in, uint64_t out, int64_t batch, int64_t kept, int device,
               uint64_t stream) {
  int code;
  {
    py::gil_scoped_release release;
    code = cuda::sort_rows(index_view(in), out, batch, kept, device, stream);
  }
  check(code, "sort_rows");
}

int device_count() {
  int count = 0;
  check(cuda::device_count(&count), "device_count");
  return count;
}

}  // namespace

PYBIND11_MODULE(token_ops_cuda, m) {
  m.doc() = "CUDA random-LTD token kernels (gather, scatter/merge, mask gather, sort) over raw "
            "strided device buffers; see megatron/core/random_ltd/token_ops.py.";
  m.attr("KERNEL_API") = 1;
  m.attr("MAX_SORT_LENGTH") = cuda::kMaxSortLength;
  m.def("gather_rows", &gather_rows, py::arg("src"), py::arg("dst"), py::arg("indices"),
        py::arg("shape"), py::arg("device"), py::arg("stream"),
        "dst[b][j] = src[b][indices[b][j]]; an index outside [0, seq) gathers a zero row.");
  m.def("merge_rows", &merge_rows, py::arg("full"), py::arg("part"), py::arg("out"),
        py::arg("indices"), py::arg("shape"), py::arg("slots"), py::arg("device"),
        py::arg("stream"),
        "out[b][t] = part[b][j] where indices[b][j] == t, else full[b][t] (address 0 = zeros); "
        "slots: device scratch of batch * seq int32.");
  m.def("gather_mask", &gather_mask, py::arg("src"), py::arg("dst"), py::arg("indices"),
        py::arg("shape"), py::arg("device"), py::arg("stream"),
        "dst[b][n][r][c] = src[b][n][indices[b][r]][indices[b][c]].");
  m.def("sort_rows", &sort_rows, py::arg("indices"), py::arg("out"), py::arg("batch"),
        py::arg("kept"), py::arg("device"), py::arg("stream"),
        "out (contiguous int64 [batch, kept]) = every row sorted ascending; kept <= "
        "MAX_SORT_LENGTH.");
  m.def("device_count", &device_count,
        "Visible CUDA devices as seen by this module's CUDA runtime (raises when the driver is "
        "missing or too old for it).");
}

// Host launchers of the CUDA random-LTD token kernels (token_ops_cuda.cu). This header includes no
// CUDA or torch headers so that the pybind11 binding (module_cuda.cpp) compiles with the plain host
// compiler. Each launcher enqueues its kernels on `stream` (a cudaStream_t passed as an integer,
// e.g. torch.cuda.current_stream().cuda_stream) of `device`, does not synchronise, and returns 0
// or a cudaError_t code (error_string() names it). Same semantics as the CPU kernels in
// token_ops.h, except that indices are not validated (that would need a device synchronisation):
// an index outside [0, seq) gathers a zero row and is ignored by merge_rows, so memory outside the
// tensors is never touched.
#pragma once

#include <cstdint>

#include "token_ops.h"

namespace random_ltd {
namespace cuda {

// sort_rows handles rows of at most this many indices (shared-memory bitonic sort); longer rows
// are sorted by the caller with torch.sort.
constexpr int64_t kMaxSortLength = 4096;

// dst[b][j][:] = src[b][indices[b][j]][:], 16-byte vector copies where every row is aligned.
int gather_rows(const RowView& src, const RowView& dst, const IndexView& indices,
                const RowShape& shape, int device, std::uint64_t stream);

// out[b][t][:] = part[b][j][:] where indices[b][j] == t, else full[b][t][:] (addr 0 = zeros).
// `slots` is device scratch of batch * seq int32 values. Indices must be distinct per sample.
int merge_rows(const RowView& full, const RowView& part, const RowView& out,
               const IndexView& indices, const RowShape& shape, std::uint64_t slots, int device,
               std::uint64_t stream);

// dst[b][n][r][c] = src[b][n][indices[b][r]][indices[b][c]] for element sizes 1, 2, 4 and 8.
int gather_mask(const MaskView& src, const MaskView& dst, const IndexView& indices,
                const MaskShape& shape, int device, std::uint64_t stream);

// out (contiguous int64 [batch, kept]) = each row of `in` sorted ascending; kept <= kMaxSortLength.
int sort_rows(const IndexView& in, std::uint64_t out, int64_t batch, int64_t kept, int device,
              std::uint64_t stream);

// Number of visible CUDA devices in *count; returns the error code of cudaGetDeviceCount.
int device_count(int* count);

// The name and description of a cudaError_t code returned by the launchers.
const char* error_string(int code);

}  // namespace cuda
}  // namespace random_ltd

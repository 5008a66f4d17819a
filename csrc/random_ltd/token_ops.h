// Random-LTD token kernels: plain data descriptors shared by the CPU (token_ops_cpu.cpp) and CUDA
// (token_ops_cuda.cu) implementations. No torch, pybind11 or CUDA headers: tensors arrive as raw
// addresses and byte strides from Python (megatron/core/random_ltd/token_ops.py),
// which is also where the pure-torch reference of every op lives.
//
// Vocabulary: a hidden-state tensor is seen as rows[b][t][:] of `hidden` elements of `elem_size`
// bytes each, in either layout ([s, b, h] or [b, s, h]: the layout is only a choice of strides).
// indices[b][k] (int64) names, for every kept token j of sample b, its position t in the full
// sequence of `seq` tokens.
#pragma once

#include <cstdint>

namespace random_ltd {

// A strided 3-D view rows[b][t][e]: base address (0 = absent, read as zeros) and byte strides.
struct RowView {
  std::uint64_t addr;
  int64_t batch_stride;  // bytes between samples
  int64_t token_stride;  // bytes between tokens of one sample
  int64_t elem_stride;   // bytes between elements of one row
};

// A strided int64 [batch, kept] index matrix (strides in elements).
struct IndexView {
  std::uint64_t addr;
  int64_t batch_stride;
  int64_t kept_stride;
};

// Sizes of one row-copy problem.
struct RowShape {
  int64_t batch;      // samples
  int64_t kept;       // kept tokens per sample (columns of the index matrix)
  int64_t seq;        // tokens per sample in the full sequence
  int64_t hidden;     // elements per row
  int64_t elem_size;  // bytes per element
};

// A strided 4-D attention-mask view mask[b][n][row][col] (byte strides; batch stride 0 broadcasts).
struct MaskView {
  std::uint64_t addr;
  int64_t batch_stride;
  int64_t head_stride;
  int64_t row_stride;
  int64_t col_stride;
};

// Sizes of one mask-gather problem: [batch, heads, seq, seq] -> [batch, heads, kept, kept].
struct MaskShape {
  int64_t batch;
  int64_t heads;
  int64_t kept;
  int64_t seq;
  int64_t elem_size;
};

namespace cpu {

// dst[b][j][:] = src[b][indices[b][j]][:]. Throws std::invalid_argument for an index outside
// [0, seq) before writing anything. `threads` <= 0 uses the OpenMP default.
void gather_rows(const RowView& src, const RowView& dst, const IndexView& indices,
                 const RowShape& shape, int threads);

// out[b][t][:] = part[b][j][:] where indices[b][j] == t, else full[b][t][:]; an absent (addr 0)
// `full` or `part` reads as zeros. One pass over `out`; covers scatter (full, part), the gather
// backward (zeros, grad) and the scatter backward for x (grad, zeros). Throws
// std::invalid_argument for an index outside [0, seq) or repeated within a sample.
void merge_rows(const RowView& full, const RowView& part, const RowView& out,
                const IndexView& indices, const RowShape& shape, int threads);

// dst[b][n][r][c] = src[b][n][indices[b][r]][indices[b][c]]. Throws std::invalid_argument for an
// index outside [0, seq) or an element size other than 1, 2, 4 or 8.
void gather_mask(const MaskView& src, const MaskView& dst, const IndexView& indices,
                 const MaskShape& shape, int threads);

// out (contiguous int64 [batch, kept]) = each row of `in` sorted ascending. No length limit.
void sort_rows(const IndexView& in, int64_t* out, int64_t batch, int64_t kept, int threads);

// OpenMP's default thread count, or 0 when built without OpenMP.
int openmp_threads();

}  // namespace cpu
}  // namespace random_ltd

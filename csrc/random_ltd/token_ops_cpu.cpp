// CPU random-LTD token kernels (declared in token_ops.h): OpenMP over rows, one memcpy per row
// when rows are contiguous. The pure-torch reference of each op is in
// megatron/core/random_ltd/token_ops.py; tests/unit/test_token_ops.py checks
// both give identical bits for every dtype and layout.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "token_ops.h"

namespace random_ltd {
namespace cpu {
namespace {

// Below this many bytes moved, the OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelBytes = int64_t{1} << 16;

int thread_count(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

inline int64_t index_at(const IndexView& v, int64_t b, int64_t j) {
  return reinterpret_cast<const int64_t*>(v.addr)[b * v.batch_stride + j * v.kept_stride];
}

// Throws for the first index outside [0, seq), naming the op, its position and value.
void check_indices(const IndexView& v, int64_t batch, int64_t kept, int64_t seq, const char* op) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < kept; ++j) {
      const int64_t t = index_at(v, b, j);
      if (t < 0 || t >= seq) {
        throw std::invalid_argument(std::string(op) + ": indices[" + std::to_string(b) + "][" +
                                    std::to_string(j) + "] = " + std::to_string(t) +
                                    " is outside the sequence [0, " + std::to_string(seq) +
                                    "); indices must be token positions of the full sequence");
      }
    }
  }
}

template <typename T>
void strided_copy(char* dst, int64_t dst_step, const char* src, int64_t src_step, int64_t n) {
  for (int64_t e = 0; e < n; ++e) {
    T value;
    std::memcpy(&value, src + e * src_step, sizeof(T));
    std::memcpy(dst + e * dst_step, &value, sizeof(T));
  }
}

// Copies n elements of `elem` bytes; one memcpy when both rows are contiguous.
void copy_row(char* dst, int64_t dst_step, const char* src, int64_t src_step, int64_t n,
              int64_t elem) {
  if (n == 1 || (dst_step == elem && src_step == elem)) {
    std::memcpy(dst, src, static_cast<size_t>(n * elem));
    return;
  }
  switch (elem) {
    case 1: strided_copy<uint8_t>(dst, dst_step, src, src_step, n); return;
    case 2: strided_copy<uint16_t>(dst, dst_step, src, src_step, n); return;
    case 4: strided_copy<uint32_t>(dst, dst_step, src, src_step, n); return;
    case 8: strided_copy<uint64_t>(dst, dst_step, src, src_step, n); return;
    default:
      for (int64_t e = 0; e < n; ++e) {
        std::memcpy(dst + e * dst_step, src + e * src_step, static_cast<size_t>(elem));
      }
  }
}

void zero_row(char* dst, int64_t dst_step, int64_t n, int64_t elem) {
  if (n == 1 || dst_step == elem) {
    std::memset(dst, 0, static_cast<size_t>(n * elem));
    return;
  }
  for (int64_t e = 0; e < n; ++e) std::memset(dst + e * dst_step, 0, static_cast<size_t>(elem));
}

inline char* row_at(const RowView& v, int64_t b, int64_t t) {
  return reinterpret_cast<char*>(v.addr) + b * v.batch_stride + t * v.token_stride;
}

// slot[b * seq + t] = j where indices[b][j] == t, else -1. Throws for a range error or a repeat.
std::vector<int64_t> kept_slots(const IndexView& v, const RowShape& s) {
  check_indices(v, s.batch, s.kept, s.seq, "token_scatter");
  std::vector<int64_t> slot(static_cast<size_t>(s.batch * s.seq), -1);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < s.kept; ++j) {
      int64_t& entry = slot[b * s.seq + index_at(v, b, j)];
      if (entry >= 0) {
        throw std::invalid_argument(
            "token_scatter: indices[" + std::to_string(b) + "][" + std::to_string(j) + "] = " +
            std::to_string(index_at(v, b, j)) + " repeats indices[" + std::to_string(b) + "][" +
            std::to_string(entry) + "]; kept tokens must be distinct within a sample");
      }
      entry = j;
    }
  }
  return slot;
}

template <typename T>
void gather_mask_typed(const MaskView& src, const MaskView& dst, const IndexView& idx,
                       const MaskShape& s, int threads) {
  // Byte offset of every kept column in a source row, per sample.
  std::vector<int64_t> col(static_cast<size_t>(s.batch * s.kept));
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t c = 0; c < s.kept; ++c) col[b * s.kept + c] = index_at(idx, b, c) * src.col_stride;
  }
  const int64_t rows = s.batch * s.heads * s.kept;
  const bool parallel = rows * s.kept * s.elem_size >= kParallelBytes;
#pragma omp parallel for schedule(static) num_threads(thread_count(threads)) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / (s.heads * s.kept);
    const int64_t n = (r / s.kept) % s.heads;
    const int64_t i = r % s.kept;
    const char* in = reinterpret_cast<const char*>(src.addr) + b * src.batch_stride +
                     n * src.head_stride + index_at(idx, b, i) * src.row_stride;
    char* out = reinterpret_cast<char*>(dst.addr) + b * dst.batch_stride + n * dst.head_stride +
                i * dst.row_stride;
    const int64_t* offsets = col.data() + b * s.kept;
    for (int64_t c = 0; c < s.kept; ++c) {
      T value;
      std::memcpy(&value, in + offsets[c], sizeof(T));
      std::memcpy(out + c * dst.col_stride, &value, sizeof(T));
    }
  }
}

}  // namespace

void gather_rows(const RowView& src, const RowView& dst, const IndexView& indices,
                 const RowShape& s, int threads) {
  check_indices(indices, s.batch, s.kept, s.seq, "token_gather");
  const int64_t rows = s.batch * s.kept;
  const bool parallel = rows * s.hidden * s.elem_size >= kParallelBytes;
#pragma omp parallel for schedule(static) num_threads(thread_count(threads)) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {  // sample-major: each sample's source rows in order
    const int64_t b = r / s.kept, j = r % s.kept;
    copy_row(row_at(dst, b, j), dst.elem_stride, row_at(src, b, index_at(indices, b, j)),
             src.elem_stride, s.hidden, s.elem_size);
  }
}

void merge_rows(const RowView& full, const RowView& part, const RowView& out,
                const IndexView& indices, const RowShape& s, int threads) {
  const std::vector<int64_t> slot = kept_slots(indices, s);
  const int64_t rows = s.batch * s.seq;
  const bool parallel = rows * s.hidden * s.elem_size >= kParallelBytes;
#pragma omp parallel for schedule(static) num_threads(thread_count(threads)) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / s.seq, t = r % s.seq, j = slot[r];
    const RowView& from = j >= 0 ? part : full;
    char* dst = row_at(out, b, t);
    if (from.addr == 0) {
      zero_row(dst, out.elem_stride, s.hidden, s.elem_size);
    } else {
      copy_row(dst, out.elem_stride, row_at(from, b, j >= 0 ? j : t), from.elem_stride, s.hidden,
               s.elem_size);
    }
  }
}

void gather_mask(const MaskView& src, const MaskView& dst, const IndexView& indices,
                 const MaskShape& s, int threads) {
  check_indices(indices, s.batch, s.kept, s.seq, "gather_attention_mask");
  switch (s.elem_size) {
    case 1: return gather_mask_typed<uint8_t>(src, dst, indices, s, threads);
    case 2: return gather_mask_typed<uint16_t>(src, dst, indices, s, threads);
    case 4: return gather_mask_typed<uint32_t>(src, dst, indices, s, threads);
    case 8: return gather_mask_typed<uint64_t>(src, dst, indices, s, threads);
    default:
      throw std::invalid_argument("gather_attention_mask: element size " +
                                  std::to_string(s.elem_size) +
                                  " bytes is not supported (1, 2, 4 or 8); use the torch backend");
  }
}

void sort_rows(const IndexView& in, int64_t* out, int64_t batch, int64_t kept, int threads) {
  const bool parallel = batch > 1 && batch * kept >= (int64_t{1} << 16);
#pragma omp parallel for schedule(static) num_threads(thread_count(threads)) if (parallel)
  for (int64_t b = 0; b < batch; ++b) {
    int64_t* row = out + b * kept;
    for (int64_t j = 0; j < kept; ++j) row[j] = index_at(in, b, j);
    std::sort(row, row + kept);
  }
}

int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 0;
#endif
}

}  // namespace cpu
}  // namespace random_ltd

// CUDA random-LTD token kernels (launchers declared in token_ops_cuda.h). Rows are copied in the
// widest of 16/8/4/2/1-byte units that every row address allows, so hidden states of any dtype
// (fp32, bf16 and fp16 alike) move as raw bytes. No torch headers: tensors arrive as raw addresses
// and byte strides from megatron/core/random_ltd/token_ops.py, which holds the
// pure-torch reference; tests/gpu/test_token_ops_cuda.py checks parity on a device.
#include <cuda_runtime.h>

#include <cstdint>

#include "token_ops_cuda.h"

namespace random_ltd {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops cover the rest

// Makes `device` current for the launch and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    status_ = cudaGetDevice(&previous_);
    if (status_ == cudaSuccess && previous_ != device) {
      status_ = cudaSetDevice(device);
      restore_ = status_ == cudaSuccess;
    }
  }
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }
  cudaError_t status() const { return status_; }

 private:
  int previous_ = 0;
  bool restore_ = false;
  cudaError_t status_ = cudaSuccess;
};

// Block shape for rows of `units` copy units: x threads walk a row, y rows share a block.
dim3 block_for(int64_t units) {
  int x = 1;
  while (x < units && x < kThreads) x <<= 1;
  return dim3(x, kThreads / x);
}

unsigned grid_for(int64_t rows, unsigned rows_per_block) {
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

cudaStream_t as_stream(std::uint64_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

__device__ __forceinline__ int64_t load_index(const IndexView& v, int64_t b, int64_t j) {
  return reinterpret_cast<const int64_t*>(v.addr)[b * v.batch_stride + j * v.kept_stride];
}

// How rows are cut into copy units: `bytes` per unit, `units` per row, byte step per view.
struct CopyPlan {
  int bytes = 0;
  int64_t units = 0;
};

// The widest unit (16, 8, 4, 2 or 1 bytes) that divides the row size and every row address of the
// present views when all rows are contiguous; the element itself when some row is strided.
CopyPlan plan_copy(const RowView* const* views, int count, const RowShape& s) {
  bool contiguous = true;
  for (int v = 0; v < count; ++v) {
    if (views[v]->addr != 0 && s.hidden > 1 && views[v]->elem_stride != s.elem_size) {
      contiguous = false;
    }
  }
  if (!contiguous) return {static_cast<int>(s.elem_size), s.hidden};
  const int64_t row_bytes = s.hidden * s.elem_size;
  for (int width = 16; width > 1; width >>= 1) {
    bool aligned = row_bytes % width == 0;
    for (int v = 0; v < count && aligned; ++v) {
      const RowView& r = *views[v];
      aligned = r.addr == 0 || (r.addr % width == 0 && r.batch_stride % width == 0 &&
                                r.token_stride % width == 0);
    }
    if (aligned) return {width, row_bytes / width};
  }
  return {1, row_bytes};
}

// Byte step between consecutive units of a view's row under `plan`.
int64_t unit_step(const RowView& v, const CopyPlan& plan, const RowShape& s) {
  return plan.bytes == s.elem_size && s.hidden > 1 ? v.elem_stride : plan.bytes;
}

template <typename V>
__global__ void gather_kernel(RowView src, RowView dst, IndexView idx, RowShape s, int64_t units,
                              int64_t src_step, int64_t dst_step) {
  const int64_t rows = s.batch * s.kept;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t b = row / s.kept, j = row - b * s.kept;
    const int64_t t = load_index(idx, b, j);
    const bool valid = t >= 0 && t < s.seq;
    const char* in = reinterpret_cast<const char*>(src.addr) + b * src.batch_stride +
                     (valid ? t : 0) * src.token_stride;
    char* out = reinterpret_cast<char*>(dst.addr) + b * dst.batch_stride + j * dst.token_stride;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      V value{};
      if (valid) value = *reinterpret_cast<const V*>(in + u * src_step);
      *reinterpret_cast<V*>(out + u * dst_step) = value;
    }
  }
}

// slots[b * seq + indices[b][j]] = j (slots were filled with -1 beforehand).
__global__ void fill_slots_kernel(IndexView idx, int32_t* slots, int64_t batch, int64_t kept,
                                  int64_t seq) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < batch * kept;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = r / kept, j = r - b * kept;
    const int64_t t = load_index(idx, b, j);
    if (t >= 0 && t < seq) slots[b * seq + t] = static_cast<int32_t>(j);
  }
}

template <typename V>
__global__ void merge_kernel(RowView full, RowView part, RowView out, const int32_t* slots,
                             RowShape s, int64_t units, int64_t full_step, int64_t part_step,
                             int64_t out_step) {
  const int64_t rows = s.batch * s.seq;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t b = row / s.seq, t = row - b * s.seq;
    const int64_t j = slots[row];
    const bool kept = j >= 0;
    const std::uint64_t base = kept ? part.addr : full.addr;
    const int64_t step = kept ? part_step : full_step;
    const char* in = nullptr;
    if (base != 0) {
      in = reinterpret_cast<const char*>(base) +
           (kept ? b * part.batch_stride + j * part.token_stride
                 : b * full.batch_stride + t * full.token_stride);
    }
    char* dst = reinterpret_cast<char*>(out.addr) + b * out.batch_stride + t * out.token_stride;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
      V value{};
      if (in != nullptr) value = *reinterpret_cast<const V*>(in + u * step);
      *reinterpret_cast<V*>(dst + u * out_step) = value;
    }
  }
}

template <typename T>
__global__ void mask_kernel(MaskView src, MaskView dst, IndexView idx, MaskShape s) {
  const int64_t rows = s.batch * s.heads * s.kept;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t b = row / (s.heads * s.kept);
    const int64_t n = (row / s.kept) % s.heads;
    const int64_t i = row % s.kept;
    const int64_t r = load_index(idx, b, i);
    const bool row_valid = r >= 0 && r < s.seq;
    const char* in = reinterpret_cast<const char*>(src.addr) + b * src.batch_stride +
                     n * src.head_stride + (row_valid ? r : 0) * src.row_stride;
    char* out = reinterpret_cast<char*>(dst.addr) + b * dst.batch_stride + n * dst.head_stride +
                i * dst.row_stride;
    for (int64_t c = threadIdx.x; c < s.kept; c += blockDim.x) {
      const int64_t col = load_index(idx, b, c);
      T value{};
      if (row_valid && col >= 0 && col < s.seq) {
        value = *reinterpret_cast<const T*>(in + col * src.col_stride);
      }
      *reinterpret_cast<T*>(out + c * dst.col_stride) = value;
    }
  }
}

// One block per row: bitonic sort of the row padded to `padded` (a power of two) in shared memory.
__global__ void sort_kernel(IndexView in, int64_t* out, int64_t kept, int padded) {
  extern __shared__ int64_t keys[];
  const int64_t b = blockIdx.x;
  for (int i = threadIdx.x; i < padded; i += blockDim.x) {
    keys[i] = i < kept ? load_index(in, b, i) : INT64_MAX;
  }
  __syncthreads();
  for (int size = 2; size <= padded; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < padded; i += blockDim.x) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool ascending = (i & size) == 0;
          const int64_t a = keys[i], c = keys[partner];
          if ((a > c) == ascending) {
            keys[i] = c;
            keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < kept; i += blockDim.x) out[b * kept + i] = keys[i];
}

template <typename V>
void launch_gather(const RowView& src, const RowView& dst, const IndexView& idx,
                   const RowShape& s, const CopyPlan& plan, cudaStream_t stream) {
  const dim3 block = block_for(plan.units);
  gather_kernel<V><<<grid_for(s.batch * s.kept, block.y), block, 0, stream>>>(
      src, dst, idx, s, plan.units, unit_step(src, plan, s), unit_step(dst, plan, s));
}

template <typename V>
void launch_merge(const RowView& full, const RowView& part, const RowView& out,
                  const int32_t* slots, const RowShape& s, const CopyPlan& plan,
                  cudaStream_t stream) {
  const dim3 block = block_for(plan.units);
  merge_kernel<V><<<grid_for(s.batch * s.seq, block.y), block, 0, stream>>>(
      full, part, out, slots, s, plan.units, unit_step(full, plan, s), unit_step(part, plan, s),
      unit_step(out, plan, s));
}

template <typename T>
void launch_mask(const MaskView& src, const MaskView& dst, const IndexView& idx,
                 const MaskShape& s, cudaStream_t stream) {
  const dim3 block = block_for(s.kept);
  mask_kernel<T><<<grid_for(s.batch * s.heads * s.kept, block.y), block, 0, stream>>>(src, dst,
                                                                                      idx, s);
}

}  // namespace

int gather_rows(const RowView& src, const RowView& dst, const IndexView& indices,
                const RowShape& s, int device, std::uint64_t stream) {
  const RowView* views[] = {&src, &dst};
  const CopyPlan plan = plan_copy(views, 2, s);
  if (s.batch * s.kept == 0 || plan.units == 0) return cudaSuccess;
  DeviceGuard guard(device);
  if (guard.status() != cudaSuccess) return guard.status();
  switch (plan.bytes) {
    case 16: launch_gather<uint4>(src, dst, indices, s, plan, as_stream(stream)); break;
    case 8: launch_gather<uint2>(src, dst, indices, s, plan, as_stream(stream)); break;
    case 4: launch_gather<uint32_t>(src, dst, indices, s, plan, as_stream(stream)); break;
    case 2: launch_gather<uint16_t>(src, dst, indices, s, plan, as_stream(stream)); break;
    case 1: launch_gather<uint8_t>(src, dst, indices, s, plan, as_stream(stream)); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

int merge_rows(const RowView& full, const RowView& part, const RowView& out,
               const IndexView& indices, const RowShape& s, std::uint64_t slots, int device,
               std::uint64_t stream) {
  const RowView* views[] = {&full, &part, &out};
  const CopyPlan plan = plan_copy(views, 3, s);
  if (s.batch * s.seq == 0 || plan.units == 0) return cudaSuccess;
  DeviceGuard guard(device);
  if (guard.status() != cudaSuccess) return guard.status();
  cudaStream_t st = as_stream(stream);
  int32_t* slot = reinterpret_cast<int32_t*>(slots);
  cudaError_t status = cudaMemsetAsync(slot, 0xFF, s.batch * s.seq * sizeof(int32_t), st);
  if (status != cudaSuccess) return status;
  if (s.batch * s.kept > 0) {
    fill_slots_kernel<<<grid_for(s.batch * s.kept, kThreads), kThreads, 0, st>>>(
        indices, slot, s.batch, s.kept, s.seq);
  }
  switch (plan.bytes) {
    case 16: launch_merge<uint4>(full, part, out, slot, s, plan, st); break;
    case 8: launch_merge<uint2>(full, part, out, slot, s, plan, st); break;
    case 4: launch_merge<uint32_t>(full, part, out, slot, s, plan, st); break;
    case 2: launch_merge<uint16_t>(full, part, out, slot, s, plan, st); break;
    case 1: launch_merge<uint8_t>(full, part, out, slot, s, plan, st); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

int gather_mask(const MaskView& src, const MaskView& dst, const IndexView& indices,
                const MaskShape& s, int device, std::uint64_t stream) {
  if (s.batch * s.heads * s.kept == 0) return cudaSuccess;
  DeviceGuard guard(device);
  if (guard.status() != cudaSuccess) return guard.status();
  switch (s.elem_size) {
    case 1: launch_mask<uint8_t>(src, dst, indices, s, as_stream(stream)); break;
    case 2: launch_mask<uint16_t>(src, dst, indices, s, as_stream(stream)); break;
    case 4: launch_mask<uint32_t>(src, dst, indices, s, as_stream(stream)); break;
    case 8: launch_mask<uint64_t>(src, dst, indices, s, as_stream(stream)); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

int sort_rows(const IndexView& in, std::uint64_t out, int64_t batch, int64_t kept, int device,
              std::uint64_t stream) {
  if (kept > kMaxSortLength) return cudaErrorInvalidValue;
  if (batch == 0 || kept == 0) return cudaSuccess;
  DeviceGuard guard(device);
  if (guard.status() != cudaSuccess) return guard.status();
  int padded = 1;
  while (padded < kept) padded <<= 1;
  const int threads = padded < kThreads ? padded : kThreads;
  sort_kernel<<<static_cast<unsigned>(batch), threads, padded * sizeof(int64_t),
                as_stream(stream)>>>(in, reinterpret_cast<int64_t*>(out), kept, padded);
  return cudaGetLastError();
}

int device_count(int* count) { return cudaGetDeviceCount(count); }

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace random_ltd

// Python tuple <-> view descriptor conversions shared by the CPU and CUDA bindings
// (module_cpu.cpp, module_cuda.cpp). Tuple layouts are documented at the top of module_cpu.cpp.
#pragma once

#include <cstdint>
#include <tuple>

#include "token_ops.h"

namespace random_ltd {

using RowTuple = std::tuple<uint64_t, int64_t, int64_t, int64_t>;
using IndexTuple = std::tuple<uint64_t, int64_t, int64_t>;
using ShapeTuple = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;
using MaskTuple = std::tuple<uint64_t, int64_t, int64_t, int64_t, int64_t>;

inline RowView row_view(const RowTuple& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t)};
}

inline IndexView index_view(const IndexTuple& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t)};
}

// (batch, kept, seq, hidden, elem_size)
inline RowShape row_shape(const ShapeTuple& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t)};
}

inline MaskView mask_view(const MaskTuple& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t)};
}

// (batch, heads, kept, seq, elem_size)
inline MaskShape mask_shape(const ShapeTuple& t) {
  return {std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t)};
}

}  // namespace random_ltd

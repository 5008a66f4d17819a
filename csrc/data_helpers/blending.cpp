// Blending index builder: which dataset (and which of its samples) each sample of a weighted blend
// comes from. The pure-Python reference is megatron/core/datasets/helpers.py
// (build_blending_indices_py); tests/unit/test_dataset_helpers.py checks that both agree exactly.
#include <pybind11/numpy.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "helpers.h"

namespace py = pybind11;

namespace {

using WeightsArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// Greedy error-diffusion: sample i goes to the dataset whose target count weights[d] * max(i, 1)
// is furthest ahead of the samples it has received so far (the first one on ties).
void fill_blending_indices(const double* weights, int64_t num_datasets, int64_t size,
                           int16_t* dataset_index, int64_t* dataset_sample_index) {
  std::vector<int64_t> counts(num_datasets, 0);
  for (int64_t i = 0; i < size; ++i) {
    const double position = static_cast<double>(std::max<int64_t>(i, 1));
    int64_t best = 0;
    double best_error = std::numeric_limits<double>::lowest();
    for (int64_t d = 0; d < num_datasets; ++d) {
      // volatile keeps the product rounded on its own, as in the Python reference, so that a
      // compiler contracting `w * x - c` into one fused multiply-add cannot change a tie.
      volatile double target = weights[d] * position;
      const double error = target - static_cast<double>(counts[d]);
      if (error > best_error) {
        best_error = error;
        best = d;
      }
    }
    dataset_index[i] = static_cast<int16_t>(best);
    dataset_sample_index[i] = counts[best];
    ++counts[best];
  }
}

py::tuple build_blending_indices(const WeightsArray& weights, int64_t size) {
  if (weights.ndim() != 1 || weights.shape(0) == 0) {
    throw py::value_error("build_blending_indices: weights must be a non-empty 1-D array");
  }
  const int64_t num_datasets = weights.shape(0);
  if (num_datasets > std::numeric_limits<int16_t>::max()) {
    throw py::value_error("build_blending_indices: " + std::to_string(num_datasets) +
                          " datasets exceed the int16 dataset index (at most 32767)");
  }
  if (size < 0) {
    throw py::value_error("build_blending_indices: size must be >= 0, got " +
                          std::to_string(size));
  }
  const double* w = weights.data();
  for (int64_t d = 0; d < num_datasets; ++d) {
    if (!std::isfinite(w[d]) || w[d] < 0) {
      throw py::value_error("build_blending_indices: weights[" + std::to_string(d) + "] = " +
                            std::to_string(w[d]) + " is not a finite non-negative number");
    }
  }
  py::array_t<int16_t> dataset_index(size);
  py::array_t<int64_t> dataset_sample_index(size);
  int16_t* index_ptr = dataset_index.mutable_data();
  int64_t* sample_ptr = dataset_sample_index.mutable_data();
  {
    py::gil_scoped_release release;
    fill_blending_indices(w, num_datasets, size, index_ptr, sample_ptr);
  }
  return py::make_tuple(dataset_index, dataset_sample_index);
}

}  // namespace

void register_blending_helpers(py::module_& m) {
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"),
        "(dataset_index int16[size], dataset_sample_index int64[size]) of a weighted blend.\n\n"
        "Sample i comes from the dataset d maximising weights[d] * max(i, 1) - count[d] (first "
        "maximum on ties); dataset_sample_index[i] is count[d] before it is incremented.");
}

// Blending index builders: which dataset (and which of its samples) each sample of a weighted blend
// comes from. Two rules: megatron-core's largest error (the default of the blend builder) and the
// earliest deadline (--legacy-split-and-blend). The pure-Python references are in
// megatron/core/datasets/helpers.py (build_blending_indices_reference,
// build_blending_indices_largest_error_reference); tests/unit/test_dataset_helpers.py checks that
// each pair agrees exactly.
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

// Earliest-deadline apportionment (Tijdeman's solution of the "chairman assignment problem"):
// with D datasets and delta = 1 / (2 (D - 1)), sample n (1-based) goes, among the datasets whose
// deficit weights[d] * n - count[d] is at least delta, to the one whose next sample is due first:
// the smallest (count[d] + 1 - delta) / weights[d] (the first one on ties). Every prefix of n
// samples then holds within 1 - delta < 1 sample of weights[d] * n for every dataset.
// (Megatron's rule, the largest weights[d] * max(i, 1) - count[d], drifts up to ~1.6 samples
// with three or more datasets.) Weights must sum to 1.
void fill_blending_indices(const double* weights, int64_t num_datasets, int64_t size,
                           int16_t* dataset_index, int64_t* dataset_sample_index) {
  std::vector<int64_t> counts(num_datasets, 0);
  const double delta = num_datasets > 1 ? 1.0 / (2.0 * static_cast<double>(num_datasets - 1)) : 0.0;
  const double eligible = delta - 1e-9;  // tolerance for rounding in the deficit
  for (int64_t i = 0; i < size; ++i) {
    const double n = static_cast<double>(i + 1);
    int64_t best = -1;
    double best_deadline = std::numeric_limits<double>::infinity();
    for (int64_t d = 0; d < num_datasets; ++d) {
      if (weights[d] <= 0.0) continue;
      // volatile keeps each product rounded on its own, as in the Python reference, so that a
      // compiler contracting `w * n - c` into one fused multiply-add cannot change a decision.
      volatile double target = weights[d] * n;
      const double deficit = target - static_cast<double>(counts[d]);
      if (deficit < eligible) continue;
      volatile double due = static_cast<double>(counts[d]) + 1.0 - delta;
      const double deadline = due / weights[d];
      if (deadline < best_deadline) {
        best_deadline = deadline;
        best = d;
      }
    }
    if (best < 0) best = 0;  // unreachable for weights summing to 1 (the deficits sum to 1)
    dataset_index[i] = static_cast<int16_t>(best);
    dataset_sample_index[i] = counts[best];
    ++counts[best];
  }
}

// megatron-core's rule: sample i (0-based) goes to the dataset with the largest error
// weights[d] * max(i, 1) - count[d] (the first one on ties). The weights are used as given (the
// caller normalises them, as megatron-core's BlendedDataset does), so that the decisions are
// those of megatron-core bit for bit.
void fill_largest_error_indices(const double* weights, int64_t num_datasets, int64_t size,
                                int16_t* dataset_index, int64_t* dataset_sample_index) {
  std::vector<int64_t> counts(num_datasets, 0);
  for (int64_t i = 0; i < size; ++i) {
    const double n = std::max(static_cast<double>(i), 1.0);
    int64_t best = 0;
    volatile double best_target = weights[0] * n;  // no fused multiply-add (see above)
    double best_error = best_target - static_cast<double>(counts[0]);
    for (int64_t d = 1; d < num_datasets; ++d) {
      volatile double target = weights[d] * n;
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
  const double* raw = weights.data();
  double total = 0.0;
  for (int64_t d = 0; d < num_datasets; ++d) {
    if (!std::isfinite(raw[d]) || raw[d] < 0) {
      throw py::value_error("build_blending_indices: weights[" + std::to_string(d) + "] = " +
                            std::to_string(raw[d]) + " is not a finite non-negative number");
    }
    total += raw[d];
  }
  if (!(total > 0.0)) {
    throw py::value_error("build_blending_indices: the weights sum to 0");
  }
  std::vector<double> normalized(num_datasets);
  for (int64_t d = 0; d < num_datasets; ++d) normalized[d] = raw[d] / total;
  const double* w = normalized.data();
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

py::tuple build_blending_indices_largest_error(const WeightsArray& weights, int64_t size) {
  if (weights.ndim() != 1 || weights.shape(0) == 0) {
    throw py::value_error("build_blending_indices_largest_error: weights must be a non-empty 1-D array");
  }
  const int64_t num_datasets = weights.shape(0);
  if (num_datasets > std::numeric_limits<int16_t>::max()) {
    throw py::value_error("build_blending_indices_largest_error: " + std::to_string(num_datasets) +
                          " datasets exceed the int16 dataset index (at most 32767)");
  }
  if (size < 0) {
    throw py::value_error("build_blending_indices_largest_error: size must be >= 0, got " +
                          std::to_string(size));
  }
  const double* w = weights.data();
  for (int64_t d = 0; d < num_datasets; ++d) {
    if (!std::isfinite(w[d]) || w[d] < 0) {
      throw py::value_error("build_blending_indices_largest_error: weights[" + std::to_string(d) +
                            "] = " + std::to_string(w[d]) + " is not a finite non-negative number");
    }
  }
  py::array_t<int16_t> dataset_index(size);
  py::array_t<int64_t> dataset_sample_index(size);
  int16_t* index_ptr = dataset_index.mutable_data();
  int64_t* sample_ptr = dataset_sample_index.mutable_data();
  {
    py::gil_scoped_release release;
    fill_largest_error_indices(w, num_datasets, size, index_ptr, sample_ptr);
  }
  return py::make_tuple(dataset_index, dataset_sample_index);
}

}  // namespace

void register_blending_helpers(py::module_& m) {
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"),
        "(dataset_index int16[size], dataset_sample_index int64[size]) of a weighted blend.\n\n"
        "Weights are normalised to sum 1. Sample n (1-based) comes from the dataset, among those "
        "with weights[d] * n - count[d] >= delta = 1/(2(D-1)), whose next sample is due first "
        "((count[d] + 1 - delta) / weights[d], first on ties); every prefix stays within one "
        "sample of its target share. dataset_sample_index[i] is count[d] before the increment.");
  m.def("build_blending_indices_largest_error", &build_blending_indices_largest_error,
        py::arg("weights"), py::arg("size"),
        "(dataset_index int16[size], dataset_sample_index int64[size]) by megatron-core's rule.\n\n"
        "Sample i (0-based) comes from the dataset with the largest weights[d] * max(i, 1) - "
        "count[d] (first on ties); the weights are used as given (normalise them first).");
}

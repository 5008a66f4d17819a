// pybind11 entry point of megatron.core.datasets.helpers_cpp.
// Each concern registers its functions from its own translation unit.
//
// KERNEL_API is the version of the interface the Python side calls; it must equal api_version of
// DATASET_HELPERS in megatron/core/kernels.py, which treats a module with another value (or
// without one of the listed symbols) as a stale build. Bump both together whenever a signature or
// a semantic changes.
#include <pybind11/pybind11.h>

#include "helpers.h"

PYBIND11_MODULE(helpers_cpp, m) {
  m.doc() = "C++ index builders for Megatron-format datasets (GPT sample index, blending, BERT mapping).";
  m.attr("KERNEL_API") = 1;
  register_gpt_helpers(m);
  register_blending_helpers(m);
  register_bert_helpers(m);
  register_metric_helpers(m);
}

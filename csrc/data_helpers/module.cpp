// pybind11 entry point of megatron.core.datasets.helpers_cpp.
// Each concern registers its functions from its own translation unit.
#include <pybind11/pybind11.h>

#include "helpers.h"

PYBIND11_MODULE(helpers_cpp, m) {
  m.doc() = "C++ index builders for Megatron-format datasets (GPT sample index, blending, BERT mapping).";
  register_gpt_helpers(m);
  register_blending_helpers(m);
  register_bert_helpers(m);
  register_metric_helpers(m);
}

// GPT sample index builder: where each fixed-length training sample starts in the shuffled
// document order. The numpy reference is megatron/core/datasets/helpers.py
// (build_sample_idx_reference); tests/unit/test_dataset_helpers.py checks that both give identical
// arrays.
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "helpers.h"

namespace py = pybind11;

namespace {

using SizesArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Number of samples of seq_length (+ add_extra_token overlapping) tokens in total_tokens tokens.
int64_t count_samples(int64_t total_tokens, int64_t seq_length, int64_t add_extra_token,
                      bool drop_last_partial_sequence) {
  const int64_t usable = total_tokens - add_extra_token;
  if (drop_last_partial_sequence) return usable / seq_length;
  return (usable + seq_length - 1) / seq_length;  // ceil; usable >= 0 is checked by the caller
}

// Checks every entry of doc_idx against the number of sequences and returns the tokens it spans.
template <typename DocT>
int64_t checked_token_count(const int32_t* sizes, int64_t num_sizes, const DocT* doc_idx,
                            int64_t num_docs) {
  int64_t total = 0;
  for (int64_t i = 0; i < num_docs; ++i) {
    const int64_t doc = static_cast<int64_t>(doc_idx[i]);
    if (doc < 0 || doc >= num_sizes) {
      throw py::value_error("build_sample_idx: doc_idx[" + std::to_string(i) + "] = " +
                            std::to_string(doc) + " is not a valid index into sizes (" +
                            std::to_string(num_sizes) + " entries)");
    }
    total += sizes[doc];
  }
  return total;
}

// The walk: consume seq_length + add_extra_token tokens per sample, document after document; a
// sample that ends inside a document makes the next one start add_extra_token tokens before its
// end (sample i's last token is sample i+1's first). Writes 2 * (num_samples + 1) values.
template <typename DocT, typename OutT>
void walk_samples(const int32_t* sizes, const DocT* doc_idx, int64_t num_docs, int64_t seq_length,
                  int64_t add_extra_token, int64_t num_samples, OutT* out) {
  int64_t doc_pos = 0;     // index into doc_idx
  int64_t doc_offset = 0;  // token offset inside doc_idx[doc_pos]
  out[0] = 0;
  out[1] = 0;
  for (int64_t sample = 1; sample <= num_samples; ++sample) {
    int64_t remaining = seq_length + add_extra_token;
    while (remaining != 0) {
      const int64_t doc_length = static_cast<int64_t>(sizes[doc_idx[doc_pos]]) - doc_offset;
      remaining -= doc_length;
      if (remaining <= 0) {
        // The sample ends inside this document: the next one starts add_extra_token before.
        doc_offset += remaining + doc_length - add_extra_token;
        remaining = 0;
      } else if (doc_pos == num_docs - 1) {
        // Out of documents (only with a kept partial last sample): it ends at the last token.
        doc_offset = static_cast<int64_t>(sizes[doc_idx[doc_pos]]) - add_extra_token;
        break;
      } else {
        ++doc_pos;
        doc_offset = 0;
      }
    }
    out[2 * sample] = static_cast<OutT>(doc_pos);
    out[2 * sample + 1] = static_cast<OutT>(doc_offset);
  }
}

template <typename DocT>
py::array build_sample_idx_typed(const SizesArray& sizes, const py::array& doc_idx_any,
                                 int64_t seq_length, int64_t num_epochs, int64_t tokens_per_epoch,
                                 bool drop_last_partial_sequence, int64_t add_extra_token,
                                 bool force_int64) {
  auto doc_idx = py::array_t<DocT, py::array::c_style | py::array::forcecast>::ensure(doc_idx_any);
  if (!doc_idx) throw py::type_error("build_sample_idx: doc_idx must be a 1-D integer array");
  const int32_t* sizes_ptr = sizes.data();
  const DocT* doc_ptr = doc_idx.data();
  const int64_t num_sizes = sizes.shape(0);
  const int64_t num_docs = doc_idx.shape(0);
  const int64_t total_tokens = num_epochs * tokens_per_epoch;

  int64_t available = 0;
  {
    py::gil_scoped_release release;
    available = checked_token_count(sizes_ptr, num_sizes, doc_ptr, num_docs);
  }
  if (available < total_tokens) {
    throw py::value_error("build_sample_idx: num_epochs * tokens_per_epoch = " +
                          std::to_string(total_tokens) + " but doc_idx spans only " +
                          std::to_string(available) + " tokens; pass the doc_idx of all epochs");
  }
  const int64_t num_samples =
      count_samples(total_tokens, seq_length, add_extra_token, drop_last_partial_sequence);
  if (num_samples > 0 && num_docs == 0) {
    throw py::value_error("build_sample_idx: doc_idx is empty but samples were requested");
  }

  // Values are positions in doc_idx and token offsets inside one sequence.
  int64_t max_size = 0;
  for (int64_t i = 0; i < num_sizes; ++i) max_size = std::max<int64_t>(max_size, sizes_ptr[i]);
  const bool use_int64 =
      force_int64 || std::max(num_docs, max_size) > std::numeric_limits<int32_t>::max();

  if (use_int64) {
    py::array_t<int64_t> out({num_samples + 1, static_cast<int64_t>(2)});  // [S + 1, 2]
    int64_t* out_ptr = out.mutable_data();
    py::gil_scoped_release release;
    walk_samples(sizes_ptr, doc_ptr, num_docs, seq_length, add_extra_token, num_samples, out_ptr);
    return std::move(out);
  }
  py::array_t<int32_t> out({num_samples + 1, static_cast<int64_t>(2)});  // [S + 1, 2]
  int32_t* out_ptr = out.mutable_data();
  py::gil_scoped_release release;
  walk_samples(sizes_ptr, doc_ptr, num_docs, seq_length, add_extra_token, num_samples, out_ptr);
  return std::move(out);
}

py::array build_sample_idx(const SizesArray& sizes, const py::array& doc_idx, int64_t seq_length,
                           int64_t num_epochs, int64_t tokens_per_epoch,
                           bool drop_last_partial_sequence, int64_t add_extra_token,
                           bool force_int64) {
  if (sizes.ndim() != 1 || doc_idx.ndim() != 1) {
    throw py::value_error("build_sample_idx: sizes and doc_idx must be 1-D arrays, got " +
                          std::to_string(sizes.ndim()) + "-D and " +
                          std::to_string(doc_idx.ndim()) + "-D");
  }
  if (seq_length < 1 || num_epochs < 1 || tokens_per_epoch < 0 || add_extra_token < 0) {
    throw py::value_error(
        "build_sample_idx: need seq_length >= 1, num_epochs >= 1, tokens_per_epoch >= 0 and "
        "add_extra_token >= 0; got " +
        std::to_string(seq_length) + ", " + std::to_string(num_epochs) + ", " +
        std::to_string(tokens_per_epoch) + ", " + std::to_string(add_extra_token));
  }
  if (tokens_per_epoch > 0 &&
      num_epochs > std::numeric_limits<int64_t>::max() / tokens_per_epoch) {
    throw py::value_error("build_sample_idx: num_epochs * tokens_per_epoch overflows int64");
  }
  if (num_epochs * tokens_per_epoch < add_extra_token) {
    throw py::value_error("build_sample_idx: " + std::to_string(num_epochs * tokens_per_epoch) +
                          " tokens cannot hold even one sample (add_extra_token = " +
                          std::to_string(add_extra_token) + ")");
  }
  const auto kind = doc_idx.dtype();
  if (kind.is(py::dtype::of<int32_t>())) {
    return build_sample_idx_typed<int32_t>(sizes, doc_idx, seq_length, num_epochs,
                                           tokens_per_epoch, drop_last_partial_sequence,
                                           add_extra_token, force_int64);
  }
  if (kind.is(py::dtype::of<int64_t>())) {
    return build_sample_idx_typed<int64_t>(sizes, doc_idx, seq_length, num_epochs,
                                           tokens_per_epoch, drop_last_partial_sequence,
                                           add_extra_token, force_int64);
  }
  throw py::type_error("build_sample_idx: doc_idx must be int32 or int64, got " +
                       std::string(py::str(kind)));
}

}  // namespace

void register_gpt_helpers(py::module_& m) {
  m.def("build_sample_idx", &build_sample_idx, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("num_epochs"), py::arg("tokens_per_epoch"),
        py::arg("drop_last_partial_sequence") = true, py::arg("add_extra_token") = 1,
        py::arg("force_int64") = false,
        "[S + 1, 2] array of (position in doc_idx, token offset) where each GPT sample starts.\n\n"
        "sizes: int32 tokens per sequence; doc_idx: int32/int64 sequence ids in epoch order.\n"
        "A sample is seq_length + add_extra_token tokens; consecutive samples share "
        "add_extra_token tokens.\nS = (num_epochs * tokens_per_epoch - add_extra_token) // "
        "seq_length (rounded up when drop_last_partial_sequence is False).\nThe result is int32 "
        "unless a value could exceed int32 (or force_int64 is set), then int64.");
}

// BERT sample mapping builder: groups consecutive sentences of one document into samples.
//
// The algorithm, its random number generator and the exact meaning of every argument are
// documented in megatron/core/datasets/bert_helpers_ref.py (build_mapping_reference), the
// pure-Python reference that this file must match bit for bit (tests/unit/test_bert_dataset.py
// compares the two on random corpora).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "helpers.h"

namespace py = pybind11;

namespace {

// splitmix64 (Steele, Lea & Flood 2014): 64-bit state, one output per call.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1) with 53 random bits (exactly representable, so C++ and Python agree).
  double uniform_double() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Uniform in [0, n) by multiply-high (Lemire); bias below n / 2^64, irrelevant here.
  uint64_t uniform_int(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }

 private:
  uint64_t state_;
};

struct MappingStats {
  int64_t empty_docs = 0;
  int64_t short_docs = 0;
  int64_t long_sentence_docs = 0;
  int64_t epochs = 0;
};

int64_t target_length(SplitMix64& rng, int64_t max_seq_length, double short_seq_prob) {
  if (rng.uniform_double() < short_seq_prob) {
    return 2 + static_cast<int64_t>(rng.uniform_int(static_cast<uint64_t>(max_seq_length - 1)));
  }
  return max_seq_length;
}

// Appends the samples of one document (sentences [first, last)) to `rows`.
void chunk_document(const int32_t* sizes, int64_t first, int64_t last, int64_t max_seq_length,
                    double short_seq_prob, int64_t min_num_sent, SplitMix64& rng,
                    std::vector<int64_t>& rows) {
  int64_t start = first, seq_len = 0, num_sent = 0, target = 0;
  for (int64_t s = first; s < last; ++s) {
    if (num_sent == 0) target = target_length(rng, max_seq_length, short_seq_prob);
    seq_len += sizes[s];
    ++num_sent;
    const int64_t remaining = last - s - 1;
    if (remaining == 0 || (seq_len >= target && num_sent >= min_num_sent && remaining > 1)) {
      rows.push_back(start);
      rows.push_back(s + 1);
      rows.push_back(target);
      start = s + 1;
      seq_len = 0;
      num_sent = 0;
    }
  }
}

// Whether document [first, last) is used; counts the reason when it is not.
bool document_eligible(const int32_t* sizes, int64_t first, int64_t last, int64_t min_num_sent,
                       int64_t long_sentence_len, MappingStats& stats) {
  const int64_t n = last - first;
  if (n == 0 || n < min_num_sent) {
    ++(n == 0 ? stats.empty_docs : stats.short_docs);
    return false;
  }
  for (int64_t s = first; s < last; ++s) {
    if (sizes[s] > long_sentence_len) {
      ++stats.long_sentence_docs;
      return false;
    }
  }
  return true;
}

void check_arguments(const int64_t* docs, int64_t num_bounds, int64_t num_sizes, int64_t num_epochs,
                     int64_t max_num_samples, int64_t max_seq_length, double short_seq_prob,
                     int64_t min_num_sent, int64_t long_sentence_len) {
  auto fail = [](const std::string& msg) { throw std::invalid_argument("build_mapping: " + msg); };
  if (num_bounds < 1) fail("docs must hold at least one boundary (documents + 1 entries)");
  for (int64_t i = 0; i < num_bounds; ++i) {
    if (docs[i] < 0 || docs[i] > num_sizes || (i > 0 && docs[i] < docs[i - 1])) {
      fail("docs[" + std::to_string(i) + "] = " + std::to_string(docs[i]) +
           " is out of order or outside [0, " + std::to_string(num_sizes) +
           "] (the number of sentences in sizes)");
    }
  }
  if (num_epochs < 1) fail("num_epochs must be >= 1, got " + std::to_string(num_epochs));
  if (max_num_samples < 0) {
    fail("max_num_samples must be >= 0, got " + std::to_string(max_num_samples));
  }
  if (max_seq_length < 2) {
    fail("max_seq_length must be >= 2 (increase --seq-length), got " +
         std::to_string(max_seq_length));
  }
  if (!(short_seq_prob >= 0.0 && short_seq_prob <= 1.0)) {
    fail("short_seq_prob must be in [0, 1] (--short-seq-prob), got " +
         std::to_string(short_seq_prob));
  }
  if (min_num_sent < 1) fail("min_num_sent must be >= 1, got " + std::to_string(min_num_sent));
  if (long_sentence_len < 1) {
    fail("long_sentence_len must be >= 1, got " + std::to_string(long_sentence_len));
  }
}

std::vector<int64_t> build_rows(const int64_t* docs, int64_t num_docs, const int32_t* sizes,
                                int64_t num_epochs, int64_t max_num_samples, int64_t max_seq_length,
                                double short_seq_prob, uint64_t seed, int64_t min_num_sent,
                                int64_t long_sentence_len, MappingStats& stats) {
  std::vector<int64_t> eligible;  // documents used in every epoch
  for (int64_t doc = 0; doc < num_docs; ++doc) {
    const bool use =
        document_eligible(sizes, docs[doc], docs[doc + 1], min_num_sent, long_sentence_len, stats);
    if (use) eligible.push_back(doc);
  }
  std::vector<int64_t> rows;
  SplitMix64 rng(seed);
  for (int64_t epoch = 0; epoch < num_epochs; ++epoch) {
    if (static_cast<int64_t>(rows.size() / 3) >= max_num_samples) break;
    for (const int64_t doc : eligible) {
      chunk_document(sizes, docs[doc], docs[doc + 1], max_seq_length, short_seq_prob,
                     min_num_sent, rng, rows);
    }
    stats.epochs = epoch + 1;
    if (rows.empty()) break;  // no eligible document: further epochs would add nothing
  }
  // Fisher-Yates shuffle of the rows with an independent stream.
  SplitMix64 shuffle_rng(seed + 1);
  const int64_t n = static_cast<int64_t>(rows.size() / 3);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(shuffle_rng.uniform_int(static_cast<uint64_t>(i + 1)));
    for (int k = 0; k < 3; ++k) std::swap(rows[3 * i + k], rows[3 * j + k]);
  }
  return rows;
}

py::tuple build_mapping(py::array_t<int64_t, py::array::c_style | py::array::forcecast> docs,
                        py::array_t<int32_t, py::array::c_style | py::array::forcecast> sizes,
                        int64_t num_epochs, int64_t max_num_samples, int64_t max_seq_length,
                        double short_seq_prob, int64_t seed, int64_t min_num_sent,
                        int64_t long_sentence_len) {
  if (docs.ndim() != 1 || sizes.ndim() != 1) {
    throw std::invalid_argument("build_mapping: docs and sizes must be 1-D arrays");
  }
  const int64_t* docs_ptr = docs.data();
  const int32_t* sizes_ptr = sizes.data();
  const int64_t num_bounds = docs.shape(0);
  check_arguments(docs_ptr, num_bounds, sizes.shape(0), num_epochs, max_num_samples,
                  max_seq_length, short_seq_prob, min_num_sent, long_sentence_len);
  MappingStats stats;
  std::vector<int64_t> rows;
  {
    py::gil_scoped_release release;
    rows = build_rows(docs_ptr, num_bounds - 1, sizes_ptr, num_epochs, max_num_samples,
                      max_seq_length, short_seq_prob, static_cast<uint64_t>(seed), min_num_sent,
                      long_sentence_len, stats);
  }
  const py::ssize_t n = static_cast<py::ssize_t>(rows.size() / 3);
  py::array_t<int64_t> mapping({n, static_cast<py::ssize_t>(3)});
  if (n > 0) std::memcpy(mapping.mutable_data(), rows.data(), rows.size() * sizeof(int64_t));
  py::dict info;
  info["empty_docs"] = stats.empty_docs;
  info["short_docs"] = stats.short_docs;
  info["long_sentence_docs"] = stats.long_sentence_docs;
  info["epochs"] = stats.epochs;
  return py::make_tuple(mapping, info);
}

}  // namespace

void register_bert_helpers(pybind11::module_& m) {
  m.def("build_mapping", &build_mapping, py::arg("docs"), py::arg("sizes"), py::arg("num_epochs"),
        py::arg("max_num_samples"), py::arg("max_seq_length"), py::arg("short_seq_prob"),
        py::arg("seed"), py::arg("min_num_sent"), py::arg("long_sentence_len") = 512,
        "BERT sample mapping: (int64 [N, 3] rows of (first sentence, end sentence, target length), "
        "stats dict). See megatron/core/datasets/bert_helpers_ref.py for the exact semantics.");
}

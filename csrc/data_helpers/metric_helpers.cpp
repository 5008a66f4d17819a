// Curriculum-metric kernels: per-sample sums of a per-token lookup table and token bincounts over
// "token pieces", without materialising the samples' token streams; and the replay of the random
// draws that shape BERT samples (bert_segment_replay, at the end of this file).
//
// A sample is a list of pieces (CSR: piece_ptr[N + 1] into piece_start / piece_len). A piece with
// piece_start >= 0 is the token range [piece_start, piece_start + piece_len) of the flat token
// array (the memory-mapped .bin); piece_start < 0 is the literal token id -piece_start - 1 repeated
// piece_len times (special tokens such as [CLS] / [SEP] that are not in the .bin).
//
// Sums are accumulated sequentially in double, in sample token order, starting from 0.0 (no
// reassociation), so they equal the numpy reference in megatron/core/curriculum/
// metrics_kernels.py bit for bit (tests/unit/test_curriculum_metrics.py checks both).
#include <pybind11/numpy.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "helpers.h"

namespace py = pybind11;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

struct Pieces {
  const int64_t* ptr;    // [N + 1]
  const int64_t* start;  // [P]
  const int64_t* len;    // [P]
  int64_t num_samples;
  int64_t num_pieces;
};

// The first token whose id is outside [0, num_ids): which sample and which id.
struct BadToken {
  bool found = false;
  int64_t sample = 0;
  int64_t id = 0;
};

Pieces checked_pieces(const I64Array& piece_ptr, const I64Array& piece_start,
                      const I64Array& piece_len, int64_t num_tokens, int64_t num_ids) {
  if (piece_ptr.ndim() != 1 || piece_start.ndim() != 1 || piece_len.ndim() != 1) {
    throw py::value_error("token pieces: piece_ptr, piece_start and piece_len must be 1-D");
  }
  Pieces p{piece_ptr.data(), piece_start.data(), piece_len.data(), piece_ptr.shape(0) - 1,
           piece_start.shape(0)};
  if (p.num_samples < 0 || piece_len.shape(0) != p.num_pieces) {
    throw py::value_error("token pieces: piece_ptr needs N + 1 entries and piece_len as many as "
                          "piece_start (" + std::to_string(p.num_pieces) + "), got " +
                          std::to_string(piece_ptr.shape(0)) + " and " +
                          std::to_string(piece_len.shape(0)));
  }
  if (p.ptr[0] != 0 || p.ptr[p.num_samples] != p.num_pieces) {
    throw py::value_error("token pieces: piece_ptr must start at 0 and end at the number of "
                          "pieces (" + std::to_string(p.num_pieces) + ")");
  }
  for (int64_t s = 0; s < p.num_samples; ++s) {
    if (p.ptr[s + 1] < p.ptr[s]) {
      throw py::value_error("token pieces: piece_ptr decreases at sample " + std::to_string(s));
    }
  }
  for (int64_t k = 0; k < p.num_pieces; ++k) {
    const int64_t start = p.start[k], len = p.len[k];
    const bool bad_range = start >= 0 && (len < 0 || start > num_tokens - len);
    const bool bad_literal = start < 0 && (len < 0 || -(start + 1) >= num_ids);
    if (bad_range || bad_literal) {
      throw py::value_error("token pieces: piece " + std::to_string(k) + " (start " +
                            std::to_string(start) + ", length " + std::to_string(len) +
                            ") is outside the " + std::to_string(num_tokens) +
                            " tokens or the " + std::to_string(num_ids) + " token ids");
    }
  }
  return p;
}

// Calls visit(sample, id) for every token of every sample, in order; stops at the first id
// outside [0, num_ids) and records it.
template <typename T, typename Visit>
void walk_tokens(const T* tokens, const Pieces& p, int64_t num_ids, BadToken* bad, Visit visit) {
  for (int64_t s = 0; s < p.num_samples; ++s) {
    for (int64_t k = p.ptr[s]; k < p.ptr[s + 1]; ++k) {
      const int64_t start = p.start[k], len = p.len[k];
      if (start < 0) {
        const int64_t id = -(start + 1);  // checked against num_ids already
        for (int64_t j = 0; j < len; ++j) visit(s, id);
        continue;
      }
      const T* t = tokens + start;
      for (int64_t j = 0; j < len; ++j) {
        const int64_t id = static_cast<int64_t>(t[j]);
        if (id < 0 || id >= num_ids) {
          bad->found = true;
          bad->sample = s;
          bad->id = id;
          return;
        }
        visit(s, id);
      }
    }
  }
}

void raise_bad_token(const BadToken& bad, int64_t num_ids, const char* what) {
  throw py::value_error(std::string(what) + ": sample " + std::to_string(bad.sample) +
                        " holds token id " + std::to_string(bad.id) + ", outside the table of " +
                        std::to_string(num_ids) + " ids (is the vocabulary size right?)");
}

// Dispatches on the dtype of the flat token array (any 1-D C-contiguous integer array).
template <typename Fn>
void with_tokens(const py::array& tokens, Fn fn) {
  if (tokens.ndim() != 1 || !(tokens.flags() & py::array::c_style)) {
    throw py::value_error("token pieces: tokens must be a 1-D C-contiguous integer array");
  }
  const char kind = tokens.dtype().kind();
  const auto size = tokens.itemsize();
  const void* data = tokens.data();
  if (kind == 'u' && size == 1) return fn(static_cast<const uint8_t*>(data));
  if (kind == 'u' && size == 2) return fn(static_cast<const uint16_t*>(data));
  if (kind == 'u' && size == 4) return fn(static_cast<const uint32_t*>(data));
  if (kind == 'i' && size == 1) return fn(static_cast<const int8_t*>(data));
  if (kind == 'i' && size == 2) return fn(static_cast<const int16_t*>(data));
  if (kind == 'i' && size == 4) return fn(static_cast<const int32_t*>(data));
  if (kind == 'i' && size == 8) return fn(static_cast<const int64_t*>(data));
  throw py::type_error("token pieces: tokens must be uint8/16/32 or int8/16/32/64, got " +
                       std::string(py::str(tokens.dtype())));
}

// Literal pieces rewritten to point into a scratch array of the token type, so that every piece
// is a plain run of tokens (ids that do not fit the token type keep the simple path).
template <typename T>
struct Runs {
  std::vector<const T*> base;  // [P] first token of each piece
  std::vector<T> scratch;      // the literal tokens
  bool ok = true;              // false: a literal id does not fit T
};

template <typename T>
Runs<T> make_runs(const T* tokens, const Pieces& p) {
  Runs<T> r;
  int64_t literal_tokens = 0;
  for (int64_t k = 0; k < p.num_pieces; ++k) {
    if (p.start[k] < 0) {
      const int64_t id = -(p.start[k] + 1);
      if (static_cast<int64_t>(static_cast<T>(id)) != id) r.ok = false;
      literal_tokens += p.len[k];
    }
  }
  if (!r.ok) return r;
  r.scratch.resize(literal_tokens);
  r.base.resize(p.num_pieces);
  int64_t used = 0;
  for (int64_t k = 0; k < p.num_pieces; ++k) {
    if (p.start[k] >= 0) {
      r.base[k] = tokens + p.start[k];
      continue;
    }
    r.base[k] = r.scratch.data() + used;
    for (int64_t j = 0; j < p.len[k]; ++j) r.scratch[used++] = static_cast<T>(-(p.start[k] + 1));
  }
  return r;
}

// One sample being summed: its current run and the pieces left.
template <typename T>
struct Lane {
  int64_t sample = -1;  // -1: idle
  int64_t piece = 0, piece_end = 0;
  const T* cur = nullptr;
  int64_t left = 0;  // tokens left in the current run
  double acc = 0.0;
};

// Moves a lane to its next non-empty run; false when its sample is finished.
template <typename T>
bool next_run(Lane<T>& l, const Pieces& p, const Runs<T>& r) {
  while (l.left == 0) {
    if (l.piece == l.piece_end) return false;
    l.cur = r.base[l.piece];
    l.left = p.len[l.piece];
    ++l.piece;
  }
  return true;
}

// Sums W samples at once, each with its own accumulator in its own token order, so the W
// dependency chains of floating-point adds overlap (one chain alone is latency-bound). Ids outside
// the table read entry 0 and set `bad`; the caller then locates them with the checked walk.
template <typename T>
bool interleaved_sums(const Pieces& p, const Runs<T>& r, const double* tab, int64_t num_ids,
                      double* sums) {
  constexpr int W = 4;
  Lane<T> lanes[W];
  int64_t next_sample = 0;
  bool bad = false;
  auto refill = [&](Lane<T>& l) {
    while (next_sample < p.num_samples) {
      l = Lane<T>();
      l.sample = next_sample++;
      l.piece = p.ptr[l.sample];
      l.piece_end = p.ptr[l.sample + 1];
      if (next_run(l, p, r)) return;
      sums[l.sample] = 0.0;  // an empty sample
    }
    l.sample = -1;
  };
  for (auto& l : lanes) refill(l);
  const auto limit = static_cast<uint64_t>(num_ids);
  while (true) {
    int64_t n = INT64_MAX;
    for (auto& l : lanes) n = (l.sample >= 0 && l.left < n) ? l.left : n;
    bool all_busy = true;
    for (auto& l : lanes) all_busy = all_busy && l.sample >= 0;
    if (!all_busy) break;
    for (int64_t j = 0; j < n; ++j) {
      for (int w = 0; w < W; ++w) {
        const uint64_t id = static_cast<uint64_t>(static_cast<int64_t>(lanes[w].cur[j]));
        bad |= id >= limit;
        lanes[w].acc += tab[id < limit ? id : 0];
      }
    }
    for (auto& l : lanes) {
      l.cur += n;
      l.left -= n;
      if (!next_run(l, p, r)) {
        sums[l.sample] = l.acc;
        refill(l);
      }
    }
  }
  for (auto& l : lanes) {  // fewer than W samples left: finish them one at a time
    while (l.sample >= 0) {
      for (int64_t j = 0; j < l.left; ++j) {
        const uint64_t id = static_cast<uint64_t>(static_cast<int64_t>(l.cur[j]));
        bad |= id >= limit;
        l.acc += tab[id < limit ? id : 0];
      }
      l.left = 0;
      if (!next_run(l, p, r)) {
        sums[l.sample] = l.acc;
        refill(l);
      }
    }
  }
  return !bad;
}

py::array_t<double> token_table_sums(const py::array& tokens, const I64Array& piece_ptr,
                                     const I64Array& piece_start, const I64Array& piece_len,
                                     const F64Array& table) {
  if (table.ndim() != 1) throw py::value_error("token_table_sums: table must be 1-D");
  const int64_t num_ids = table.shape(0);
  const Pieces p = checked_pieces(piece_ptr, piece_start, piece_len, tokens.shape(0), num_ids);
  py::array_t<double> out(p.num_samples);
  double* sums = out.mutable_data();
  const double* tab = table.data();
  BadToken bad;
  with_tokens(tokens, [&](auto* toks) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(toks)>>;
    py::gil_scoped_release release;
    if (num_ids > 0) {
      const Runs<T> runs = make_runs(toks, p);
      if (runs.ok && interleaved_sums(p, runs, tab, num_ids, sums)) return;
    }
    for (int64_t s = 0; s < p.num_samples; ++s) sums[s] = 0.0;
    walk_tokens(toks, p, num_ids, &bad, [&](int64_t s, int64_t id) { sums[s] += tab[id]; });
  });
  if (bad.found) raise_bad_token(bad, num_ids, "token_table_sums");
  return out;
}

py::array_t<int64_t> token_bincount(const py::array& tokens, const I64Array& piece_ptr,
                                    const I64Array& piece_start, const I64Array& piece_len,
                                    int64_t num_ids) {
  if (num_ids < 0) throw py::value_error("token_bincount: num_ids must be >= 0");
  const Pieces p = checked_pieces(piece_ptr, piece_start, piece_len, tokens.shape(0), num_ids);
  py::array_t<int64_t> out(num_ids);
  int64_t* counts = out.mutable_data();
  BadToken bad;
  with_tokens(tokens, [&](auto* toks) {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < num_ids; ++i) counts[i] = 0;
    walk_tokens(toks, p, num_ids, &bad, [&](int64_t, int64_t id) { ++counts[id]; });
  });
  if (bad.found) raise_bad_token(bad, num_ids, "token_bincount");
  return out;
}


// ------------------------------------------------------------------------------------------------
// BERT sample replay: the random draws of BertDataset.__getitem__ (numpy's legacy RandomState,
// seeded per sample) that decide each sample's segments, without reading tokens. The Python
// reference is BertSampleSource._replay_reference in
// megatron/core/datasets/bert_sample_source.py (which calls numpy itself);
// tests/unit/test_curriculum_analysis.py checks both agree.

// numpy's legacy RandomState: MT19937 seeded with one 32-bit integer, 32-bit draws tempered, and
// doubles of 53 random bits from two draws.
class LegacyRandomState {
 public:
  explicit LegacyRandomState(uint32_t seed) {
    uint32_t s = seed;
    for (int i = 0; i < kN; ++i) {  // Knuth's multiplier, as the MT reference seeding
      key_[i] = s;
      s = 1812433253u * (s ^ (s >> 30)) + static_cast<uint32_t>(i + 1);
    }
    pos_ = kN;
  }

  uint32_t next32() {
    if (pos_ == kN) regenerate();
    uint32_t y = key_[pos_++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
  }

  double next_double() {
    const int32_t a = static_cast<int32_t>(next32() >> 5), b = static_cast<int32_t>(next32() >> 6);
    return (a * 67108864.0 + b) / 9007199254740992.0;
  }

  // randint(low, high) for high - low - 1 < 2^32: masked rejection; no draw for one value.
  int64_t randint(int64_t low, int64_t high) {
    const uint64_t range = static_cast<uint64_t>(high - low - 1);
    if (range == 0) return low;
    if (range == 0xffffffffull) return low + next32();
    uint64_t mask = range;
    for (int shift = 1; shift < 64; shift <<= 1) mask |= mask >> shift;
    uint32_t value;
    while ((value = next32() & static_cast<uint32_t>(mask)) > range) {
    }
    return low + value;
  }

  // binomial(n, 0.5): inversion while n * p <= 30, else BTPE (Kachitvichyanukul & Schmeiser),
  // the two algorithms numpy's legacy generator uses, with its constants and steps.
  int64_t binomial_half(int64_t n) {
    if (n == 0) return 0;
    return 0.5 * n <= 30.0 ? binomial_inversion(n, 0.5) : binomial_btpe(n, 0.5);
  }

 private:
  static constexpr int kN = 624, kM = 397;

  void regenerate() {
    auto twist = [](uint32_t upper, uint32_t lower, uint32_t far) {
      const uint32_t y = (upper & 0x80000000u) | (lower & 0x7fffffffu);
      return far ^ (y >> 1) ^ ((0u - (y & 1u)) & 0x9908b0dfu);
    };
    int i = 0;
    for (; i < kN - kM; ++i) key_[i] = twist(key_[i], key_[i + 1], key_[i + kM]);
    for (; i < kN - 1; ++i) key_[i] = twist(key_[i], key_[i + 1], key_[i + kM - kN]);
    key_[kN - 1] = twist(key_[kN - 1], key_[0], key_[kM - 1]);
    pos_ = 0;
  }

  int64_t binomial_inversion(int64_t n, double p) {
    const double q = 1.0 - p;
    const double qn = std::exp(n * std::log(q));
    const double np = n * p;
    const double limit = std::min(static_cast<double>(n), np + 10.0 * std::sqrt(np * q + 1));
    const int64_t bound = static_cast<int64_t>(limit);
    int64_t x = 0;
    double px = qn, u = next_double();
    while (u > px) {
      ++x;
      if (x > bound) {
        x = 0;
        px = qn;
        u = next_double();
      } else {
        u -= px;
        px = ((n - x + 1) * p * px) / (x * q);
      }
    }
    return x;
  }

  int64_t binomial_btpe(int64_t n, double p);
  static bool btpe_accepts(int64_t n, double r, double q, int64_t m, double xm, double nrq,
                           int64_t y, double v);

  uint32_t key_[kN];
  int pos_;
};

// BTPE with numpy's setup constants and steps (numbered as in the paper).
int64_t LegacyRandomState::binomial_btpe(int64_t n, double p) {
  const double r = std::min(p, 1.0 - p), q = 1.0 - r;
  const double fm = n * r + r;
  const int64_t m = static_cast<int64_t>(std::floor(fm));
  const double p1 = std::floor(2.195 * std::sqrt(n * r * q) - 4.6 * q) + 0.5;
  const double xm = m + 0.5, xl = xm - p1, xr = xm + p1;
  const double c = 0.134 + 20.5 / (15.3 + m);
  double a = (fm - xl) / (fm - xl * r);
  const double laml = a * (1.0 + a / 2.0);
  a = (xr - fm) / (xr * q);
  const double lamr = a * (1.0 + a / 2.0);
  const double p2 = p1 * (1.0 + 2.0 * c), p3 = p2 + c / laml, p4 = p3 + c / lamr;
  const double nrq = n * r * q;
  while (true) {
    const double u = next_double() * p4;
    double v = next_double();
    int64_t y;
    if (u <= p1) {  // step 10: triangular region, accepted at once
      y = static_cast<int64_t>(std::floor(xm - p1 * v + u));
      return p > 0.5 ? n - y : y;
    }
    if (u <= p2) {  // step 20: parallelograms
      const double x = xl + (u - p1) / c;
      v = v * c + 1.0 - std::fabs(m - x + 0.5) / p1;
      if (v > 1.0) continue;
      y = static_cast<int64_t>(std::floor(x));
    } else if (u <= p3) {  // step 30: left exponential tail
      y = static_cast<int64_t>(std::floor(xl + std::log(v) / laml));
      if (y < 0 || v == 0.0) continue;
      v = v * (u - p2) * laml;
    } else {  // step 40: right exponential tail
      y = static_cast<int64_t>(std::floor(xr - std::log(v) / lamr));
      if (y > n || v == 0.0) continue;
      v = v * (u - p3) * lamr;
    }
    if (btpe_accepts(n, r, q, m, xm, nrq, y, v)) return p > 0.5 ? n - y : y;
  }
}

// Steps 50-52 of BTPE: whether candidate y with uniform v is accepted.
bool LegacyRandomState::btpe_accepts(int64_t n, double r, double q, int64_t m, double xm,
                                     double nrq, int64_t y, double v) {
  const int64_t k = y > m ? y - m : m - y;
  if (!(k > 20 && k < nrq / 2.0 - 1)) {  // step 50: f(y) / f(m) by recursion
    const double s = r / q, a = s * (n + 1);
    double f = 1.0;
    if (m < y) {
      for (int64_t i = m + 1; i <= y; ++i) f *= (a / i - s);
    } else if (m > y) {
      for (int64_t i = y + 1; i <= m; ++i) f /= (a / i - s);
    }
    return v <= f;
  }
  // step 52: squeeze on log(v), then the bound from Stirling's formula
  const double rho = (k / nrq) * ((k * (k / 3.0 + 0.625) + 0.16666666666666666) / nrq + 0.5);
  const double t = -k * k / (2 * nrq);
  const double log_v = std::log(v);
  if (log_v < t - rho) return true;
  if (log_v > t + rho) return false;
  const double x1 = y + 1, f1 = m + 1, z = n + 1 - m, w = n - y + 1;
  auto stirling = [](double d) {
    const double d2 = d * d;
    return (13680. - (462. - (132. - (99. - 140. / d2) / d2) / d2) / d2) / d / 166320.;
  };
  const double bound = xm * std::log(f1 / x1) + (n - m + 0.5) * std::log(z / w) +
                       (y - m) * std::log(w * r / (x1 * q)) + stirling(f1) + stirling(z) +
                       stirling(x1) + stirling(w);
  return log_v <= bound;
}


// The segments of BERT samples as BertDataset.__getitem__ draws them (see BertSampleSource).
// rows: int64 [n, 3] mapping rows (first sentence, end sentence, target tokens); indices: int64
// [n] dataset indices (the per-sample seed is (seed + index) mod 2^32); cumulative: int64 [S + 1]
// tokens before each sentence. Returns int64 [n, 6]: (first sentence, front cut, kept tokens) of
// segment A, then of segment B (front cut 0 when nothing is kept).
py::array_t<int64_t> bert_segment_replay(const I64Array& rows, const I64Array& indices,
                                         const I64Array& cumulative, int64_t seed, bool head) {
  if (rows.ndim() != 2 || rows.shape(1) != 3 || indices.ndim() != 1 ||
      indices.shape(0) != rows.shape(0) || cumulative.ndim() != 1) {
    throw py::value_error("bert_segment_replay: need rows [n, 3], indices [n], cumulative [S + 1]");
  }
  const int64_t n = rows.shape(0), sentences = cumulative.shape(0) - 1;
  const int64_t* row = rows.data();
  const int64_t* idx = indices.data();
  const int64_t* cum = cumulative.data();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = row[3 * i], end = row[3 * i + 1];
    if (start < 0 || end > sentences || end - start < (head ? 2 : 1) || row[3 * i + 2] < 0) {
      throw py::value_error("bert_segment_replay: mapping row " + std::to_string(i) + " (" +
                            std::to_string(start) + ", " + std::to_string(end) +
                            ") does not fit " + std::to_string(sentences) + " sentences" +
                            (head ? " with >= 2 per sample" : ""));
    }
  }
  py::array_t<int64_t> result({n, static_cast<int64_t>(6)});  // [n, 6]
  int64_t* out = result.mutable_data();
  py::gil_scoped_release release;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = row[3 * i], end = row[3 * i + 1], target = row[3 * i + 2];
    const uint64_t sample_seed = static_cast<uint64_t>(seed + idx[i]) & 0xffffffffull;
    LegacyRandomState rng(static_cast<uint32_t>(sample_seed));
    int64_t first_a = start, first_b = end, split_tokens = cum[end];
    if (head) {
      first_b = rng.randint(1, end - start) + start;
      split_tokens = cum[first_b];
    }
    int64_t la = split_tokens - cum[start], lb = cum[end] - split_tokens;
    if (head && rng.next_double() < 0.5) {  // sentence-order prediction: segments swapped
      std::swap(first_a, first_b);
      std::swap(la, lb);
    }
    int64_t cut_a = 0, cut_b = 0;
    const int64_t excess = la + lb - target;
    if (excess > 0) {  // truncate_seq_pair: the longer segment first, then both alternately
      if (la > lb) {
        cut_a = std::min(excess, la - lb);
      } else {
        cut_b = std::min(excess, lb - la);
      }
      const int64_t rest = excess - cut_a - cut_b;
      cut_b += (rest + 1) / 2;
      cut_a += rest / 2;
    }
    const int64_t front_a = cut_a ? rng.binomial_half(cut_a) : 0;
    const int64_t front_b = cut_b ? rng.binomial_half(cut_b) : 0;
    const int64_t kept_a = la - cut_a, kept_b = lb - cut_b;
    int64_t* o = out + 6 * i;
    o[0] = first_a;
    o[1] = kept_a > 0 ? front_a : 0;
    o[2] = kept_a;
    o[3] = first_b;
    o[4] = kept_b > 0 ? front_b : 0;
    o[5] = kept_b;
  }
  return result;
}

}  // namespace

void register_metric_helpers(py::module_& m) {
  m.def("token_table_sums", &token_table_sums, py::arg("tokens"), py::arg("piece_ptr"),
        py::arg("piece_start"), py::arg("piece_len"), py::arg("table"),
        "float64 [N]: for each sample, table[id] summed over its tokens in order (sequential "
        "double accumulation from 0.0).\n\ntokens: 1-D integer array; piece_ptr int64 [N + 1]; "
        "piece_start / piece_len int64 [P] (start < 0: literal id -start - 1); table float64 "
        "[V]. Raises ValueError for a token id outside [0, V).");
  m.def("token_bincount", &token_bincount, py::arg("tokens"), py::arg("piece_ptr"),
        py::arg("piece_start"), py::arg("piece_len"), py::arg("num_ids"),
        "int64 [num_ids]: occurrences of each token id over all pieces of all samples.");
  m.def("bert_segment_replay", &bert_segment_replay, py::arg("rows"), py::arg("indices"),
        py::arg("cumulative"), py::arg("seed"), py::arg("head"),
        "int64 [n, 6]: (first sentence, front cut, kept tokens) of segments A and B of BERT "
        "samples, from the random draws of BertDataset.__getitem__ (numpy's legacy "
        "RandomState seeded with (seed + index) mod 2^32) without reading tokens.");
}

"""Curriculum difficulty metrics: built-in ones, user callables, and a registry by name.

A metric scores samples. Its *type* is DeepSpeed's:

- `single_value_per_sample`: one number per sample (integer, or float for user metrics);
- `accumulate_value_over_samples`: a fixed-shape array summed over all samples (e.g. a
  token-frequency bincount).

The samples a metric sees are 1-D integer arrays of token ids **without padding**: for GPT the
sample's `text` (sequence_length + 1 tokens, what `GPTDataset[i]["text"]` holds); for BERT the
tokens `[CLS] A [SEP] B [SEP]` of the sample before masking (`[CLS] A [SEP]` without the binary
head), i.e. the non-pad positions of `BertDataset[i]["text"]` with masked positions restored.

Built-in metrics (DeepSpeed Data Efficiency / Megatron-DeepSpeed definitions):

- `seqlen`: tokens in the sample (the non-pad tokens; constant sequence_length + 1 for GPT).
- `total_vocab_freq` (accumulate): int64 [vocab_size] bincount of the token ids of all samples.
- `vocab_rarity`: with frequencies f (int64 [V]; zero counts set to 1) and p = f / sum(f), the
  sample's sum over its tokens of -ln p(token), accumulated sequentially in float64 in token order
  and truncated to int64 (DeepSpeed: `torch.sum(...).to(torch.long)` of the float64 table
  `-log(f / sum(f))`; the sum of f is taken after the zeros are replaced).
- `seqlen_vocab_rarity`: `seqlen * C + vocab_rarity` with
  `C = 10 ** (ceil(log(max_sample_tokens * max(-ln p), 10)) + 1)` so that seqlen dominates
  (max_sample_tokens is --seq-length for BERT, --seq-length + 1 for GPT).

The frequencies come from the `.token_counts.npy` files `tools/preprocess_data.py` writes beside
each dataset (`corpus_token_counts`; summed over every prefix of a blend, recomputed from the
`.bin` when a file is missing or has another vocabulary size), or from an explicit file
(`CurriculumMetricsConfig.token_counts_path`, e.g. a `total_vocab_freq_metric_value` analysis
output, which is what DeepSpeed uses).

User metrics are given as `"name=package.module:function"` (optionally with a third field
`:single_value_per_sample` or `:accumulate_value_over_samples`; the default is the function's
`metric_type` attribute, else single value). The function is called with a list of samples (each
an int64 numpy array, as above) and must return, for a single-value metric, one int or float per
sample (a list or 1-D array of the batch's length); for an accumulate metric, an array of the
same shape for every batch (summed over batches). Example::

    # my_metrics.py
    import numpy as np
    def distinct_tokens(samples):
        return [np.unique(s).size for s in samples]

    build_metric("distinct=my_metrics:distinct_tokens", context)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import math
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from megatron.core.curriculum.metrics_kernels import token_bincount, token_table_sums
from megatron.core.datasets.indexed_dataset import IndexedDataset, data_file_path
from megatron.core.datasets.token_counts import load_token_counts, token_counts_path
from megatron.core.datasets.token_pieces import TokenPieces
from megatron.core.utils import load_function

logger = logging.getLogger(__name__)

SINGLE_VALUE = "single_value_per_sample"
"""One value per sample."""

ACCUMULATE = "accumulate_value_over_samples"
"""A fixed-shape array summed over samples."""

METRIC_TYPES = (SINGLE_VALUE, ACCUMULATE)
_TYPE_ALIASES = {"single": SINGLE_VALUE, "accumulate": ACCUMULATE}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_COUNT_CHUNK = 1 << 24


@dataclasses.dataclass
class CurriculumMetricsConfig:
    """Curriculum metrics computed for every sample of a dataset once its index exists.

    Passed to `megatron.core.curriculum.analysis.attach_metrics(dataset, config)`, which returns
    the values and sets them as `dataset.curriculum_metric_values[name]`.
    """

    metrics: Sequence[str]
    """Metric specs: built-in names (seqlen, vocab_rarity, seqlen_vocab_rarity,
    total_vocab_freq) or "name=module:function[:type]" user metrics."""

    vocab_size: Optional[int] = None
    """Length of the token-frequency table (the tokenizer's vocab_size, unpadded). Defaults to
    the length of the token-count files, or for BERT to BertDatasetConfig.vocab_size."""

    token_counts_path: Optional[str] = None
    """Token frequencies for vocab_rarity: a `.npy` int array [vocab_size] or the prefix of an
    MMIDIDX `total_vocab_freq_metric_value` analysis output. Default: the `.token_counts.npy`
    files of the dataset prefixes (recomputed from the .bin when missing)."""

    batch_size: int = 1024
    """Samples per call of a user metric function."""

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = [self.metrics]
        self.metrics = list(self.metrics)
        if not self.metrics:
            raise ValueError("CurriculumMetricsConfig.metrics is empty; name at least one metric")
        names = [parse_metric_spec(s).name for s in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"curriculum metrics named more than once: {duplicates}")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ValueError(
                f"CurriculumMetricsConfig.vocab_size must be > 0, got {self.vocab_size}"
            )
        if self.batch_size <= 0:
            raise ValueError(
                f"CurriculumMetricsConfig.batch_size must be > 0, got {self.batch_size}"
            )

    @classmethod
    def coerce(cls, value: Any) -> Optional["CurriculumMetricsConfig"]:
        """None, a config, a metric spec string or a list of specs -> config (or None)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, (str, list, tuple)):
            return cls(metrics=list([value] if isinstance(value, str) else value))
        raise TypeError(
            f"curriculum_metrics must be a CurriculumMetricsConfig or a list of metric names, got "
            f"{type(value).__name__}"
        )


@dataclasses.dataclass
class MetricContext:
    """What the built-in metrics need to know about the samples they score.

    Attributes:
        max_sample_tokens: most tokens a sample can have (seqlen_vocab_rarity's coefficient).
        vocab_size: number of token ids (total_vocab_freq's length).
        token_counts: int64 [V] token frequencies for the rarity metrics (None: not available).
        token_counts_source: where token_counts came from (logged and stored with results).
    """

    max_sample_tokens: int
    vocab_size: Optional[int] = None
    token_counts: Optional[np.ndarray] = None
    token_counts_source: str = ""


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A parsed metric spec: a name, plus a "module:function" target for user metrics."""

    name: str
    target: Optional[str] = None
    metric_type: Optional[str] = None


class Metric:
    """A difficulty metric.

    Subclasses implement `compute` (a list of samples -> values); built-ins also implement
    `compute_pieces`, which scores `TokenPieces` without materialising tokens.
    """

    name: str = ""
    metric_type: str = SINGLE_VALUE
    lengths_only: bool = False
    """True when the values depend only on each sample's length (`compute_lengths`)."""

    def compute(self, samples: Sequence[np.ndarray]) -> np.ndarray:
        """Values of a batch of samples: [len(samples)] (single value) or the summed array."""
        raise NotImplementedError

    def compute_pieces(self, pieces: TokenPieces) -> np.ndarray:
        """`compute` of the samples described by `pieces`."""
        return self.compute(pieces.materialize())

    def describe(self) -> Dict[str, Any]:
        """JSON description of everything the values depend on (cache keys, fingerprints)."""
        return {"name": self.name, "metric_type": self.metric_type, "class": type(self).__name__}


class SeqlenMetric(Metric):
    """Tokens per sample."""

    def __init__(self, name: str = "seqlen"):
        self.name = name

    lengths_only = True

    def compute(self, samples):
        return np.array([np.asarray(s).size for s in samples], dtype=np.int64)

    def compute_pieces(self, pieces):
        return pieces.lengths()

    def compute_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """The values from the samples' lengths alone."""
        return np.asarray(lengths, dtype=np.int64)


class TotalVocabFreqMetric(Metric):
    """int64 [vocab_size] bincount of the token ids of all samples (accumulate)."""

    metric_type = ACCUMULATE

    def __init__(self, vocab_size: int, name: str = "total_vocab_freq"):
        self.name, self.vocab_size = name, int(vocab_size)

    def compute(self, samples):
        return self.compute_pieces(TokenPieces.from_samples(samples))

    def compute_pieces(self, pieces):
        return token_bincount(pieces, self.vocab_size)

    def describe(self):
        return {**super().describe(), "vocab_size": self.vocab_size}


class VocabRarityMetric(Metric):
    """Sum of -ln p(token) over the sample, truncated to int64 (see module docstring)."""

    def __init__(self, token_counts: np.ndarray, name: str = "vocab_rarity", source: str = ""):
        self.name = name
        self.table = vocab_rarity_table(token_counts)
        self.counts_md5 = hashlib.md5(np.asarray(token_counts, np.int64).tobytes()).hexdigest()
        self.source = source

    def compute(self, samples):
        return self.compute_pieces(TokenPieces.from_samples(samples))

    def compute_pieces(self, pieces):
        return token_table_sums(pieces, self.table).astype(np.int64)  # truncation, as .to(long)

    def describe(self):
        return {
            **super().describe(),
            "vocab_size": int(self.table.size),
            "counts_md5": self.counts_md5,
        }


class SeqlenVocabRarityMetric(VocabRarityMetric):
    """seqlen * coefficient + vocab_rarity (seqlen-major order)."""

    def __init__(self, token_counts, max_sample_tokens: int, name="seqlen_vocab_rarity", source=""):
        super().__init__(token_counts, name, source)
        self.max_sample_tokens = int(max_sample_tokens)
        self.coefficient = seqlen_coefficient(self.max_sample_tokens, self.table)

    def compute_pieces(self, pieces):
        return pieces.lengths() * self.coefficient + super().compute_pieces(pieces)

    def describe(self):
        return {**super().describe(), "coefficient": self.coefficient}


class CallableMetric(Metric):
    """A user function on a batch of samples (see the module docstring for the contract)."""

    def __init__(self, name: str, function: Callable, metric_type: str, target: str = ""):
        self.name, self.function, self.metric_type, self.target = (
            name,
            function,
            metric_type,
            target,
        )
        self._shape: Optional[Tuple[int, ...]] = None

    def compute(self, samples):
        try:
            result = self.function(list(samples))
        except Exception as exc:
            raise RuntimeError(
                f"curriculum metric {self.name} ({self.target}) failed on a batch of "
                f"{len(samples)} samples: {type(exc).__name__}: {exc}"
            ) from exc
        values = _as_numeric_array(result, f"metric {self.name} ({self.target})")
        if self.metric_type == SINGLE_VALUE:
            if values.shape != (len(samples),):
                raise ValueError(
                    f"metric {self.name} ({self.target}) returned shape {values.shape} for "
                    f"{len(samples)} samples; a single_value_per_sample metric returns one value "
                    "per sample"
                )
        elif self._shape is None:
            self._shape = values.shape
        elif values.shape != self._shape:
            raise ValueError(
                f"metric {self.name} ({self.target}) returned shape {values.shape} after "
                f"{self._shape}; an accumulate_value_over_samples metric keeps one shape"
            )
        return values

    def describe(self):
        return {**super().describe(), "target": self.target}


def _as_numeric_array(result: Any, what: str) -> np.ndarray:
    if hasattr(result, "detach"):  # torch tensors
        result = result.detach().cpu().numpy()
    values = np.asarray(result)
    if values.dtype == bool:
        values = values.astype(np.int64)
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{what} returned {values.dtype} values; return ints or floats")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{what} returned NaN or infinite values")
        return values.astype(np.float64)
    if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what} returned integers above the int64 range")
    return values.astype(np.int64)


def vocab_rarity_table(token_counts: np.ndarray) -> np.ndarray:
    """float64 [V]: -ln(f / sum(f)) with zero counts replaced by 1 first (DeepSpeed's table)."""
    counts = np.array(token_counts, dtype=np.int64)  # a copy
    if counts.ndim != 1 or counts.size == 0 or counts.min() < 0:
        raise ValueError(
            f"token counts must be a non-empty 1-D array of counts >= 0, got shape {counts.shape}"
        )
    counts[counts == 0] = 1
    return np.log(counts / counts.sum()) * -1.0


def seqlen_coefficient(max_sample_tokens: int, table: np.ndarray) -> int:
    """10 ** (ceil(log10(max_sample_tokens * max rarity)) + 1): seqlen dominates the rarity."""
    max_rarity = max_sample_tokens * float(np.max(table))
    exponent = math.ceil(math.log(max(max_rarity, 1.0), 10)) + 1  # math.log(x, 10) as upstream
    return int(10**exponent)


BUILTIN_METRICS: Dict[str, str] = {
    "seqlen": SINGLE_VALUE,
    "total_vocab_freq": ACCUMULATE,
    "vocab_rarity": SINGLE_VALUE,
    "seqlen_vocab_rarity": SINGLE_VALUE,
}
"""Built-in metric names and their types."""

NEEDS_TOKEN_COUNTS = ("vocab_rarity", "seqlen_vocab_rarity")
"""Built-ins that need token frequencies."""


def parse_metric_spec(spec: Union[str, MetricSpec]) -> MetricSpec:
    """Parse "name", "name=module:function[:type]" or "module:function[:type]".

    Raises:
        ValueError: unknown built-in name (with the closest one), bad syntax or type.
    """
    if isinstance(spec, MetricSpec):
        return spec
    text = str(spec).strip()
    name, _, target = text.partition("=") if "=" in text else ("", "", text)
    if ":" not in target:
        name = name or target
        if not _NAME_RE.match(name) or name != target and target:
            raise ValueError(f"bad metric spec {spec!r}; use a name or name=module:function")
        if name not in BUILTIN_METRICS:
            close = difflib.get_close_matches(name, BUILTIN_METRICS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown curriculum metric {name!r}{hint}; built-ins: {sorted(BUILTIN_METRICS)}, "
                "or give a user metric as name=package.module:function"
            )
        return MetricSpec(name)
    parts = target.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ValueError(f"bad user metric {spec!r}; use name=package.module:function[:type]")
    metric_type = _TYPE_ALIASES.get(parts[2], parts[2]) if len(parts) == 3 else None
    if metric_type is not None and metric_type not in METRIC_TYPES:
        raise ValueError(f"metric {spec!r}: type {parts[2]!r} is not one of {METRIC_TYPES}")
    name = name.strip() or parts[1]
    if not _NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} may only hold letters, digits, '_', '.', '-'")
    return MetricSpec(name, f"{parts[0]}:{parts[1]}", metric_type)


def load_callable(target: str) -> Callable:
    """The function named by "package.module:function" (dots after ':' walk attributes)."""
    return load_function(target, "metric function")


def build_metric(spec: Union[str, MetricSpec], context: MetricContext) -> Metric:
    """The `Metric` of a spec (see `parse_metric_spec`) for samples described by `context`."""
    spec = parse_metric_spec(spec)
    if spec.target is not None:
        function = load_callable(spec.target)
        metric_type = spec.metric_type or getattr(function, "metric_type", SINGLE_VALUE)
        if metric_type not in METRIC_TYPES:
            raise ValueError(
                f"{spec.target}.metric_type = {metric_type!r}; use one of {METRIC_TYPES}"
            )
        return CallableMetric(spec.name, function, metric_type, spec.target)
    if spec.name == "seqlen":
        return SeqlenMetric()
    if spec.name == "total_vocab_freq":
        if context.vocab_size is None:
            raise ValueError(
                "total_vocab_freq needs the vocabulary size (--vocab-size / tokenizer)"
            )
        return TotalVocabFreqMetric(context.vocab_size)
    if context.token_counts is None:
        raise ValueError(
            f"{spec.name} needs token frequencies: run tools/preprocess_data.py (it writes "
            "<prefix>.token_counts.npy) or pass a token-count file"
        )
    if spec.name == "vocab_rarity":
        return VocabRarityMetric(context.token_counts, source=context.token_counts_source)
    return SeqlenVocabRarityMetric(
        context.token_counts, context.max_sample_tokens, source=context.token_counts_source
    )


def count_tokens(path_prefix: str, num_ids: Optional[int] = None) -> np.ndarray:
    """int64 bincount of every token of `<prefix>.bin` (read in chunks; length num_ids or max+1)."""
    dataset = IndexedDataset(path_prefix)
    if os.path.getsize(data_file_path(path_prefix)) == 0:
        return np.zeros(num_ids or 0, dtype=np.int64)
    flat = np.memmap(data_file_path(path_prefix), dtype=dataset.dtype, mode="r")
    counts = np.zeros(num_ids or 0, dtype=np.int64)
    for begin in range(0, flat.size, _COUNT_CHUNK):
        chunk = np.asarray(flat[begin : begin + _COUNT_CHUNK])
        if chunk.min() < 0 or (num_ids is not None and chunk.max() >= num_ids):
            raise ValueError(
                f"{path_prefix}.bin holds token ids in [{chunk.min()}, {chunk.max()}] outside "
                f"[0, {num_ids}); the vocabulary size does not match the data"
            )
        part = np.bincount(chunk, minlength=counts.size)
        if part.size > counts.size:
            counts = np.concatenate([counts, np.zeros(part.size - counts.size, np.int64)])
        counts += part
    return counts


def corpus_token_counts(
    prefixes: Sequence[str], vocab_size: Optional[int] = None
) -> Tuple[np.ndarray, str]:
    """Token frequencies of the corpora `prefixes` (summed) and a description of their source.

    Each prefix's `<prefix>.token_counts.npy` is used when it exists and its length matches
    `vocab_size` (any length when None); otherwise the counts are recomputed from the `.bin`.
    """
    total: Optional[np.ndarray] = None
    sources: List[str] = []
    for prefix in prefixes:
        path = token_counts_path(prefix)
        counts = None
        if os.path.isfile(path):
            try:
                counts = load_token_counts(path, vocab_size)
                sources.append(path)
            except ValueError as exc:
                logger.warning("%s; recomputing the token counts from %s.bin", exc, prefix)
        if counts is None:
            logger.warning(
                "counting the tokens of %s.bin (no usable %s); this pass repeats at every "
                "start: write the file with tools/preprocess_data.py (or merge_datasets.py)",
                prefix,
                path,
            )
            counts = count_tokens(prefix, vocab_size)
            sources.append(f"{prefix}.bin (counted)")
        if total is not None and total.size != counts.size:
            size = max(total.size, counts.size)
            total, counts = (np.pad(a, (0, size - a.size)) for a in (total, counts))
        total = counts.astype(np.int64) if total is None else total + counts
    if total is None:
        raise ValueError("corpus_token_counts needs at least one dataset prefix")
    return total, ", ".join(sources)


def load_frequency_file(path: str, vocab_size: Optional[int] = None) -> np.ndarray:
    """Token frequencies from a `.npy` file or an MMIDIDX prefix (first item, e.g. DeepSpeed's
    `total_vocab_freq_metric_value`)."""
    if path.endswith(".npy"):
        counts = np.load(path, allow_pickle=False)
    else:
        prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
        counts = np.array(IndexedDataset(prefix)[0])
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
        raise ValueError(
            f"{path}: expected a 1-D array of token counts, got {counts.dtype}{counts.shape}"
        )
    if vocab_size is not None and counts.size != vocab_size:
        raise ValueError(
            f"{path}: holds {counts.size} token counts but the vocabulary has {vocab_size} ids"
        )
    return counts.astype(np.int64)

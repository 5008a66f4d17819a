"""Curriculum learning and random-LTD in the training loop.

`DataEfficiency` turns the DeepSpeed-style `data_efficiency` config (from --deepspeed_config) into
what the loop needs at step k (the 1-based iteration):

- the shape of step k's micro-batches (`batch_shape`): a pure function of k, so every pipeline
  stage knows it without exchanging shapes;
- the batch sampler (the curriculum sampler when curriculum learning is on);
- the per-step iterator wrapper that post-processes each micro-batch (sequence-length truncation
  or reshape, BERT padding trim) and attaches the micro-batch's `RandomLTDState`;
- token accounting (curriculum-truncated and random-LTD-effective lengths), log fields, and the
  state saved in checkpoints.

The token accounting is a pure function of (config, step, global batch size), except for BERT
with curriculum learning but no seqlen_truncate metric, which trims each micro-batch to its longest
non-padding length (`tokens_depend_on_data`): there the per-step functions give the untrimmed
upper bound and `step_iterator` records each micro-batch's actual count.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron.core.curriculum.analysis import attach_metrics
from megatron.core.curriculum.config import SEQLEN_RESHAPE, SEQLEN_TRUNCATE
from megatron.core.curriculum.metrics import BUILTIN_METRICS, CurriculumMetricsConfig
from megatron.core.curriculum.pacing import curriculum_difficulties, difficulty_segments
from megatron.core.curriculum.sampler import CurriculumSampler
from megatron.core.curriculum.seqlen import (
    gpt_batch_shape_at_step,
    post_process_batch,
    seqlen_at_step,
    seqlen_mode,
)
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.deepspeed_config import DeepSpeedConfig, load_deepspeed_config
from megatron.core.random_ltd.routing import RandomLTDState, check_random_ltd_config
from megatron.core.random_ltd.schedule import (
    random_ltd_effective_seqlen,
    random_ltd_keep,
)

from .data import rank_zero_first

logger = logging.getLogger(__name__)

_POST_PROCESSING_METRICS = (SEQLEN_TRUNCATE, SEQLEN_RESHAPE)


_DESCRIPTION_FLAGS = {  # dataset description key -> the training flag that sets it
    "train_data_exact_num_epochs": "--train-data-exact-num-epochs",
    "num_samples": "--train-samples",
    "sequence_length": "--seq-length",
    "random_seed": "--seed",
}


def _flags_to_match(theirs: Dict[str, Any], ours: Dict[str, Any]) -> str:
    """The training flags (with the analysed values) that make this run's training split the
    analysed one, when only such values differ; "" when the data or the split differ."""
    differ = {k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)}
    if not differ or not differ <= set(_DESCRIPTION_FLAGS):
        return ""
    flags = []
    for key in sorted(differ):
        value = theirs.get(key)
        if value is None and key == "train_data_exact_num_epochs":
            return ""  # analysed without exact epochs: nothing to add to training
        flags.append(f"{_DESCRIPTION_FLAGS[key]} {value}" if value is not None else "")
    return " ".join(f for f in flags if f)


class DataEfficiency:
    """Curriculum learning + random-LTD of one run (both may be off).

    Args:
        ds_config: the parsed --deepspeed_config (None: everything off).
        model_type: "gpt" or "bert".
        seq_length: --seq-length.
        num_layers: --num-layers.
        sequence_parallel: whether --sequence-parallel is on (random-LTD excludes it).
        pipeline_parallel: whether PP > 1 (BERT's data-dependent padding trim is then turned off).
        seed: --seed (the data_efficiency seed drives the sampler; this one the kept tokens).
        dp_rank: data-parallel rank of this process.
        dp_size: data-parallel ranks (random-LTD numbers the rows of the whole global batch).
    """

    def __init__(
        self,
        ds_config: Optional[DeepSpeedConfig],
        model_type: str,
        seq_length: int,
        num_layers: int,
        sequence_parallel: bool,
        pipeline_parallel: bool,
        seed: int,
        dp_rank: int,
        dp_size: int = 1,
    ):
        self.ds = ds_config
        self.model_type, self.seq_length, self.num_layers = model_type, seq_length, num_layers
        self.seed, self.dp_rank, self.dp_size = seed, dp_rank, dp_size
        self.trim_padding = not pipeline_parallel
        de = ds_config.data_efficiency if ds_config is not None else None
        self.curriculum = (
            de.curriculum_learning if de is not None and de.curriculum_learning.enabled else None
        )
        self.legacy = ds_config.curriculum_learning if ds_config is not None else None
        if self.legacy is not None and not self.legacy.enabled:
            self.legacy = None
        self.ltd = de.random_ltd if de is not None and de.random_ltd.enabled else None
        self.ltd_layers = check_against_model(ds_config, seq_length, num_layers, sequence_parallel)
        if self.ltd is not None and self.ltd.random_ltd_schedule.max_value > seq_length:
            logger.warning(
                "random_ltd_schedule.max_value %d exceeds --seq-length %d: K is capped at the "
                "length",
                self.ltd.random_ltd_schedule.max_value,
                seq_length,
            )
        if ds_config is not None and seqlen_mode(ds_config)[0] == "reshape" and model_type != "gpt":
            raise ValueError(
                "the seqlen_reshape curriculum metric re-chunks GPT text; for BERT use "
                "seqlen_truncate"
            )
        self.sampler = None

    @property
    def enabled(self) -> bool:
        return self.curriculum is not None or self.legacy is not None or self.ltd is not None

    @property
    def changes_seqlen(self) -> bool:
        """Whether the model input length can differ from --seq-length."""
        return (
            self.ds is not None
            and seqlen_mode(self.ds)[0] != "none"
            and (self.curriculum is not None or self.legacy is not None)
        )

    # ---- dataset metrics -------------------------------------------------------------------
    def dataset_metric_names(self):
        """Built-in metrics the training dataset must compute while building its index (the
        schedule_based metrics whose analysis files are not there)."""
        names = []
        if self.curriculum is None:
            return names
        for name, metric in self.curriculum.curriculum_metrics.items():
            if not metric.filters_samples:
                continue
            path = metric.index_to_sample_path or ""
            if path and IndexedDataset.exists(path):
                continue
            stem = path.split("/")[-1].split("_index_to_sample")[0]
            for candidate in (name, stem):
                if candidate in BUILTIN_METRICS and candidate not in names:
                    names.append(candidate)
                    break
        return names

    # ---- per-step pure functions -----------------------------------------------------------
    def batch_shape(self, step: int, micro_batch_size: int) -> Tuple[int, int]:
        """(rows, tokens per row) of the model input of every micro-batch of step `step`."""
        if not self.changes_seqlen:
            return micro_batch_size, self.seq_length
        if self.model_type == "gpt":
            return gpt_batch_shape_at_step(self.ds, step, micro_batch_size, self.seq_length)
        length = seqlen_at_step(self.ds, step, self.seq_length, "bert", self.trim_padding)
        return micro_batch_size, self.seq_length if length is None else length

    @property
    def tokens_depend_on_data(self) -> bool:
        """Whether a step's token count depends on the data: BERT trimming each micro-batch to its
        longest non-padding length (curriculum learning without seqlen_truncate, no pipeline
        parallelism). The per-step functions then give the untrimmed upper bound."""
        if self.model_type != "bert" or not self.changes_seqlen:
            return False
        return seqlen_at_step(self.ds, 1, self.seq_length, "bert", self.trim_padding) is None

    def keep(self, step: int, length: int) -> Optional[int]:
        """Random-LTD kept tokens at `step` (capped by the current length), None when off."""
        if self.ltd is None:
            return None
        return random_ltd_keep(self.ltd.random_ltd_schedule, step, length)

    def counts(self, step: int, rows: int, length: int) -> Tuple[int, int]:
        """(tokens, layer-tokens) of `rows` rows of `length` model-input tokens at step `step`.

        Tokens use the random-LTD effective length (S * (L - n) + K * n) // L when random-LTD is
        on; layer-tokens sum over the layers the tokens each one processed."""
        k = self.keep(step, length)
        if k is None:
            return rows * length, rows * length * self.num_layers
        n = len(self.ltd_layers)
        tokens = rows * random_ltd_effective_seqlen(length, k, self.num_layers, n)
        return tokens, rows * (length * (self.num_layers - n) + k * n)

    def step_counts(
        self, step: int, global_batch_size: int, micro_batch_size: int
    ) -> Tuple[int, int]:
        """(tokens, layer-tokens) of step `step` for accounting: rows x length of the model input,
        tokens with the random-LTD effective length (S * (L - n) + K * n) // L when random-LTD is
        on (the untrimmed upper bound when `tokens_depend_on_data`)."""
        rows, length = self.batch_shape(step, micro_batch_size)
        return self.counts(step, global_batch_size // micro_batch_size * rows, length)

    def tokens_per_step(self, step: int, global_batch_size: int, micro_batch_size: int) -> int:
        """Tokens consumed by step `step` for accounting (`step_counts`)."""
        return self.step_counts(step, global_batch_size, micro_batch_size)[0]

    def layer_tokens_per_step(
        self, step: int, global_batch_size: int, micro_batch_size: int
    ) -> int:
        """Layer-tokens of step `step` (sum over layers of the tokens each layer processed)."""
        return self.step_counts(step, global_batch_size, micro_batch_size)[1]

    @staticmethod
    def measured(counts: List[Tuple[int, int]], dp_group=None) -> Tuple[int, int]:
        """(tokens, layer-tokens) of a step from the `counts` `step_iterator` recorded on this
        rank, summed over the data-parallel group (a collective; the same on every rank)."""
        local = [sum(c[0] for c in counts), sum(c[1] for c in counts)]
        if dp_group is not None:
            device = "cuda" if dist.get_backend(dp_group) == "nccl" else "cpu"
            total = torch.tensor(local, dtype=torch.int64, device=device)
            dist.all_reduce(total, group=dp_group)
            local = total.tolist()
        return int(local[0]), int(local[1])

    def log_fields(self, step: int, micro_batch_size: int) -> Dict[str, Any]:
        """Values shown in the iteration line for step `step`."""
        fields: Dict[str, Any] = {}
        if self.changes_seqlen:
            fields["curriculum seqlen"] = self.batch_shape(step, micro_batch_size)[1]
        if self.curriculum is not None:
            for name, value in curriculum_difficulties(self.curriculum, step).items():
                if name not in _POST_PROCESSING_METRICS:
                    fields[f"difficulty {name}"] = value
        if self.ltd is not None:
            fields["random-LTD kept tokens"] = self.keep(
                step, self.batch_shape(step, micro_batch_size)[1]
            )
        return fields

    # ---- data --------------------------------------------------------------------------------
    def step_iterator(
        self,
        data_iterator,
        step: int,
        num_micro: int,
        train: bool = True,
        counts: Optional[List[Tuple[int, int]]] = None,
    ) -> Iterator[Dict]:
        """This step's micro-batches: post-processed, with their RandomLTDState attached; when
        `counts` is a list, each micro-batch's (tokens, layer-tokens) is appended to it.

        Micro-batch m of this rank holds rows (m * dp_size + dp_rank) * b ... of the step's global
        batch (b rows each, after post-processing): the order in which the batch samplers hand
        out the global batch, so a row's kept tokens do not depend on the layout.
        """
        for m in range(num_micro):
            batch = next(data_iterator)
            if train and self.changes_seqlen:
                batch = post_process_batch(
                    self.ds, step, batch, self.seq_length, self.model_type, self.trim_padding
                )
            rows, length = _batch_shape(batch, self.model_type)
            if counts is not None:
                counts.append(self.counts(step, rows, length))
            if train and self.ltd is not None:
                batch = dict(batch)
                batch["random_ltd"] = RandomLTDState(
                    seed=self.seed,
                    step=step,
                    first_row=(m * self.dp_size + self.dp_rank) * rows,
                    keep=self.keep(step, length),
                    layer_ids=frozenset(self.ltd_layers),
                )
            yield batch

    def dataset_metrics(self, vocab_size: Optional[int]) -> Optional[CurriculumMetricsConfig]:
        """The built-in metrics the training split must compute once its index exists (the
        curriculum's schedule_based metrics without analysis files), or None."""
        names = self.dataset_metric_names()
        return CurriculumMetricsConfig(metrics=names, vocab_size=vocab_size) if names else None

    def build_sampler(
        self, dataset, micro_batch_size: int, dp_size: int, global_batch_at, vocab_size: int
    ):
        """The curriculum batch sampler (None when curriculum learning is off); it starts at step 0,
        `load_state_dict` moves it to a checkpoint's step.

        The metrics without analysis files are computed here for every sample of `dataset` (the
        training split), global rank 0 first, and cached beside its index.
        """
        if self.curriculum is None:
            return None
        config = self.dataset_metrics(vocab_size)
        values = attach_metrics(dataset, config, **rank_zero_first())
        self._check_analysis_matches(dataset)
        self.sampler = CurriculumSampler(
            self.ds.data_efficiency,
            len(dataset),
            micro_batch_size,
            self.dp_rank,
            dp_size,
            global_batch_at,
            values,
        )
        return self.sampler

    def _check_analysis_matches(self, dataset) -> None:
        """Analysis files made by tools/analyze_data.py record which dataset (path, split, seed,
        sequence length, sample order) they describe; refuse files of another dataset, whose
        sample ids would silently point at other samples."""
        ours = getattr(dataset, "unique_description", None)
        for name, metric in self.curriculum.curriculum_metrics.items():
            path = metric.index_to_sample_path or ""
            if not metric.filters_samples or not IndexedDataset.exists(path):
                continue
            stem = os.path.basename(path).split("_index_to_sample")[0]
            info_path = os.path.join(os.path.dirname(path), f"{stem}_analysis.json")
            if not os.path.isfile(info_path) or ours is None:
                logger.info(
                    "curriculum metric %s: %s has no dataset record; not checked", name, path
                )
                continue
            with open(info_path, encoding="utf-8") as f:
                theirs = json.load(f).get("fingerprint", {}).get("source", {}).get("dataset")
            canonical = lambda d: json.dumps(d, sort_keys=True, default=str)  # noqa: E731
            if theirs is not None and canonical(theirs) != canonical(ours):
                fix = _flags_to_match(theirs, ours)
                raise ValueError(
                    f"curriculum metric {name}: {path} was analysed on another dataset than this "
                    "run's "
                    f"training split ({info_path} records {theirs}, this run has {ours}); "
                    + (f"train with {fix}, or " if fix else "")
                    + "re-run tools/analyze_data.py with the training run's --data-path, "
                    "--split, --seq-length, --seed and sample count"
                )

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self, iteration: int) -> Optional[Dict[str, Any]]:
        """Plain-data state for the checkpoint's data_efficiency slot."""
        if not self.enabled:
            return None
        return {
            "config": self.ds.to_plain_dict(),
            "iteration": iteration,
            "sampler": self.sampler.state_dict(step=iteration)
            if self.sampler is not None
            else None,
        }

    def load_state_dict(self, state: Optional[Dict[str, Any]], iteration: int) -> None:
        """Restore the sampler to the checkpoint's step (or replay it when the state is missing)."""
        if self.sampler is None:
            return
        if state and state.get("sampler"):
            self.sampler.load_state_dict(state["sampler"])
        elif iteration:
            logger.warning(
                "checkpoint has no curriculum sampler state: replaying %d steps", iteration
            )
            self.sampler.fast_forward(iteration)


def _batch_shape(batch: Dict, model_type: str) -> Tuple[int, int]:
    """(rows, model input length) of a micro-batch (GPT text holds one extra token per row)."""
    rows, n = batch["text"].shape[:2]
    return int(rows), n - 1 if model_type == "gpt" else n


# ---- validation ------------------------------------------------------------------------------
def check_flags(ds: Optional[DeepSpeedConfig], curriculum_flag: bool, random_ltd_flag: bool):
    """--data-efficiency-curriculum-learning and --random-ltd need their --deepspeed_config
    blocks enabled."""
    de = ds.data_efficiency if ds is not None else None
    if curriculum_flag and (de is None or not de.curriculum_learning.enabled):
        raise ValueError(
            "--data-efficiency-curriculum-learning needs --deepspeed_config with "
            "data_efficiency.data_sampling.curriculum_learning enabled"
        )
    if random_ltd_flag and (de is None or not de.random_ltd.enabled):
        raise ValueError(
            "--random-ltd needs --deepspeed_config with data_efficiency.data_routing.random_ltd "
            "enabled"
        )


def check_against_model(
    ds: Optional[DeepSpeedConfig], seq_length: int, num_layers: int, sequence_parallel: bool
) -> Tuple[int, ...]:
    """Check the enabled curriculum and random-LTD settings against --seq-length, --num-layers
    and --sequence-parallel (ValueError naming the key, the flag and the fix); returns the
    random-LTD layer ids (empty when random-LTD is off). `parse_args` calls it, so a mismatch
    fails before anything is built."""
    if ds is None:
        return ()
    _check_seqlen_schedule(ds, seq_length)
    ltd = ds.data_efficiency.random_ltd
    return _check_ltd(ltd, seq_length, num_layers, sequence_parallel) if ltd.enabled else ()


def _check_seqlen_schedule(ds: DeepSpeedConfig, seq_length: int) -> None:
    """A sequence-length curriculum must end at most at --seq-length: above it the lengths are
    capped and the schedule reaches full length before its last step."""
    mode, schedule = seqlen_mode(ds)
    if schedule is None or schedule.max_difficulty <= seq_length:
        return
    legacy = mode == "legacy"
    what = (
        "the legacy curriculum_learning block" if legacy else f"curriculum metric {schedule.name}"
    )
    when = ""
    if schedule.schedule_type != "custom":
        reach = next((s for s, v in difficulty_segments(schedule) if v >= seq_length), None)
        total = schedule.schedule_config.total_curriculum_step
        if reach is not None:
            when = f" from step {reach}" + (f" instead of step {total}" if total else "")
    raise ValueError(
        f"{what}: max_difficulty {schedule.max_difficulty} is above --seq-length {seq_length}: "
        f"lengths are capped at {seq_length} (full length{when}), so the schedule is not the "
        f"one planned; set max_difficulty to {seq_length} (or raise --seq-length)"
    )


def _check_ltd(ltd, seq_length: int, num_layers: int, sequence_parallel: bool) -> Tuple[int, ...]:
    if ltd.total_layer_num is not None and ltd.total_layer_num != num_layers:
        raise ValueError(
            f"data_routing.random_ltd.total_layer_num is {ltd.total_layer_num} but --num-layers "
            f"is {num_layers}; make them equal"
        )
    layers = check_random_ltd_config(num_layers, ltd.random_ltd_layer_id, sequence_parallel)
    if ltd.random_ltd_layer_num is not None and ltd.random_ltd_layer_num != len(layers):
        raise ValueError(
            f"data_routing.random_ltd.random_ltd_layer_num is {ltd.random_ltd_layer_num} but "
            f"random_ltd_layer_id lists {len(layers)} layers"
        )
    sched = ltd.random_ltd_schedule
    if sched is None:
        raise ValueError("data_routing.random_ltd needs a random_ltd_schedule block")
    if sched.min_value >= seq_length:
        raise ValueError(
            f"random_ltd_schedule.min_value {sched.min_value} is not below --seq-length "
            f"{seq_length}: every layer would keep all {seq_length} tokens and random-LTD would "
            f"drop none; set min_value below {seq_length} (the tokens kept at the first step, "
            "e.g. a quarter of the sequence) and max_value to --seq-length"
        )
    return layers


def data_efficiency_from_flags(
    run,
    model_type: str,
    dp_rank: int = 0,
    dp_size: Optional[int] = None,
    ds_config: Optional[DeepSpeedConfig] = None,
) -> DataEfficiency:
    """The `DataEfficiency` of the run's flags (--deepspeed_config, --seq-length, --num-layers,
    the parallel layout), without process groups: its per-step accounting is a pure function of
    the flags and the step, so the budget is planned from it before anything is initialised.
    `ds_config`: the already parsed --deepspeed_config (read from the file when None)."""
    path = run.data_efficiency.deepspeed_config
    ds = ds_config
    if ds is None and path:
        ds = load_deepspeed_config(path)
    return DataEfficiency(
        ds,
        model_type,
        run.model.seq_length,
        run.transformer.num_layers,
        run.transformer.sequence_parallel,
        run.parallel.pipeline_model_parallel_size > 1,
        run.training.seed,
        dp_rank,
        run.data_parallel_size if dp_size is None else dp_size,
    )


def build_data_efficiency(
    run, model_type: str, pstate, ds_config: Optional[DeepSpeedConfig] = None
) -> DataEfficiency:
    """From the run's flags: --deepspeed_config (or `ds_config`, already parsed from it),
    --data-efficiency-curriculum-learning, --random-ltd."""
    de_flags = run.data_efficiency
    obj = data_efficiency_from_flags(run, model_type, pstate.dp_rank, pstate.dp_size, ds_config)
    ds = obj.ds
    curriculum_on = obj.curriculum is not None or obj.legacy is not None
    check_flags(ds, de_flags.data_efficiency_curriculum_learning, de_flags.random_ltd)
    if obj.ltd is not None and not de_flags.random_ltd:
        logger.info("random-LTD is enabled by --deepspeed_config (--random-ltd not given)")
    if curriculum_on:
        logger.info(
            "curriculum learning on: %s",
            ", ".join(obj.curriculum.curriculum_metrics) if obj.curriculum else "legacy seqlen",
        )
    if obj.ltd is not None:
        logger.info("random-LTD on layers %s", list(obj.ltd_layers))
    return obj

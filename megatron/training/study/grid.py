"""The study's grid: its options, the model presets and the command line of every run.

A study trains one model size on one corpus as the data-efficiency paper did: the baseline,
curriculum learning (CL: vocabulary rarity + sequence-length truncation), random-LTD, and both,
each at several shares of a token budget (100 / 67 / 50 % by default) and with one or more seeds.
The schedules are the paper's, scaled by *fractions of the run* rather than absolute step counts:
with the budget's baseline steps `N = budget_tokens / (global_batch * seq)`, the CL schedules
reach full difficulty after `cl_fraction * N` steps and random-LTD keeps every token after
`ltd_fraction * N` steps (GPT-3 1.3B, 300B tokens: N = 286k, CL 110k = 0.385 N, LTD 200k = 0.70 N).

Every run of a seed shares one training index (`--train-samples index_samples`, large enough for
the run that needs most samples) and so one analysis; runs stop on `--train-tokens` and decay the
lr over their budget's tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

VARIANTS = ("baseline", "cl", "ltd", "cl_ltd")
"""The paper's four runs."""


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """A model size with the optimizer settings the study trains it with."""

    model_type: str
    """gpt or bert."""
    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Hidden size."""
    num_attention_heads: int
    """Attention heads."""
    seq_length: int
    """Tokens per sample."""
    global_batch_size: int
    """Samples per step."""
    micro_batch_size: int
    """Samples per micro-batch."""
    lr: float
    """Peak learning rate at 100% of the budget."""
    min_lr: float
    """Final learning rate."""
    lr_decay_style: str
    """cosine (GPT) or linear (BERT), as in the paper."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    weight_decay: float = 0.1
    """Weight decay."""
    init_method_std: float = 0.02
    """Initialisation std."""
    dropout: float = 0.0
    """Hidden and attention dropout."""


PRESETS: Dict[str, ModelPreset] = {
    # test size: seconds per run on a CPU
    "gpt-toy": ModelPreset("gpt", 3, 64, 2, 64, 8, 4, 3e-3, 1e-4, "cosine"),
    # a few million parameters with a 4k-8k vocabulary: minutes per run on 2 cores
    "gpt-cpu": ModelPreset("gpt", 4, 192, 4, 256, 16, 8, 2e-3, 1e-5, "cosine"),
    "gpt3-125m": ModelPreset("gpt", 12, 768, 12, 2048, 256, 4, 6e-4, 1e-6, "cosine", 0.95, 0.1),
    "gpt3-1.3b": ModelPreset(
        "gpt", 24, 2048, 16, 2048, 512, 4, 2e-4, 1e-6, "cosine", 0.95, 0.1, 0.013, 0.1
    ),
    "bert-toy": ModelPreset("bert", 3, 64, 2, 64, 8, 4, 1e-3, 1e-5, "linear", 0.999, 0.01),
    "bert-cpu": ModelPreset("bert", 4, 128, 4, 128, 32, 16, 1e-3, 1e-5, "linear", 0.999, 0.01),
    "bert-large": ModelPreset(
        "bert", 24, 1024, 16, 512, 1024, 4, 1e-4, 1e-5, "linear", 0.999, 0.01, 0.02, 0.1
    ),
}
"""Model sizes by name (`--model`); the paper's two are gpt3-1.3b and bert-large."""


@dataclasses.dataclass(frozen=True)
class PaperSchedule:
    """The paper's data-efficiency settings of one model type, as fractions of the run."""

    warmup_fraction: float
    """lr warmup tokens as a fraction of the 100% budget (the same absolute warmup at every
    share of the budget)."""
    cl_fraction: float
    """CL steps to full difficulty, as a fraction of the budget's baseline steps."""
    ltd_fraction: float
    """random-LTD steps to full length, as a fraction of the budget's baseline steps."""
    voc_min: int
    """First vocabulary-rarity percentile (fixed_root schedule of degree 2 up to 100)."""
    seqlen_min_fraction: float
    """First curriculum sequence length, as a fraction of --seq-length (multiples of 8)."""
    ltd_min_fraction: float
    """First random-LTD K, as a fraction of --seq-length (multiples of 16)."""


PAPER = {
    # GPT-3 1.3B: warmup 3B of 300B tokens; CL 110k and LTD 200k of 286k steps; seqlen 80 of
    # 2048; K 128 of 2048.
    "gpt": PaperSchedule(0.01, 110 / 286.102, 200 / 286.102, 1, 80 / 2048, 128 / 2048),
    # BERT-large: warmup 10k of 2M iterations; CL 960k of 2M; LTD over the whole run; seqlen 128
    # of 512; K 128 of 512.
    "bert": PaperSchedule(0.005, 0.48, 1.0, 5, 128 / 512, 128 / 512),
}


@dataclasses.dataclass
class StudyConfig:
    """What a study runs (see the module docstring); every field is a command-line option of
    tools/data_efficiency_study.py."""

    model: str = "gpt-toy"
    """Model preset (`PRESETS`)."""
    train_tokens: int = 0
    """The 100% budget in tokens (0: the preset's batch x seq x `baseline_iters`)."""
    baseline_iters: int = 200
    """Baseline steps at 100% when `train_tokens` is 0."""
    percents: List[int] = dataclasses.field(default_factory=lambda: [100, 67, 50])
    """Shares of the budget each variant runs with."""
    variants: List[str] = dataclasses.field(default_factory=lambda: list(VARIANTS))
    """Which of baseline, cl, ltd, cl_ltd to run."""
    seeds: List[int] = dataclasses.field(default_factory=lambda: [1234])
    """Seeds (model initialisation and data order); every (variant, share) runs with each."""
    lr_scaling: str = "paper"
    """paper: peak lr x 1 / 1.5 / 2 at 100 / 67 / 50% (x 100/share rounded to 0.1); none."""
    seqlen_cl: str = "truncate"
    """GPT's sequence-length curriculum: truncate or reshape (BERT trims padding)."""
    cl_fraction: Optional[float] = None
    """Override the paper's CL duration (fraction of the baseline steps)."""
    ltd_fraction: Optional[float] = None
    """Override the paper's random-LTD duration (fraction of the baseline steps)."""
    seqlen_min_fraction: Optional[float] = None
    """Override the first curriculum sequence length (fraction of --seq-length)."""
    ltd_min_fraction: Optional[float] = None
    """Override the first random-LTD K (fraction of --seq-length)."""
    eval_points: int = 16
    """Held-out evaluations per 100% baseline run (the interval in steps is the same for all)."""
    eval_iters: int = 4
    """Global batches per held-out evaluation."""
    split: str = "95,5,0"
    """--split of the corpus (the validation split is the held-out set)."""
    index_factor: float = 2.0
    """Training index size as a multiple of the 100% baseline's samples (checked per run)."""
    nproc: int = 1
    """Processes per run (torchrun --nproc-per-node when > 1)."""
    torchrun_args: str = ""
    """More torchrun arguments, one string (e.g. "--nnodes 8 --node-rank 0 --master-addr n0"
    for a cluster: every node runs the same study command)."""
    extra_args: List[str] = dataclasses.field(default_factory=list)
    """More training flags, appended to every run's (later flags win); on the command line,
    everything after `--`."""

    def __post_init__(self):
        if self.model not in PRESETS:
            raise ValueError(f"--model {self.model!r}: choose one of {', '.join(PRESETS)}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"--variants {bad}: choose from {', '.join(VARIANTS)}")
        if not self.percents or any(not 0 < p <= 100 for p in self.percents):
            raise ValueError(f"--percents {list(self.percents)}: shares in (0, 100]")
        if self.lr_scaling not in ("paper", "none"):
            raise ValueError(f"--lr-scaling {self.lr_scaling!r}: paper or none")
        if self.seqlen_cl not in ("truncate", "reshape"):
            raise ValueError(f"--seqlen-cl {self.seqlen_cl!r}: truncate or reshape")
        if self.train_tokens < 0 or (self.train_tokens == 0 and self.baseline_iters < 1):
            raise ValueError("--train-tokens must be positive (or --baseline-iters >= 1)")
        if self.eval_points < 1 or self.eval_iters < 1:
            raise ValueError("--eval-points and --eval-iters must be >= 1")

    @property
    def preset(self) -> ModelPreset:
        return PRESETS[self.model]

    @property
    def paper(self) -> PaperSchedule:
        return PAPER[self.preset.model_type]

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one full-length global batch."""
        return self.preset.global_batch_size * self.preset.seq_length

    @property
    def full_budget(self) -> int:
        """The 100% budget in tokens."""
        return self.train_tokens or self.baseline_iters * self.tokens_per_step

    def budget(self, percent: int) -> int:
        """Tokens of a run at `percent` of the budget."""
        return max(self.tokens_per_step, round(self.full_budget * percent / 100))

    def baseline_steps(self, percent: int) -> int:
        """Steps of the baseline at `percent` of the budget."""
        return max(1, self.budget(percent) // self.tokens_per_step)

    def lr(self, percent: int) -> float:
        """Peak lr at `percent` (`lr_scaling`)."""
        if self.lr_scaling == "none":
            return self.preset.lr
        return self.preset.lr * round(100 / percent, 1)

    @property
    def eval_interval(self) -> int:
        """Steps between held-out evaluations (the same for every run)."""
        return max(1, self.baseline_steps(100) // self.eval_points)

    @property
    def index_samples(self) -> int:
        """Samples of the shared training index."""
        return math.ceil(self.index_factor * self.budget(100) / self.preset.seq_length)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    variant: str
    """baseline, cl, ltd or cl_ltd."""
    percent: int
    """Share of the budget."""
    seed: int
    """--seed."""

    @property
    def name(self) -> str:
        return f"{self.variant}_{self.percent}pct_seed{self.seed}"

    @property
    def uses_cl(self) -> bool:
        return self.variant in ("cl", "cl_ltd")

    @property
    def uses_ltd(self) -> bool:
        return self.variant in ("ltd", "cl_ltd")


def grid(cfg: StudyConfig) -> List[RunSpec]:
    """The runs, seed by seed, largest share first, baseline first."""
    order = sorted(set(cfg.percents), reverse=True)
    return [
        RunSpec(v, p, s) for s in cfg.seeds for p in order for v in VARIANTS if v in cfg.variants
    ]


@dataclasses.dataclass(frozen=True)
class DataPaths:
    """The prepared corpus: the dataset prefix and the tokenizer flags."""

    prefix: str
    """Prefix of the .bin/.idx files."""
    tokenizer_args: Tuple[str, ...]
    """--tokenizer-type, --vocab-file (, --merge-file)."""


def data_args(cfg: StudyConfig, data: DataPaths, seed: int, cache: str) -> List[str]:
    """The data flags the analysis and every run of `seed` share (the same train index)."""
    p = cfg.preset
    return [
        "--data-path", data.prefix,
        "--split", cfg.split,
        "--seq-length", str(p.seq_length),
        "--seed", str(seed),
        "--train-samples", str(cfg.index_samples),
        "--data-cache-path", cache,
        *data.tokenizer_args,
    ]  # fmt: skip


def _steps(fraction: float, cfg: StudyConfig, percent: int) -> int:
    return max(1, round(fraction * cfg.baseline_steps(percent)))


def _multiple(value: float, step: int, lo: int, hi: int) -> int:
    """`value` rounded down to a multiple of `step`, within [lo, hi]."""
    return min(hi, max(lo, int(value) // step * step))


def ds_config_argv(cfg: StudyConfig, spec: RunSpec, analysis: str, output: str) -> List[str]:
    """Arguments of tools/data_efficiency_config.py for the run's JSON (CL and/or random-LTD)."""
    p, paper = cfg.preset, cfg.paper
    seq, pct = p.seq_length, spec.percent
    argv = ["--output", output, "--global-batch-size", str(p.global_batch_size)]
    argv += ["--micro-batch-size", str(p.micro_batch_size), "--seed", str(spec.seed)]
    if spec.uses_cl:
        steps = _steps(cfg.cl_fraction or paper.cl_fraction, cfg, pct)
        voc = f"{analysis}/vocab_rarity/vocab_rarity"
        argv += [
            "--cl-metric", "vocab_rarity", "type=percentile", "clustering=schedule_based",
            f"min={paper.voc_min}", "max=100", "schedule=fixed_root", f"total_steps={steps}",
            "step=1", "root=2", f"index_to_sample={voc}_index_to_sample_percentile_merged",
            f"index_to_metric={voc}_index_to_metric",
        ]  # fmt: skip
        frac = cfg.seqlen_min_fraction or paper.seqlen_min_fraction
        lo = _multiple(frac * seq, 8, min(8, seq), seq)
        kind = "truncate" if p.model_type == "bert" else cfg.seqlen_cl
        argv += [f"--seqlen-{kind}", str(lo), str(seq), str(steps), "8"]
    if spec.uses_ltd:
        steps = _steps(cfg.ltd_fraction or paper.ltd_fraction, cfg, pct)
        frac = cfg.ltd_min_fraction or paper.ltd_min_fraction
        lo = _multiple(frac * seq, 16, min(16, seq), seq)
        argv += ["--num-layers", str(p.num_layers), "--seq-length", str(seq)]
        argv += ["--random-ltd-min", str(lo), "--random-ltd-require-steps", str(steps)]
        argv += ["--random-ltd-seq-per-step", str(min(16, seq))]
        if p.model_type == "bert":
            argv += ["--random-ltd-model-type", "encoder"]
    return argv


def train_argv(
    cfg: StudyConfig,
    spec: RunSpec,
    shared_data_args: Sequence[str],
    run_dir: str,
    ds_config: Optional[str],
) -> List[str]:
    """The pretraining script's flags for one run (after the script path)."""
    p, pct = cfg.preset, spec.percent
    budget = cfg.budget(pct)
    warmup = max(1, round(cfg.paper.warmup_fraction * cfg.full_budget))
    save_interval = cfg.eval_interval * 4
    argv = [
        "--num-layers", str(p.num_layers), "--hidden-size", str(p.hidden_size),
        "--num-attention-heads", str(p.num_attention_heads),
        "--max-position-embeddings", str(p.seq_length),
        "--init-method-std", str(p.init_method_std),
        "--hidden-dropout", str(p.dropout), "--attention-dropout", str(p.dropout),
        "--micro-batch-size", str(p.micro_batch_size),
        "--global-batch-size", str(p.global_batch_size),
        "--lr", repr(cfg.lr(pct)), "--min-lr", repr(p.min_lr),
        "--lr-decay-style", p.lr_decay_style,
        "--lr-decay-tokens", str(budget), "--lr-warmup-tokens", str(min(warmup, budget)),
        "--train-tokens", str(budget),
        "--adam-beta1", "0.9", "--adam-beta2", str(p.adam_beta2),
        "--weight-decay", str(p.weight_decay), "--clip-grad", "1.0",
        *shared_data_args,
        "--num-workers", "1",
        "--log-interval", str(max(1, cfg.eval_interval // 4)),
        "--eval-interval", str(cfg.eval_interval), "--eval-iters", str(cfg.eval_iters),
        "--log-jsonl", f"{run_dir}/metrics.jsonl",
        "--save", f"{run_dir}/checkpoints", "--load", f"{run_dir}/checkpoints",
        "--save-interval", str(save_interval),
    ]  # fmt: skip
    if ds_config is not None:
        argv += ["--deepspeed", "--deepspeed_config", ds_config]
    if spec.uses_cl:
        argv.append("--data-efficiency-curriculum-learning")
    if spec.uses_ltd:
        argv.append("--random-ltd")
    return argv + list(cfg.extra_args)

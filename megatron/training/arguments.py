"""The Megatron-compatible command line, generated from the config dataclasses.

`parse_args` returns a `RunConfig`: one typed config object per concern, all validated, plus the
cross-checks that involve several of them or the world size (which fail before any heavy work,
naming the flag and the fix).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Set

import torch

from megatron.core.datasets.builder import parse_data_path, parse_split
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.optimizer.config import OptimizerConfig
from megatron.core.transformer.config import TransformerConfig
from megatron.tokenizer.config import TokenizerConfig

from .budget import StepAccounting, schedule_spans
from .compat import add_compat_options, apply_compat_flags
from .config import (
    CheckpointConfig,
    DataConfig,
    DataEfficiencyFlags,
    LoggingConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    TrainingConfig,
)
from .data_efficiency import check_against_model, check_flags
from .deepspeed_settings import apply_deepspeed_settings
from .options import Flag, add_dataclass_options, build_dataclass
from .run_config import RunConfig

logger = logging.getLogger(__name__)

# TransformerConfig fields set by other flags (precision, layout) or with Megatron spellings.
_TRANSFORMER_FLAGS = {
    "add_bias_linear": Flag(skip=True),  # --disable-bias-linear
    "params_dtype": Flag(skip=True),  # --fp16 / --bf16
    "sequence_parallel": Flag(skip=True),  # --sequence-parallel is a parallelism flag
    "position_embedding_type": Flag(choices=("learned_absolute", "rope")),
    "normalization": Flag(choices=("LayerNorm", "RMSNorm")),
    "recompute_granularity": Flag(choices=("full", "selective")),
    "recompute_method": Flag(choices=("uniform", "block")),
}
_OPTIMIZER_FLAGS = {"optimizer": Flag(choices=("adam", "sgd"))}
_SCHEDULER_FLAGS = {
    "override_opt_param_scheduler": Flag(name="--override-opt_param-scheduler"),
    "use_checkpoint_opt_param_scheduler": Flag(name="--use-checkpoint-opt_param-scheduler"),
}
_TRAINING_FLAGS = {
    "dataloader_type": Flag(choices=("single", "cyclic")),
    "check_for_nan_in_loss_and_grad": Flag(name="--no-check-for-nan-in-loss-and-grad", invert=True),
}
_DE_FLAGS = {"deepspeed_config": Flag(name="--deepspeed_config", aliases=("--deepspeed-config",))}
DEFAULT_TOKENIZER = {"gpt": "GPT2BPETokenizer", "bert": "BertWordPieceLowerCase"}
"""--tokenizer-type when none is given, as Megatron-DeepSpeed's pretrain_gpt.py / pretrain_bert.py
default it."""


def build_parser(extra_args_provider: Optional[Callable] = None) -> argparse.ArgumentParser:
    """The full parser (every option declared once, in its dataclass)."""
    parser = argparse.ArgumentParser(
        description="Megatron-style pretraining", allow_abbrev=False, fromfile_prefix_chars="@"
    )
    add_dataclass_options(
        parser, TransformerConfig, "model (transformer stack)", _TRANSFORMER_FLAGS
    )
    add_dataclass_options(parser, ModelConfig, "model (other)")
    add_dataclass_options(parser, TrainingConfig, "training", _TRAINING_FLAGS)
    add_dataclass_options(parser, SchedulerConfig, "learning rate", _SCHEDULER_FLAGS)
    add_dataclass_options(parser, OptimizerConfig, "optimizer and precision", _OPTIMIZER_FLAGS)
    add_dataclass_options(parser, CheckpointConfig, "checkpointing")
    add_dataclass_options(parser, ParallelConfig, "parallelism")
    add_dataclass_options(parser, DataConfig, "data")
    add_dataclass_options(parser, TokenizerConfig, "tokenizer")
    add_dataclass_options(parser, LoggingConfig, "logging")
    add_dataclass_options(
        parser, DataEfficiencyFlags, "data efficiency (curriculum learning, random-LTD)", _DE_FLAGS
    )
    add_compat_options(parser)
    if extra_args_provider is not None:
        parser = extra_args_provider(parser) or parser
    return parser


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _transformer_config(
    ns: argparse.Namespace, model: ModelConfig, opt: OptimizerConfig, par: ParallelConfig
):
    dtype = torch.bfloat16 if opt.bf16 else torch.float16 if opt.fp16 else torch.float32
    rec = dict(
        recompute_granularity=ns.recompute_granularity,
        recompute_method=ns.recompute_method,
        recompute_num_layers=ns.recompute_num_layers,
    )
    if model.checkpoint_activations and ns.recompute_granularity is None:
        rec = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    pos = "rope" if model.use_rotary_position_embeddings else ns.position_embedding_type
    return build_dataclass(
        TransformerConfig,
        ns,
        add_bias_linear=not model.disable_bias_linear,
        params_dtype=dtype,
        position_embedding_type=pos,
        # nothing to shard at TP 1 (Megatron turns it off too)
        sequence_parallel=par.sequence_parallel and par.tensor_model_parallel_size > 1,
        **rec,
    )


def parse_args(
    argv: Optional[Sequence[str]] = None,
    extra_args_provider: Optional[Callable] = None,
    defaults: Optional[Dict[str, Any]] = None,
    world_size: Optional[int] = None,
    check_data_files: bool = True,
    model_type: str = "gpt",
) -> RunConfig:
    """Parse and validate the command line (argv defaults to sys.argv[1:]).

    Every check that needs only the flags (and the files they name) runs here, so a bad command
    line exits with status 2 and a message naming the flag and the fix before anything is built.
    `check_data_files=False` skips the existence check of the --data-path prefixes (for dry runs
    that parse a launch command meant for another machine). `model_type` (gpt or bert) is the
    model the script trains: the token accounting the lr schedule is checked with depends on it.
    """
    parser = build_parser(extra_args_provider)
    if defaults:
        parser.set_defaults(**defaults)
    argv = list(sys.argv[1:] if argv is None else argv)
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        run = config_from_namespace(
            ns,
            parser,
            world_size if world_size is not None else _world_size(),
            check_data_files,
            model_type,
            explicit_options(parser, argv),
        )
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return run


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Set[str]:
    """Destinations of the options written on the command line `argv` (@files expanded)."""
    if parser.fromfile_prefix_chars:
        argv = parser._read_args_from_files(list(argv))
    given = set()
    for token in argv:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
    return given


def _apply_launcher_settings(ns: argparse.Namespace, world_size: int, explicit: Set[str]) -> None:
    """The DeepSpeed JSON's engine settings and the accepted launch-script flags, applied to the
    namespace before the configs are built (contradictions with explicit flags are errors)."""
    stage = None
    path = ns.deepspeed_config
    if path:
        from megatron.core.deepspeed_config import load_deepspeed_config

        if not os.path.isfile(path):
            raise ValueError(f"--deepspeed_config {path}: no such file")
        model_parallel = ns.tensor_model_parallel_size * ns.pipeline_model_parallel_size
        raw = load_deepspeed_config(path).ignored
        stage, _ = apply_deepspeed_settings(
            ns, raw, explicit, max(world_size // max(model_parallel, 1), 1), path
        )
    apply_compat_flags(ns, explicit, stage)


def _tokenizer_config(ns: argparse.Namespace, model_type: str) -> Optional[TokenizerConfig]:
    """--tokenizer-type, defaulted per model as in Megatron-DeepSpeed (not for --mock-data)."""
    default = DEFAULT_TOKENIZER.get(model_type)
    if ns.tokenizer_type is not None or ns.mock_data or default is None:
        return build_dataclass(TokenizerConfig, ns) if ns.tokenizer_type else None
    ns.tokenizer_type = default
    try:
        return build_dataclass(TokenizerConfig, ns)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; --tokenizer-type defaults to {default} for pretrain_{model_type}.py (as in "
            "Megatron-DeepSpeed), give --tokenizer-type for another tokenizer"
        ) from None


def config_from_namespace(
    ns: argparse.Namespace,
    parser,
    world_size: int,
    check_data_files: bool = True,
    model_type: str = "gpt",
    explicit: Optional[Set[str]] = None,
) -> RunConfig:
    """Build and cross-validate the per-concern configs (raises ValueError with the fix).

    `explicit`: the options given on the command line (default: those that differ from the
    parser's defaults); the DeepSpeed JSON may fill the others but not contradict these.
    """
    if explicit is None:
        explicit = {a.dest for a in parser._actions if getattr(ns, a.dest, None) != a.default}
    _apply_launcher_settings(ns, world_size, explicit)
    model = build_dataclass(ModelConfig, ns)
    opt = build_dataclass(OptimizerConfig, ns)
    par = build_dataclass(ParallelConfig, ns)
    tokenizer = _tokenizer_config(ns, model_type)
    known = {a.dest for a in parser._actions}
    core_fields = set()
    for cls in (
        TransformerConfig,
        ModelConfig,
        TrainingConfig,
        SchedulerConfig,
        OptimizerConfig,
        CheckpointConfig,
        ParallelConfig,
        DataConfig,
        TokenizerConfig,
        LoggingConfig,
        DataEfficiencyFlags,
    ):
        core_fields |= {f.name for f in dataclasses.fields(cls)}
    run = RunConfig(
        transformer=_transformer_config(ns, model, opt, par),
        model=model,
        training=build_dataclass(TrainingConfig, ns),
        scheduler=build_dataclass(SchedulerConfig, ns),
        optimizer=opt,
        checkpoint=build_dataclass(CheckpointConfig, ns),
        parallel=par,
        data=build_dataclass(DataConfig, ns),
        tokenizer=tokenizer,
        logging=build_dataclass(LoggingConfig, ns),
        data_efficiency=build_dataclass(DataEfficiencyFlags, ns),
        world_size=world_size,
        extra={k: getattr(ns, k) for k in known - core_fields - {"help"} if hasattr(ns, k)},
    )
    validate_run_config(run, check_data_files, model_type)
    return run


def validate_run_config(
    run: RunConfig, check_data_files: bool = True, model_type: str = "gpt"
) -> None:
    """Checks that involve several configs or the world size (`check_data_files`: also that the
    --data-path prefixes exist; `model_type`: gpt or bert, for the token accounting)."""
    par, tr, model = run.parallel, run.training, run.model
    run.transformer.check_layout(run.layout)
    dp = run.data_parallel_size
    if tr.global_batch_size is None:
        tr.global_batch_size = tr.micro_batch_size * dp
    unit = tr.micro_batch_size * dp
    if tr.global_batch_size % unit:
        raise ValueError(
            f"--global-batch-size {tr.global_batch_size} is not divisible by --micro-batch-size "
            f"{tr.micro_batch_size} x data-parallel size {dp} = {unit}; use a multiple of {unit}"
        )
    if (
        not tr.skip_train
        and tr.train_iters is None
        and tr.train_samples is None
        and tr.train_tokens is None
    ):
        raise ValueError(
            "no training budget given: set --train-iters, --train-samples or --train-tokens"
        )
    if model.seq_length is None:
        raise ValueError("--seq-length is required")
    if model.max_position_embeddings is None:
        model.max_position_embeddings = model.seq_length
    if (
        run.transformer.position_embedding_type == "learned_absolute"
        and model.max_position_embeddings < model.seq_length
    ):
        raise ValueError(
            f"--max-position-embeddings {model.max_position_embeddings} is smaller than "
            "--seq-length "
            f"{model.seq_length}; raise it or shorten the sequence"
        )
    if run.optimizer.fp16 and run.optimizer.bf16:
        raise ValueError("--fp16 and --bf16 exclude each other; pick one")
    _check_data(run, check_data_files)
    vpp = run.layout.virtual_pipeline_model_parallel_size
    if vpp and vpp > 1:
        _check_interleaved_micro_batches(tr, dp, par.pipeline_model_parallel_size)
    ds_config = _check_data_efficiency(run)
    if run.logging.log_num_zeros_in_grad and run.optimizer.use_distributed_optimizer:
        raise ValueError(
            "--log-num-zeros-in-grad counts the all-reduced gradients, which the distributed "
            "optimizer (--use-distributed-optimizer or zero_optimization.stage >= 1 in the "
            "DeepSpeed JSON) does not keep; drop one of them"
        )
    ck = run.checkpoint
    if ck.save_interval is not None and ck.save is None:
        raise ValueError("--save-interval needs --save <folder>")
    _check_schedule(run, ds_config, model_type)


def _check_schedule(run: RunConfig, ds_config, model_type: str) -> None:
    """The batch-size ramp-up, the lr schedule over the budget (budget.py builds both) and the
    seeds of the pipeline stages."""
    tr = run.training
    last_stage_seed = tr.seed + 100 * (run.parallel.pipeline_model_parallel_size - 1)
    if last_stage_seed >= 2**32:
        raise ValueError(
            f"--seed {tr.seed}: the last pipeline stage seeds with --seed + 100 x stage = "
            f"{last_stage_seed}, above 2**32 - 1; use a smaller --seed"
        )
    schedule_spans(run, StepAccounting.from_run(run, model_type, ds_config))


def _check_data(run: RunConfig, check_files: bool) -> None:
    """Where the data and the tokenizer come from; --data-path / --split / --*-data-path parse,
    and (check_files) their prefixes exist."""
    d = run.data
    if not d.mock_data and not d.data_path and not d.train_data_path:
        raise ValueError(
            "no training data: give --data-path (or --train-data-path), or --mock-data"
        )
    if d.data_path and (d.train_data_path or d.valid_data_path or d.test_data_path):
        raise ValueError(
            "give either --data-path (split by --split) or --train/valid/test-data-path, not both"
        )
    if run.tokenizer is None and not d.mock_data:
        raise ValueError(
            "--tokenizer-type is required (e.g. GPT2BPETokenizer with --vocab-file and "
            "--merge-file for GPT, BertWordPieceLowerCase with --vocab-file for BERT)"
        )
    if d.mock_data and run.tokenizer is None:
        raise ValueError(
            "--mock-data needs a tokenizer for its vocabulary size: e.g. --tokenizer-type "
            "NullTokenizer --vocab-size 1024"
        )
    if d.mock_data:
        return
    paths = {
        "--data-path": d.data_path,
        "--train-data-path": d.train_data_path,
        "--valid-data-path": d.valid_data_path,
        "--test-data-path": d.test_data_path,
    }
    if d.data_path:
        parse_split(d.split)
    for flag, value in paths.items():
        if not value:
            continue
        try:
            prefixes, _ = parse_data_path(value)
        except ValueError as exc:
            raise ValueError(str(exc).replace("--data-path", flag)) from None
        if check_files:
            for prefix in prefixes:
                _check_prefix(flag, prefix)


def _check_prefix(flag: str, prefix: str) -> None:
    if IndexedDataset.exists(prefix):
        return
    stem, ext = os.path.splitext(prefix)
    if ext in (".bin", ".idx") and IndexedDataset.exists(stem):
        raise ValueError(f"{flag} {prefix}: give the prefix without {ext}: {flag} {stem}")
    missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
    raise ValueError(
        f"{flag} {prefix}: no such dataset ({' and '.join(missing)} missing); {flag} takes the "
        "prefix of a .bin/.idx pair made by tools/preprocess_data.py (its --output-prefix plus "
        "_text_document), or use --mock-data for synthetic tokens"
    )


def _check_interleaved_micro_batches(tr: TrainingConfig, dp: int, pp: int) -> None:
    """The interleaved schedule needs a multiple of the pipeline size micro-batches every step."""
    sizes = [tr.global_batch_size]
    if tr.rampup_batch_size is not None:
        start, incr, _ = (int(x) for x in tr.rampup_batch_size)
        sizes += list(range(start, tr.global_batch_size, incr))
    for gbs in sizes:
        m = gbs // (tr.micro_batch_size * dp)
        if m % pp:
            raise ValueError(
                "--num-layers-per-virtual-pipeline-stage (interleaved schedule) needs the number "
                "of "
                f"micro-batches per step to be a multiple of --pipeline-model-parallel-size {pp}, "
                "but a "
                f"global batch of {gbs} gives {m}; change --global-batch-size or --micro-batch-size"
            )


def _check_data_efficiency(run: RunConfig):
    """--deepspeed_config against the command line and the model, and the flags that need it;
    returns the parsed --deepspeed_config (None without one)."""
    flags, t = run.data_efficiency, run.transformer
    cfg = _check_deepspeed_config(run) if flags.deepspeed_config else None
    check_flags(cfg, flags.data_efficiency_curriculum_learning, flags.random_ltd)
    try:
        check_against_model(cfg, run.model.seq_length, t.num_layers, t.sequence_parallel)
    except ValueError as exc:
        raise ValueError(f"--deepspeed_config {flags.deepspeed_config}: {exc}") from None
    return cfg


def _check_deepspeed_config(run: RunConfig):
    """Parse --deepspeed_config (strict validation before any heavy work; its engine keys were
    applied to the options already, see deepspeed_settings.py); returns it."""
    from megatron.core.deepspeed_config import load_deepspeed_config

    path = run.data_efficiency.deepspeed_config
    if not os.path.isfile(path):
        raise ValueError(f"--deepspeed_config {path}: no such file")
    return load_deepspeed_config(path)

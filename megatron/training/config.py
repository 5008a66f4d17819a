"""Options of the training application, one dataclass per concern.

Every field is a command-line option (see `options.py`): its docstring is the `--help` text and
`__post_init__` validates it. Options of the library live in the library's own configs
(`TransformerConfig`, `OptimizerConfig`, `TokenizerConfig`, dataset configs) and are exposed on the
command line by the same mechanism.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional


@dataclasses.dataclass
class TrainingConfig:
    """Batch sizes, budget, stopping and evaluation."""

    micro_batch_size: int = 1
    """Samples per micro-batch on each data-parallel rank."""

    global_batch_size: Optional[int] = None
    """Samples per optimizer step over all data-parallel ranks (default: micro batch x DP);
    the difference is made up with gradient accumulation."""

    rampup_batch_size: Optional[List[int]] = None
    """Batch size ramp-up: <start> <increment> <ramp-up samples>; the global batch grows from start
    by increment over the given number of samples."""

    train_iters: Optional[int] = None
    """Optimizer steps to train for."""

    train_samples: Optional[int] = None
    """Samples to train for (alternative to --train-iters)."""

    train_tokens: Optional[int] = None
    """Tokens to train for; counts the actual tokens consumed (curriculum-truncated and
    random-LTD-effective lengths when those are on). As the only budget, the training split is
    built with the samples of the steps that reach it (the per-step token counts summed) and the
    lr decays over these tokens."""

    exit_interval: Optional[int] = None
    """Save (when --save is set) and exit when the iteration is a multiple of this."""

    exit_duration_in_mins: Optional[float] = None
    """Save and exit after this many minutes of training."""

    exit_signal_handler: bool = False
    """Save and exit on SIGTERM (the handler is installed even without this flag when --save is
    set; this flag only keeps Megatron launch scripts working)."""

    seed: int = 1234
    """Seed of initialisation, dropout and data shuffling."""

    dataloader_type: str = "single"
    """single (samples in dataset order, resumable) or cyclic (a seeded shuffle per epoch)."""

    num_workers: int = 2
    """Data-loader worker processes per rank."""

    eval_interval: int = 1000
    """Iterations between validation runs."""

    eval_iters: int = 100
    """Micro-batch steps per validation run (each one global batch)."""

    skip_train: bool = False
    """Only evaluate (after loading --load)."""

    log_interval: int = 100
    """Iterations between log lines."""

    check_for_nan_in_loss_and_grad: bool = True
    """On by default: stop at the first iteration whose loss or gradient norm is NaN or inf,
    before its update and without saving, with an error naming the iteration (fp16 overflow
    steps are still skipped and training goes on). --no-check-for-nan-in-loss-and-grad turns it
    off (a checkpoint of non-finite weights is refused either way)."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            raise ValueError(f"--micro-batch-size must be >= 1, got {self.micro_batch_size}")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            raise ValueError(
                f"--global-batch-size must be >= 1, got {self.global_batch_size}; give the "
                "samples per optimizer step (or leave it out: micro batch x data-parallel size)"
            )
        self._check_rampup()
        self._check_budget()
        self._check_exit()
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32 - 1], got {self.seed}")
        budgets = [
            x for x in (self.train_iters, self.train_samples, self.train_tokens) if x is not None
        ]
        if len(budgets) > 1 and not (self.train_tokens is not None and len(budgets) == 2):
            raise ValueError(
                "give only one of --train-iters and --train-samples (--train-tokens may be "
                "combined "
                "with either as an extra stop condition)"
            )
        if self.dataloader_type not in ("single", "cyclic"):
            raise ValueError(
                f"--dataloader-type must be single or cyclic, got {self.dataloader_type!r}"
            )
        for name in ("eval_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.eval_iters < 0 or self.num_workers < 0:
            raise ValueError("--eval-iters and --num-workers must be >= 0")

    def _check_rampup(self) -> None:
        if self.rampup_batch_size is None:
            return
        if len(self.rampup_batch_size) != 3:
            raise ValueError(
                "--rampup-batch-size takes 3 numbers: <start batch> <increment> <ramp-up samples>, "
                f"got {self.rampup_batch_size}"
            )
        for name, value in zip(
            ("start batch", "increment", "ramp-up samples"), self.rampup_batch_size
        ):
            if value < 1:
                raise ValueError(
                    f"--rampup-batch-size {' '.join(map(str, self.rampup_batch_size))}: the "
                    f"{name} must be >= 1, got {value}; e.g. --rampup-batch-size 16 16 1000000 "
                    "grows the batch from 16 by 16 over 1000000 samples"
                )

    def _check_budget(self) -> None:
        for name in ("train_iters", "train_samples", "train_tokens"):
            value = getattr(self, name)
            if value is None or value >= 1 or (value == 0 and self.skip_train):
                continue
            raise ValueError(
                f"--{name.replace('_', '-')} must be >= 1, got {value}; to only evaluate a "
                "checkpoint use --skip-train"
            )

    def _check_exit(self) -> None:
        if self.exit_interval is not None and self.exit_interval < 1:
            raise ValueError(
                f"--exit-interval must be >= 1 (iterations between exits), got "
                f"{self.exit_interval}; leave it out to train to the end of the budget"
            )
        if self.exit_duration_in_mins is not None and not self.exit_duration_in_mins > 0:
            raise ValueError(
                f"--exit-duration-in-mins must be > 0, got {self.exit_duration_in_mins}; leave it "
                "out to train without a time limit"
            )


@dataclasses.dataclass
class SchedulerConfig:
    """Learning-rate warmup and decay."""

    lr_decay_style: str = "linear"
    """constant, linear, cosine or inverse-square-root."""

    lr_decay_iters: Optional[int] = None
    """Iterations to decay over (default: the training budget, in tokens for --train-tokens
    alone)."""

    lr_decay_samples: Optional[int] = None
    """Samples to decay over."""

    lr_decay_tokens: Optional[int] = None
    """Tokens to decay over (token-based decay counts the actual tokens consumed)."""

    lr_warmup_fraction: Optional[float] = None
    """Fraction of the decay span used for warmup."""

    lr_warmup_iters: int = 0
    """Iterations of linear warmup (with a decay in tokens or layer-tokens: until the tokens or
    layer-tokens those iterations consume)."""

    lr_warmup_samples: int = 0
    """Samples of linear warmup (converted like --lr-warmup-iters)."""

    lr_warmup_tokens: Optional[int] = None
    """Tokens of linear warmup (with a decay in samples or layer-tokens: until the samples or
    layer-tokens consumed by then)."""

    override_opt_param_scheduler: bool = False
    """Ignore the scheduler state of the checkpoint and use the command-line values."""

    use_checkpoint_opt_param_scheduler: bool = False
    """Take the scheduler values from the checkpoint instead of the command line."""

    def __post_init__(self) -> None:
        styles = ("constant", "linear", "cosine", "inverse-square-root")
        if self.lr_decay_style not in styles:
            raise ValueError(
                f"--lr-decay-style must be one of {styles}, got {self.lr_decay_style!r}"
            )
        if self.override_opt_param_scheduler and self.use_checkpoint_opt_param_scheduler:
            raise ValueError(
                "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler exclude "
                "each other"
            )
        if self.lr_warmup_fraction is not None and (self.lr_warmup_iters or self.lr_warmup_samples):
            raise ValueError("give --lr-warmup-fraction or --lr-warmup-iters/samples, not both")
        if self.lr_warmup_fraction is not None and not 0.0 <= self.lr_warmup_fraction <= 1.0:
            raise ValueError(
                f"--lr-warmup-fraction must be in [0, 1], got {self.lr_warmup_fraction}"
            )
        for name in ("lr_decay_iters", "lr_decay_samples", "lr_decay_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {value}; leave it out to "
                    "decay over the training budget"
                )
        for name in ("lr_warmup_iters", "lr_warmup_samples", "lr_warmup_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")


@dataclasses.dataclass
class CheckpointConfig:
    """Saving and loading."""

    save: Optional[str] = None
    """Folder to save checkpoints to."""

    save_interval: Optional[int] = None
    """Iterations between checkpoints."""

    load: Optional[str] = None
    """Folder to load a checkpoint from (its latest_checkpointed_iteration.txt). A folder that does
    not exist, or holds no checkpoint, is an error, except when it is also --save: then the first
    run starts from scratch and later runs resume."""

    no_load_optim: bool = False
    """Do not load the optimizer state."""

    no_load_rng: bool = False
    """Do not load the RNG states."""

    no_save_optim: bool = False
    """Do not save the optimizer state."""

    no_save_rng: bool = False
    """Do not save the RNG states."""

    finetune: bool = False
    """Load only the model weights and start at iteration 0 (no optimizer, RNG or data state)."""

    use_checkpoint_args: bool = False
    """Take the model architecture from the checkpoint's stored arguments."""

    ckpt_step: Optional[int] = None
    """Load this iteration instead of the latest."""

    no_verify_checkpoint: bool = False
    """Do not check the loaded files against the sha256 checksums saved with them (saves reading
    each file twice for huge checkpoints; a damaged file then loads unnoticed)."""

    override_checkpoint_args: Optional[List[str]] = None
    """Architecture options that may differ from the checkpoint's when loading it, by flag name
    without the dashes (e.g. rotary-base layernorm-epsilon); any other difference in the stored
    architecture stops the run with a list of the differences. Options outside the architecture
    (dropout, batch sizes, learning rate, data-parallel size) may always change."""

    def __post_init__(self) -> None:
        if self.save_interval is not None and self.save_interval < 1:
            raise ValueError(f"--save-interval must be >= 1, got {self.save_interval}")
        self.override_checkpoint_args = [
            name.lstrip("-").replace("_", "-") for name in self.override_checkpoint_args or ()
        ]


@dataclasses.dataclass
class ParallelConfig:
    """Process layout and the distributed runtime."""

    tensor_model_parallel_size: int = 1
    """Ranks that shard each layer (tensor parallelism)."""

    pipeline_model_parallel_size: int = 1
    """Pipeline stages."""

    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    """Layers per virtual stage: turns on the interleaved 1F1B schedule."""

    sequence_parallel: bool = False
    """Shard LayerNorm and dropout regions along the sequence across the TP group."""

    distributed_backend: Optional[str] = None
    """nccl or gloo (default: nccl with CUDA, else gloo)."""

    distributed_timeout_minutes: float = 10.0
    """Timeout of collectives; a rank that stops answering makes the others fail after this long."""

    use_cpu_initialization: bool = False
    """Generate initial weights on the CPU (identical for every layout; slower on GPUs)."""

    overlap_grad_reduce: bool = True
    """Overlap the data-parallel gradient reduction with the backward pass."""

    accumulate_allreduce_grads_in_fp32: bool = False
    """Accumulate and reduce gradients in fp32 (always the case with --bf16)."""

    def __post_init__(self) -> None:
        if self.distributed_backend not in (None, "nccl", "gloo"):
            raise ValueError(
                f"--distributed-backend must be nccl or gloo, got {self.distributed_backend!r}"
            )
        if self.tensor_model_parallel_size < 1 or self.pipeline_model_parallel_size < 1:
            raise ValueError("parallel sizes must be >= 1")

    def virtual_pipeline_size(self, num_layers: int) -> Optional[int]:
        """Model chunks per pipeline rank that --num-layers-per-virtual-pipeline-stage asks for
        (None when it is not given)."""
        per_chunk = self.num_layers_per_virtual_pipeline_stage
        if per_chunk is None:
            return None
        per_stage = num_layers // self.pipeline_model_parallel_size
        if per_chunk < 1 or per_stage % per_chunk:
            raise ValueError(
                f"--num-layers-per-virtual-pipeline-stage {per_chunk} must divide the {per_stage} "
                "layers of each pipeline stage"
            )
        return per_stage // per_chunk


@dataclasses.dataclass
class ModelConfig:
    """Model options outside the transformer stack itself."""

    seq_length: Optional[int] = None
    """Tokens per sample."""

    max_position_embeddings: Optional[int] = None
    """Rows of the learned position table (default: --seq-length)."""

    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary to a multiple of this (times TP) for efficient shards; the padding ids
    take no part in the softmax, the loss or sampling, so the model is the same at every TP
    size."""

    untie_embeddings_and_output_weights: bool = False
    """Separate output layer instead of reusing the word embeddings."""

    use_rotary_position_embeddings: bool = False
    """Rotary position embeddings (RoPE) instead of learned absolute positions."""

    disable_bias_linear: bool = False
    """No biases in the linear layers."""

    bert_no_binary_head: bool = False
    """BERT without the NSP/SOP binary head."""

    bert_binary_head_type: str = "sop"
    """Task of BERT's binary head: sop (sentence order, Megatron's default) or nsp."""

    attention_softmax_in_fp32: bool = False
    """Accepted for compatibility: SDPA always accumulates the softmax in fp32."""

    checkpoint_activations: bool = False
    """Older alias of --recompute-granularity full --recompute-method uniform
    --recompute-num-layers 1."""

    def __post_init__(self) -> None:
        if self.seq_length is not None and self.seq_length < 1:
            raise ValueError(f"--seq-length must be positive, got {self.seq_length}")
        if self.make_vocab_size_divisible_by < 1:
            raise ValueError("--make-vocab-size-divisible-by must be >= 1")
        if self.bert_binary_head_type not in ("sop", "nsp"):
            raise ValueError(
                f"--bert-binary-head-type must be sop or nsp, got {self.bert_binary_head_type!r}"
            )


@dataclasses.dataclass
class DataConfig:
    """Where the training data comes from and how samples are formed."""

    data_path: Optional[List[str]] = None
    """Dataset prefixes, optionally weighted: `prefix` or `w1 prefix1 w2 prefix2 ...`."""

    split: str = "969,30,1"
    """Train,valid,test proportions of the documents of --data-path."""

    train_data_path: Optional[List[str]] = None
    """Training prefixes (instead of --data-path + --split)."""

    valid_data_path: Optional[List[str]] = None
    """Validation prefixes."""

    test_data_path: Optional[List[str]] = None
    """Test prefixes."""

    data_cache_path: Optional[str] = None
    """Folder for the cached sample indices."""

    mock_data: bool = False
    """Train on synthetic random tokens (no data files)."""

    reset_position_ids: bool = False
    """Restart position ids after each end-of-document token."""

    reset_attention_mask: bool = False
    """Do not attend across end-of-document tokens."""

    eod_mask_loss: bool = False
    """No loss on end-of-document tokens."""

    mask_prob: float = 0.15
    """BERT: probability of masking each token."""

    short_seq_prob: float = 0.1
    """BERT: probability of a shorter sample."""

    train_data_exact_num_epochs: Optional[int] = None
    """Build the training split from exactly this many epochs."""

    return_data_index: bool = False
    """Samples carry their dataset index."""

    legacy_split_and_blend: bool = False
    """Split --data-path by Megatron-LM's legacy rounding and interleave blends by the earliest
    deadline (this project's earlier rules); by default megatron-core's rules give
    megatron-core's samples (see megatron/core/datasets/readme.md)."""

    train_doc_idx_path: Optional[str] = None
    """GPT: train on this document index (with --train-sample-idx-path and
    --train-shuffle-idx-path: Megatron-DeepSpeed's `<prefix>_train_indexmap_exact<E>ep_<S>sl_
    <seed>s_doc_idx.npy` written by tools/analyze_data.py) instead of the one built here; the
    files are checked against the training split, and the `exact<E>ep` of the name sets
    --train-data-exact-num-epochs."""

    train_sample_idx_path: Optional[str] = None
    """GPT: the sample index that goes with --train-doc-idx-path (`..._sample_idx.npy`)."""

    train_shuffle_idx_path: Optional[str] = None
    """GPT: the sample order that goes with --train-doc-idx-path (`..._shuffle_idx.npy`)."""

    train_idx_path: Optional[str] = None
    """BERT: train on this sample mapping (Megatron-DeepSpeed's `<prefix>_train_indexmap_exact
    <E>ep_<S-3>msl_<ssp>ssp_<seed>s.npy` written by tools/analyze_data.py) instead of the one
    built here; checked against the training split, its `exact<E>ep` sets
    --train-data-exact-num-epochs."""

    def __post_init__(self) -> None:
        self._check_forced_index()
        if not 0.0 <= self.mask_prob < 1.0:
            raise ValueError(f"--mask-prob must be in [0, 1), got {self.mask_prob}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"--short-seq-prob must be in [0, 1], got {self.short_seq_prob}")

    def _check_forced_index(self) -> None:
        """The forced-index flags come as a set, and their files' epochs set (or agree with)
        --train-data-exact-num-epochs."""
        from megatron.core.datasets.forced_index import epochs_in_name

        gpt = {
            "--train-doc-idx-path": self.train_doc_idx_path,
            "--train-sample-idx-path": self.train_sample_idx_path,
            "--train-shuffle-idx-path": self.train_shuffle_idx_path,
        }
        given = {k: v for k, v in gpt.items() if v}
        if given and len(given) != 3:
            missing = sorted(set(gpt) - set(given))
            raise ValueError(f"{', '.join(given)} also need {', '.join(missing)}")
        if given and self.train_idx_path:
            raise ValueError(
                "--train-idx-path (BERT) and --train-doc-idx-path ... (GPT) exclude each other"
            )
        if self.train_idx_path:
            given = {"--train-idx-path": self.train_idx_path}
        for flag, path in given.items():
            epochs = epochs_in_name(path)
            exact = self.train_data_exact_num_epochs
            if epochs is None and exact is None:
                raise ValueError(
                    f"{flag} {path}: the name does not say the epochs of the index (Megatron-"
                    "DeepSpeed's ..._exact<E>ep_...); pass --train-data-exact-num-epochs E"
                )
            if epochs is not None and exact is not None and epochs != exact:
                raise ValueError(
                    f"{flag} {path} is an index of {epochs} epoch(s) but "
                    f"--train-data-exact-num-epochs is {exact}; make them agree"
                )
            if exact is None:
                self.train_data_exact_num_epochs = epochs

    @property
    def forced_train_index(self) -> bool:
        """Whether the training split reads index files given on the command line."""
        return bool(self.train_doc_idx_path or self.train_idx_path)


@dataclasses.dataclass
class LoggingConfig:
    """Where metrics go."""

    tensorboard_dir: Optional[str] = None
    """Write TensorBoard scalars here (needs the tensorboard package; without it a warning says
    so and training goes on, as in Megatron)."""

    log_jsonl: Optional[str] = None
    """Append every scalar the TensorBoard writer gets (losses, lr, schedules, the counters
    consumed-samples / consumed-tokens / floating-point-operations / train-time-s, validation
    losses) to this file as JSON lines {"step", "name", "value"} (global rank 0). A resumed run
    appends; tools/plot_runs.py and tools/data_efficiency_study.py read it."""

    log_validation_ppl_to_tensorboard: bool = False
    """Also write validation perplexity."""

    log_params_norm: bool = False
    """Compute the L2 norm of all parameters at every log line (`params-norm` scalar and a
    "params norm" field; costs one pass over the weights)."""

    log_num_zeros_in_grad: bool = False
    """Count the zero entries of the step's gradients at every log line (`num-zeros`); not
    with --use-distributed-optimizer (each rank then holds only its shard reduced)."""

    log_throughput: bool = False
    """Also write `throughput` (model TFLOP/s per rank, as on the iteration line)."""

    log_batch_size_to_tensorboard: bool = False
    """Also write `batch-size` (the global batch size, which changes with --rampup-batch-size)."""

    no_log_loss_scale_to_tensorboard: bool = False
    """Do not write `loss-scale` (written by default, as in Megatron)."""

    log_world_size_to_tensorboard: bool = False
    """Also write `world-size`."""

    log_timers_to_tensorboard: bool = False
    """Also write the per-phase step timers under Megatron's names, as `<name>-time` in seconds
    per iteration: forward-backward, optimizer, batch-generator (reading the micro-batches) and
    the pipeline exchanges (forward-recv, backward-send, forward-send-backward-recv, ...)."""

    wandb_project: Optional[str] = None
    """Weights & Biases project (needs the wandb package)."""

    wandb_exp_name: Optional[str] = None
    """Weights & Biases run name."""

    wandb_save_dir: Optional[str] = None
    """Weights & Biases local folder."""


@dataclasses.dataclass
class DataEfficiencyFlags:
    """Curriculum learning and random-LTD switches (Megatron-DeepSpeed's flags)."""

    deepspeed_config: Optional[str] = None
    """DeepSpeed JSON holding the data_efficiency block (curriculum learning, random-LTD) and/or
    the legacy curriculum_learning block; other DeepSpeed keys are accepted and ignored."""

    deepspeed: bool = False
    """Accepted so Megatron-DeepSpeed launch scripts run unchanged (this framework does not use
    the DeepSpeed engine); the data-efficiency settings come from --deepspeed_config."""

    data_efficiency_curriculum_learning: bool = False
    """Train with the curriculum sampler of the data_efficiency block (requires it in
    --deepspeed_config)."""

    random_ltd: bool = False
    """Train with random layerwise token dropping (requires data_routing.random_ltd in
    --deepspeed_config)."""

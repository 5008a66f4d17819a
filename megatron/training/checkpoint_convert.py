"""Change the tensor / pipeline (/ virtual pipeline) layout of a checkpoint.

A checkpoint (see `checkpointing`) holds one file per (TP rank, PP rank). Model tensors are keyed
by layout-independent global names; a TP-sharded tensor is this rank's slice of the full tensor
along the parameter's `partition_dim`, interleaved `partition_stride` times (see
`tensor_parallel.init.shard_of`). The optimizer state is one entry per trainable parameter of the
rank, in model order, each shaped like the rank's shard.

Conversion = merge every file into full tensors (`load_merged`), then cut them for the target
layout (`split_merged`). Which parameters exist on which pipeline chunk, in which order, and how
each one is partitioned is read from the model itself: GPTModel / BertModel chunks are built on
the meta device (no memory, no process groups) from the stored arguments for the source and for
the target layout. Nothing is hard-coded about parameter names except the tied word embeddings,
which the models mark themselves (`shared_embedding`).

What is kept: weights, optimizer state (fp32 masters, Adam moments, SGD momentum, step counts,
param-group hyperparameters, loss scaler), learning-rate scheduler, iteration, consumed
samples/tokens, data-efficiency state and the training counters. The stored arguments get the
new layout. Per-rank RNG states are kept only when TP and PP are unchanged: they belong to
(pipeline stage, TP rank) positions that hold other layers after a change; a resumed run then
starts its RNG streams from --seed (with dropout on, the dropout masks differ from an
unconverted run's anyway, since they depend on the layout).

When the padded vocabulary differs between the layouts (--make-vocab-size-divisible-by x TP),
vocabulary-sized tensors keep their real rows and have their padding truncated or extended with
zero rows. That is exact: padding ids are never looked up, the models leave their logits out of
the softmax (their rows get no gradient and start at zero in a fresh model), so the converted
model computes the same losses and gradients as the source.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import types
from typing import Any, Dict, List, Optional, Tuple

import torch

from megatron.core.files import atomic_write_text, temporary_path
from megatron.core.models.common import WORD_EMBEDDINGS, global_named_parameters, pad_vocab_size
from megatron.core.parallel_state import ParallelState, RankLayout
from megatron.core.tensor_parallel.init import shard_of
from megatron.core.transformer.config import TransformerConfig

from . import checkpointing as ckpt
from .checkpoint_names import upgrade_bert_names

logger = logging.getLogger(__name__)

MODEL_TYPES = ("GPT", "BERT")
_NOT_STATE = ("name", "shape", "step")


@dataclasses.dataclass(frozen=True)
class Layout:
    """A parallel layout: TP size, PP size and model chunks per pipeline rank (1 = no VPP)."""

    tp: int
    pp: int
    vpp: int = 1

    @property
    def virtual(self) -> Optional[int]:
        """The virtual pipeline size as RankLayout stores it (None without VPP)."""
        return self.vpp if self.vpp > 1 else None

    def __str__(self) -> str:
        return f"TP{self.tp}xPP{self.pp}" + (f"xVPP{self.vpp}" if self.vpp > 1 else "")


@dataclasses.dataclass
class ParamSpec:
    """One parameter of one model chunk, as the meta-device model describes it."""

    name: str
    """Layout-independent global name (checkpoint key)."""
    local_name: str
    """Name inside the chunk module (local layer numbers; optimizer entry names)."""
    shape: Tuple[int, ...]
    """Full (TP-merged) shape."""
    partition_dim: Optional[int]
    """Dimension split over TP ranks (None: replicated)."""
    partition_stride: int
    """Interleaved blocks along partition_dim (2 for a fused gate/up projection)."""
    tied_to: Optional[str]
    """For the last stage's copy of the tied word embeddings: the name of the original."""
    trainable: bool
    """Whether the optimizer holds state for it."""


@dataclasses.dataclass
class MergedCheckpoint:
    """A checkpoint as full tensors, independent of any layout."""

    args: Dict[str, Any]
    iteration: int
    release: bool
    model_type: str
    layout: Layout
    padded_vocab_size: int
    model: Dict[str, torch.Tensor]
    """{global name: full tensor}, in model order (tied copies left out)."""
    optimizer: Optional[Dict[str, Any]]
    """{"meta": canonical state without params, "params": {name: {field: full tensor, "step"}},
    "groups": [set of names per param group]} or None."""
    common: Dict[str, Any]
    """Other top-level entries (scheduler, counters, data-efficiency state)."""
    rng_state: Dict[Tuple[int, int], Any]
    """{(tp rank, pp rank): per-DP-rank RNG states} of the source files."""


# ---- layouts and parameter specs -------------------------------------------------------------
def layout_of(args: Dict[str, Any]) -> Layout:
    """The layout a checkpoint was saved with (from its stored arguments)."""
    par, tr = args["parallel"], args["transformer"]
    tp, pp = par["tensor_model_parallel_size"], par["pipeline_model_parallel_size"]
    per_chunk = par.get("num_layers_per_virtual_pipeline_stage")
    vpp = tr["num_layers"] // pp // per_chunk if per_chunk else 1
    # checkpoints of earlier versions also stored the virtual size with the transformer options
    return Layout(tp, pp, tr.get("virtual_pipeline_model_parallel_size") or vpp)


def target_layout(
    args: Dict[str, Any], tp: int, pp: int, layers_per_virtual_stage: Optional[int]
) -> Layout:
    """Validate a target layout against the model (raises ValueError naming the flag)."""
    num_layers = args["transformer"]["num_layers"]
    if tp < 1 or pp < 1:
        raise ValueError(f"target sizes must be >= 1, got TP {tp}, PP {pp}")
    if num_layers % pp:
        raise ValueError(
            f"--target-pipeline-parallel-size {pp} does not divide the {num_layers} layers"
        )
    vpp = 1
    if layers_per_virtual_stage is not None:
        per_stage = num_layers // pp
        if pp < 2 or layers_per_virtual_stage < 1 or per_stage % layers_per_virtual_stage:
            raise ValueError(
                f"--target-num-layers-per-virtual-pipeline-stage {layers_per_virtual_stage} must "
                f"divide the {per_stage} layers of each of the {pp} pipeline stages (and needs "
                "--target-pipeline-parallel-size >= 2)"
            )
        vpp = per_stage // layers_per_virtual_stage
    return Layout(tp, pp, vpp)


def transformer_config(args: Dict[str, Any], layout: Layout) -> TransformerConfig:
    """TransformerConfig of the stored arguments, checked against the given layout."""
    stored = dict(args["transformer"])
    names = {f.name for f in dataclasses.fields(TransformerConfig) if f.init}
    values = {k: v for k, v in stored.items() if k in names}
    values["params_dtype"] = getattr(torch, str(values.get("params_dtype", "float32")))
    try:
        config = TransformerConfig(**values)
        config.check_layout(RankLayout(layout.tp * layout.pp, layout.tp, layout.pp, layout.virtual))
    except ValueError as err:
        raise ValueError(f"layout {layout} does not fit the model: {err}") from None
    return config


def _meta_chunk(args, model_type: str, config, layout: Layout, vocab: int, pp_rank: int, vp):
    """One model chunk of the layout on the meta device (TP 1: full shapes, no groups)."""
    from megatron.core.models import BertModel, GPTModel

    ranks = {"pp": list(range(layout.pp))}
    pstate = ParallelState(RankLayout(layout.pp, 1, layout.pp, layout.virtual), pp_rank, {}, ranks)
    first = pp_rank == 0 and (vp or 0) == 0
    last = pp_rank == layout.pp - 1 and (vp is None or vp == layout.vpp - 1)
    model = args["model"]
    common = dict(pstate=pstate, pre_process=first, post_process=last, vp_rank=vp)
    with torch.device("meta"):
        if model_type == "BERT":
            binary_head = not model.get("bert_no_binary_head", False)
            return BertModel(
                config,
                vocab,
                model["max_position_embeddings"],
                add_binary_head=binary_head,
                **common,
            )
        tied = not model.get("untie_embeddings_and_output_weights", False)
        return GPTModel(
            config,
            vocab,
            model["max_position_embeddings"],
            share_embeddings_and_output_weights=tied,
            **common,
        )


def _spec_of(name: str, local: str, p: torch.nn.Parameter) -> ParamSpec:
    sharded = getattr(p, "tensor_model_parallel", False)
    copy_of_embeddings = getattr(p, "shared_embedding", False) and name != WORD_EMBEDDINGS
    return ParamSpec(
        name=name,
        local_name=local,
        shape=tuple(p.shape),
        partition_dim=p.partition_dim if sharded else None,
        partition_stride=getattr(p, "partition_stride", 1) if sharded else 1,
        tied_to=WORD_EMBEDDINGS if copy_of_embeddings else None,
        trainable=p.requires_grad,
    )


def chunk_specs(args, model_type: str, layout: Layout, padded_vocab: int):
    """specs[pp_rank][vp_rank] = [ParamSpec] of that model chunk, in module order.

    Built from meta-device models at TP 1 (full shapes); the partition metadata the layers attach
    does not depend on the TP size.
    """
    config = transformer_config(args, layout)
    out = []
    for pp_rank in range(layout.pp):
        stage = []
        for vp in range(layout.vpp):
            vp_rank = vp if layout.virtual else None
            chunk = _meta_chunk(args, model_type, config, layout, padded_vocab, pp_rank, vp_rank)
            named = zip(global_named_parameters(chunk), chunk.named_parameters())
            stage.append([_spec_of(name, local, p) for (name, p), (local, _) in named])
        out.append(stage)
    return out


def infer_model_type(model_keys) -> str:
    """BERT when the checkpoint has its masked-LM head or token-type embeddings, else GPT."""
    bert = ("lm_head.", "encoder.", "embedding.tokentype_embeddings.")
    return "BERT" if any(k.startswith(bert) for k in model_keys) else "GPT"


# ---- TP merge / split ------------------------------------------------------------------------
def merge_shards(shards: List[torch.Tensor], spec: ParamSpec) -> torch.Tensor:
    """The full tensor from the TP shards of one parameter (inverse of `split_tensor`)."""
    if spec.partition_dim is None or len(shards) == 1:
        return shards[0]
    dim, stride = spec.partition_dim, spec.partition_stride
    pieces = [s.chunk(stride, dim=dim) for s in shards]
    return torch.cat([pieces[r][k] for k in range(stride) for r in range(len(shards))], dim=dim)


def split_tensor(full: torch.Tensor, spec: ParamSpec, tp_rank: int, tp_size: int) -> torch.Tensor:
    """TP rank `tp_rank`'s shard of a full tensor (the same slicing as initialisation)."""
    if spec.partition_dim is None:
        return full
    marker = types.SimpleNamespace(
        tensor_model_parallel=True,
        partition_dim=spec.partition_dim,
        partition_stride=spec.partition_stride,
    )
    return shard_of(full, marker, tp_rank, tp_size).clone()


def _resize_vocab(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Truncate or zero-pad dim 0 to `rows`."""
    if t.shape[0] >= rows:
        return t[:rows].clone()
    pad = torch.zeros((rows - t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=0)


# ---- reading and merging ---------------------------------------------------------------------
def _iteration(root: str, iteration: Optional[int]) -> Tuple[int, bool]:
    if iteration is not None:
        return iteration, False
    it, release = ckpt.read_tracker(root)
    if it is None:
        raise FileNotFoundError(
            f"{root}: no {ckpt.TRACKER_FILENAME}; is this a checkpoint folder (--save of a run)? "
            "Pass the iteration explicitly if the tracker file is missing"
        )
    return it, release


def _read_files(
    root: str, iteration: int, release: bool, verify: bool = True
) -> Tuple[Dict[Tuple[int, int], Dict], Layout]:
    folder = ckpt.checkpoint_dir(root, iteration, release)
    first = None
    for shard in ("mp_rank_00", "mp_rank_00_000"):
        path = os.path.join(folder, shard, "model_optim_rng.pt")
        if os.path.isfile(path):
            first = ckpt.load_checkpoint_file(path, verify)
            break
    if first is None:
        raise FileNotFoundError(
            f"{folder}: no mp_rank_00[_000]/model_optim_rng.pt; not a checkpoint of this format"
        )
    layout = layout_of(first["args"])
    expected = {}  # {relative path: (tp rank, pp rank)}
    for t in range(layout.tp):
        for p in range(layout.pp):
            path = ckpt.checkpoint_file(root, iteration, t, p, layout.pp, release)
            expected[os.path.relpath(path, folder)] = (t, p)
    shards = [d for d in os.listdir(folder) if d.startswith("mp_rank_")]
    on_disk = {os.path.join(d, "model_optim_rng.pt") for d in shards}
    if on_disk != set(expected):
        raise ValueError(
            f"{folder}: the stored arguments say {layout} ({len(expected)} files) but the folder "
            f"holds {sorted(on_disk)}; the checkpoint is incomplete or mixed"
        )
    files = {(0, 0): first}
    for rel, key in expected.items():
        if key != (0, 0):
            files[key] = ckpt.load_checkpoint_file(os.path.join(folder, rel), verify)
    return files, layout


def _model_key(layout: Layout, vp: int) -> str:
    return "model" if layout.vpp == 1 else f"model{vp}"


def _model_order(layout: Layout):
    """(pp rank, vp rank) of every chunk in model order (virtual stage-major)."""
    return [(p, v) for v in range(layout.vpp) for p in range(layout.pp)]


def _merge_chunk(stored: List[Dict[str, torch.Tensor]], chunk: List[ParamSpec], where: str):
    names, found = {s.name for s in chunk}, set(stored[0])
    if found != names:
        raise ValueError(
            f"{where} does not match the model its stored arguments describe: extra "
            f"{sorted(found - names)[:5]}, missing {sorted(names - found)[:5]}; pass --model-type "
            "if it was guessed wrong"
        )
    for spec in chunk:
        full = merge_shards([sd[spec.name] for sd in stored], spec)
        if tuple(full.shape) != spec.shape:
            raise ValueError(
                f"{spec.name}: merged shape {tuple(full.shape)}, the model expects {spec.shape}"
            )
        yield spec, full


def _merge_model(files, specs, layout: Layout) -> Dict[str, torch.Tensor]:
    model: Dict[str, torch.Tensor] = {}
    copies: Dict[str, torch.Tensor] = {}
    for pp_rank, vp in _model_order(layout):
        key = _model_key(layout, vp)
        stored = [files[(t, pp_rank)][key] for t in range(layout.tp)]
        for spec, full in _merge_chunk(stored, specs[pp_rank][vp], f"{key} of PP rank {pp_rank}"):
            (copies if spec.tied_to else model)[spec.name] = full
    for name, copy in copies.items():
        original = model.get(WORD_EMBEDDINGS)
        if original is not None and not torch.equal(original, copy):
            logger.warning(
                "tied copy %s differs from %s by up to %.3g; keeping %s",
                name,
                WORD_EMBEDDINGS,
                (original - copy).abs().max().item(),
                WORD_EMBEDDINGS,
            )
    return model


def _optimizer_order(stage: List[List[ParamSpec]], layout: Layout) -> List[Tuple[str, ParamSpec]]:
    """(optimizer entry name, spec) of one pipeline rank's trainable parameters, in order."""
    prefix = (lambda vp: f"chunk{vp}.") if layout.vpp > 1 else (lambda vp: "")
    return [
        (prefix(vp) + s.local_name, s)
        for vp, chunk in enumerate(stage)
        for s in chunk
        if s.trainable
    ]


def _merge_optimizer(files, specs, layout: Layout) -> Optional[Dict[str, Any]]:
    if any(sd.get("optimizer") is None for sd in files.values()):
        return None
    first = files[(0, 0)]["optimizer"]
    meta = {k: v for k, v in first.items() if k != "params"}
    meta["param_groups"] = [
        {k: v for k, v in g.items() if k != "params"} for g in first["param_groups"]
    ]
    params: Dict[str, Dict[str, Any]] = {}
    groups: List[set] = [set() for _ in first["param_groups"]]
    for pp_rank, stage in enumerate(specs):
        order = _optimizer_order(stage, layout)
        per_tp = [files[(t, pp_rank)]["optimizer"]["params"] for t in range(layout.tp)]
        if any(len(e) != len(order) for e in per_tp):
            raise ValueError(
                f"optimizer state of PP rank {pp_rank} has {len(per_tp[0])} entries, the model "
                f"{len(order)}; was it saved by another version of the model?"
            )
        for i, (entry_name, spec) in enumerate(order):
            entries = [e[i] for e in per_tp]
            if entries[0]["name"] != entry_name:
                found = entries[0]["name"]
                raise ValueError(
                    f"optimizer entry {i} of PP rank {pp_rank} is {found!r}, "
                    f"expected {entry_name!r}"
                )
            fields = [
                k for k, v in entries[0].items() if k not in _NOT_STATE and torch.is_tensor(v)
            ]
            merged = {f: merge_shards([e[f] for e in entries], spec) for f in fields}
            if "step" in entries[0]:
                merged["step"] = entries[0]["step"]
            if not spec.tied_to:
                params[spec.name] = merged
        for gi, g in enumerate(files[(0, pp_rank)]["optimizer"]["param_groups"]):
            groups[gi].update(order[idx][1].name for idx in g["params"])
    return {"meta": meta, "params": params, "groups": groups}


def load_merged(
    load_dir: str,
    iteration: Optional[int] = None,
    model_type: Optional[str] = None,
    verify: bool = True,
) -> MergedCheckpoint:
    """Read every file of a checkpoint and merge it into full, layout-free tensors.

    Args:
        load_dir: the checkpoint folder (what --save pointed at).
        iteration: which iteration (default: the tracker file's).
        model_type: "GPT" or "BERT" (default: guessed from the parameter names).
        verify: check each file against its checksum first (see `checkpointing`).
    """
    it, release = _iteration(load_dir, iteration)
    files, layout = _read_files(load_dir, it, release, verify)
    first = files[(0, 0)]
    args = first["args"]
    first_model = first[_model_key(layout, 0)]
    chunks = [c for sd in files.values() for k, c in sd.items() if k.startswith("model")]
    model_type = model_type or infer_model_type([name for c in chunks for name in c])
    if model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type must be one of {MODEL_TYPES}, got {model_type!r}")
    if model_type == "BERT":
        for key, sd in files.items():
            upgrade_bert_names(sd, f"{load_dir} (TP rank {key[0]}, PP rank {key[1]})")
        first_model = first[_model_key(layout, 0)]
    vocab = first_model[WORD_EMBEDDINGS].shape[0] * layout.tp
    specs = chunk_specs(args, model_type, layout, vocab)
    skip = {"args", "optimizer", "rng_state"}
    return MergedCheckpoint(
        args=args,
        iteration=it,
        release=release,
        model_type=model_type,
        layout=layout,
        padded_vocab_size=vocab,
        model=_merge_model(files, specs, layout),
        optimizer=_merge_optimizer(files, specs, layout),
        common={k: v for k, v in first.items() if k not in skip and not k.startswith("model")},
        rng_state={key: sd.get("rng_state") for key, sd in files.items()},
    )


# ---- splitting and writing -------------------------------------------------------------------
def tokenizer_vocab_size(args: Dict[str, Any]) -> Optional[int]:
    """Unpadded vocabulary size of the stored tokenizer, None when it cannot be built here."""
    tok = args.get("tokenizer")
    if not tok:
        return None
    try:
        from megatron.tokenizer import build_stored_tokenizer

        return build_stored_tokenizer(tok).vocab_size
    except (OSError, ValueError, ImportError) as err:
        logger.info("cannot build the stored tokenizer (%s)", err)
        return None


def target_vocab_size(
    merged: MergedCheckpoint, target: Layout, true_vocab_size: Optional[int] = None
) -> int:
    """The padded vocabulary a run at `target` builds (--make-vocab-size-divisible-by x TP).

    Raises ValueError when `true_vocab_size` (--true-vocab-size) cannot be the source's: it does
    not pad to the source's rows, or the stored tokenizer says otherwise (a smaller one would
    cut real rows off).
    """
    divisible = merged.args["model"]["make_vocab_size_divisible_by"]
    src = merged.padded_vocab_size
    vocab = true_vocab_size or tokenizer_vocab_size(merged.args)
    if true_vocab_size is not None:
        _check_true_vocab_size(merged, true_vocab_size, divisible)
    if vocab is not None:
        return pad_vocab_size(vocab, divisible, target.tp)
    # Unknown tokenizer: the source padding bounds it to (src - divisible x TP, src] ids; when
    # every size in that range pads to the same target size, that is the answer.
    smallest = max(1, src - divisible * merged.layout.tp + 1)
    candidates = {pad_vocab_size(v, divisible, target.tp) for v in (smallest, src)}
    if len(candidates) == 1:
        return candidates.pop()
    raise ValueError(
        f"the padded vocabulary ({src} rows at TP {merged.layout.tp}) may change at TP "
        f"{target.tp}, but the tokenizer's vocabulary size is unknown (its files could not be "
        "read); pass --true-vocab-size"
    )


def _check_true_vocab_size(merged: MergedCheckpoint, true_vocab_size: int, divisible: int) -> None:
    src, tp = merged.padded_vocab_size, merged.layout.tp
    if pad_vocab_size(true_vocab_size, divisible, tp) != src:
        raise ValueError(
            f"--true-vocab-size {true_vocab_size} pads to "
            f"{pad_vocab_size(true_vocab_size, divisible, tp)} rows at TP {tp}, but the source "
            f"has {src} (--make-vocab-size-divisible-by {divisible}): pass the vocabulary size "
            f"of the tokenizer it was trained with (between {max(1, src - divisible * tp + 1)} "
            f"and {src})"
        )
    stored = tokenizer_vocab_size(merged.args)
    if stored is not None and stored != true_vocab_size:
        raise ValueError(
            f"--true-vocab-size {true_vocab_size} differs from the stored tokenizer's {stored} "
            "ids; drop --true-vocab-size (the stored tokenizer is readable)"
        )


def _fit(t: torch.Tensor, spec: ParamSpec) -> torch.Tensor:
    """`t` shaped like `spec` (vocabulary-sized tensors are truncated or zero-padded)."""
    if tuple(t.shape) == spec.shape:
        return t
    if tuple(t.shape[1:]) != spec.shape[1:]:
        raise ValueError(f"{spec.name}: source shape {tuple(t.shape)} cannot become {spec.shape}")
    return _resize_vocab(t, spec.shape[0])  # vocabulary padding changed


def _source_name(table: Dict[str, Any], spec: ParamSpec) -> str:
    """Where a parameter comes from: itself, or the original of a tied copy."""
    if spec.name in table:
        return spec.name
    if spec.tied_to in table:
        return spec.tied_to
    raise ValueError(f"{spec.name}: not in the source checkpoint")


def _new_args(merged: MergedCheckpoint, target: Layout) -> Dict[str, Any]:
    import copy

    args = copy.deepcopy(merged.args)
    src = merged.layout
    dp = max(1, int(args.get("world_size", src.tp * src.pp)) // (src.tp * src.pp))
    num_layers = args["transformer"]["num_layers"]
    args["parallel"].update(
        tensor_model_parallel_size=target.tp,
        pipeline_model_parallel_size=target.pp,
        num_layers_per_virtual_pipeline_stage=(
            num_layers // (target.pp * target.vpp) if target.virtual else None
        ),
    )
    for stale in (  # layout fields of earlier versions' transformer options
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size",
    ):
        args["transformer"].pop(stale, None)
    args["world_size"] = dp * target.tp * target.pp
    return args


def _split_optimizer(
    merged: MergedCheckpoint, stage, target: Layout, tp_rank: int
) -> Optional[Dict]:
    opt = merged.optimizer
    if opt is None:
        return None
    order = _optimizer_order(stage, target)
    entries = []
    for entry_name, spec in order:
        source = opt["params"][_source_name(opt["params"], spec)]
        entry: Dict[str, Any] = {"name": entry_name}
        for field, value in source.items():
            if field != "step":
                value = split_tensor(_fit(value, spec), spec, tp_rank, target.tp)
            entry[field] = value
        full_meta = torch.empty(spec.shape, device="meta")
        entry["shape"] = list(split_tensor(full_meta, spec, tp_rank, target.tp).shape)
        entries.append(entry)
    # Group membership by name; a tied copy the source did not have joins its original's group.
    known = set().union(*opt["groups"]) if opt["groups"] else set()
    keys = [s.name if s.name in known else s.tied_to for _, s in order]
    groups = []
    for hyper, members in zip(opt["meta"]["param_groups"], opt["groups"]):
        groups.append({**hyper, "params": [i for i, key in enumerate(keys) if key in members]})
    return {**opt["meta"], "param_groups": groups, "params": entries}


def split_merged(
    merged: MergedCheckpoint,
    target: Layout,
    true_vocab_size: Optional[int] = None,
    keep_optimizer: bool = True,
) -> Dict[Tuple[int, int], Dict[str, Any]]:
    """{(tp rank, pp rank): checkpoint file contents} of `merged` in the target layout."""
    vocab = target_vocab_size(merged, target, true_vocab_size)
    if vocab != merged.padded_vocab_size:
        logger.warning(
            "padded vocabulary changes from %d to %d rows", merged.padded_vocab_size, vocab
        )
    specs = chunk_specs(merged.args, merged.model_type, target, vocab)
    args = _new_args(merged, target)
    same_ranks = (target.tp, target.pp) == (merged.layout.tp, merged.layout.pp)
    out = {}
    for pp_rank, stage in enumerate(specs):
        full = [
            {s.name: _fit(merged.model[_source_name(merged.model, s)], s) for s in chunk}
            for chunk in stage
        ]
        for tp_rank in range(target.tp):
            sd = dict(merged.common)
            sd["args"] = args
            for vp, chunk in enumerate(stage):
                sd[_model_key(target, vp)] = {
                    s.name: split_tensor(full[vp][s.name], s, tp_rank, target.tp) for s in chunk
                }
            sd["optimizer"] = (
                _split_optimizer(merged, stage, target, tp_rank) if keep_optimizer else None
            )
            sd["rng_state"] = merged.rng_state.get((tp_rank, pp_rank)) if same_ranks else None
            out[(tp_rank, pp_rank)] = sd
    return out


def save_files(
    files: Dict[Tuple[int, int], Dict[str, Any]],
    save_dir: str,
    iteration: int,
    release: bool,
    pp: int,
) -> str:
    """Write a converted iteration atomically: a temporary folder (each file with its checksum)
    renamed into place, then the tracker file. Refuses to overwrite an existing iteration
    folder; removes what killed conversions left in `save_dir` first."""
    final = ckpt.checkpoint_dir(save_dir, iteration, release)
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; choose another --save-dir or remove it first")
    os.makedirs(save_dir, exist_ok=True)
    ckpt.remove_stale_checkpoint_temporaries(save_dir)
    tmp = temporary_path(final)
    try:
        for (tp_rank, pp_rank), sd in files.items():
            rel = os.path.relpath(
                ckpt.checkpoint_file(save_dir, iteration, tp_rank, pp_rank, pp, release), final
            )
            ckpt.save_shard(sd, os.path.join(tmp, rel))
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    atomic_write_text(
        os.path.join(save_dir, ckpt.TRACKER_FILENAME), "release" if release else str(iteration)
    )
    return final


def convert_checkpoint(
    load_dir: str,
    save_dir: str,
    target_tensor_parallel_size: int,
    target_pipeline_parallel_size: int,
    target_num_layers_per_virtual_pipeline_stage: Optional[int] = None,
    *,
    iteration: Optional[int] = None,
    model_type: Optional[str] = None,
    true_vocab_size: Optional[int] = None,
    keep_optimizer: bool = True,
    verify: bool = True,
) -> str:
    """Convert a checkpoint to another TP / PP (/ VPP) layout; returns the new iteration folder.

    The data-parallel size is free at load time (the optimizer state is DP-independent), so it
    is not part of the layout; the stored world size keeps the source's DP size. Every source
    file is checked against its checksum unless `verify` is False.
    """
    merged = load_merged(load_dir, iteration, model_type, verify)
    return write_merged(
        merged,
        save_dir,
        target_tensor_parallel_size,
        target_pipeline_parallel_size,
        target_num_layers_per_virtual_pipeline_stage,
        true_vocab_size=true_vocab_size,
        keep_optimizer=keep_optimizer,
        source=load_dir,
    )


def write_merged(
    merged: MergedCheckpoint,
    save_dir: str,
    target_tensor_parallel_size: int,
    target_pipeline_parallel_size: int,
    target_num_layers_per_virtual_pipeline_stage: Optional[int] = None,
    *,
    true_vocab_size: Optional[int] = None,
    keep_optimizer: bool = True,
    source: str = "checkpoint",
) -> str:
    """Split a merged checkpoint into the target layout and save it (see `save_files`);
    returns the new iteration folder."""
    target = target_layout(
        merged.args,
        target_tensor_parallel_size,
        target_pipeline_parallel_size,
        target_num_layers_per_virtual_pipeline_stage,
    )
    files = split_merged(merged, target, true_vocab_size, keep_optimizer)
    folder = save_files(files, save_dir, merged.iteration, merged.release, target.pp)
    logger.info(
        "converted %s (%s, iteration %d) to %s in %s",
        source,
        merged.layout,
        merged.iteration,
        target,
        folder,
    )
    return folder

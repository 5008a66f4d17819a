"""GPT and BERT under tensor parallelism (TP=2, with and without sequence parallelism) against
the same model on one rank: same losses and same gradients (shards gathered to full tensors),
from the layout-independent initialisation `model.initialize(seed)`.

The helpers here (batches, forward steps, chunk building, gradient gathering) are also used by
test_pipeline_schedules.py.
"""

from __future__ import annotations

import functools
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.core.models import BertModel, GPTModel
from megatron.core.models.common import global_named_parameters
from megatron.core.parallel_state import ParallelState
from megatron.core.pipeline_parallel.schedules import forward_backward_no_pipelining
from megatron.core.transformer import TransformerConfig
from tests.distributed.launcher import run_distributed

VOCAB, MAX_POS, SEED = 64, 16, 1234
WORD_EMB = "embedding.word_embeddings.weight"


# ---- shared helpers ------------------------------------------------------------------------
def make_config(**kw) -> TransformerConfig:
    base = dict(
        num_layers=4,
        hidden_size=32,
        num_attention_heads=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    base.update(kw)
    return TransformerConfig(**base)


def gpt_batches(m: int, s: int, b: int, seed: int, vocab: int = VOCAB) -> List[dict]:
    """Micro-batches shaped like the GPT dataset's: text [b, s + 1], positions, loss mask."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(m):
        mask = (torch.rand(b, s, generator=g) > 0.2).float()
        mask[:, 0] = 1.0
        out.append(
            {
                "text": torch.randint(0, vocab, (b, s + 1), generator=g),
                "position_ids": torch.arange(s).expand(b, s).clone(),
                "loss_mask": mask,
            }
        )
    return out


def _gpt_loss(loss_mask, output):
    loss = (output * loss_mask).sum() / loss_mask.sum()
    return loss, {"lm loss": loss.detach()}


def gpt_forward_step(data_iterator, model):
    """pretrain_gpt.forward_step's contract: every stage reads the whole micro-batch."""
    batch = next(data_iterator)
    tokens, labels = batch["text"][:, :-1], batch["text"][:, 1:]
    output = model(tokens, batch["position_ids"], None, labels=labels)
    return output, functools.partial(_gpt_loss, batch["loss_mask"])


def bert_batches(m: int, s: int, b: int, seed: int, vocab: int = VOCAB) -> List[dict]:
    """Sentence-pair micro-batches with padding, MLM labels (-1 = not predicted), SOP labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(m):
        padding = torch.ones(b, s, dtype=torch.long)
        padding[0, s - 2 :] = 0
        labels = torch.randint(0, vocab, (b, s), generator=g)
        predicted = (torch.rand(b, s, generator=g) < 0.3) & (padding == 1)
        predicted[:, 1] = True
        out.append(
            {
                "text": torch.randint(0, vocab, (b, s), generator=g),
                "types": (torch.arange(s) >= s // 2).long().expand(b, s).clone(),
                "padding_mask": padding,
                "labels": labels.masked_fill(~predicted, -1),
                "loss_mask": predicted.float(),
                "is_random": torch.randint(0, 2, (b,), generator=g),
            }
        )
    return out


def _bert_loss(batch, output):
    lm_loss, binary_logits = output
    mask = batch["loss_mask"]
    lm = (lm_loss * mask).sum() / mask.sum()
    sop = F.cross_entropy(binary_logits.float(), batch["is_random"])
    return lm + sop, {"lm loss": lm.detach(), "sop loss": sop.detach()}


def bert_forward_step(data_iterator, model):
    """pretrain_bert.forward_step's contract."""
    batch = next(data_iterator)
    output = model(
        batch["text"], batch["padding_mask"], batch["types"], lm_labels=batch["labels"].clamp(min=0)
    )
    return output, functools.partial(_bert_loss, batch)


KINDS = {
    "gpt": (GPTModel, gpt_batches, gpt_forward_step),
    "bert": (BertModel, bert_batches, bert_forward_step),
}


def build_chunks(
    kind: str, cfg: TransformerConfig, pstate: ParallelState, rows: int = VOCAB, **model_kw
) -> List[torch.nn.Module]:
    """This rank's model chunks (one per virtual stage, `rows` embedding rows), initialised
    from SEED."""
    cls = KINDS[kind][0]
    vpp = pstate.vpp_size
    chunks = []
    for v in range(vpp or 1):
        vp_rank = v if vpp else None
        model = cls(
            cfg,
            rows,
            MAX_POS,
            pstate,
            None,
            pre_process=pstate.is_pipeline_first_stage(vp_rank),
            post_process=pstate.is_pipeline_last_stage(vp_rank),
            vp_rank=vp_rank,
            **model_kw,
        )
        model.initialize(SEED)
        chunks.append(model)
    return chunks


def serial_reference(kind: str, cfg_kw: dict, batches: List[dict], rows: int = VOCAB, **model_kw):
    """(reports, {global name: grad}) of the whole model (`rows` embedding rows) on one rank, one
    micro-batch at a time."""
    cls, _, forward_step = KINDS[kind]
    kw = {
        k: v
        for k, v in cfg_kw.items()
        if k not in ("sequence_parallel", "tensor_model_parallel_size")
    }
    model = cls(make_config(**kw), rows, MAX_POS, **model_kw)
    model.initialize(SEED)
    reports = forward_backward_no_pipelining(
        forward_step_func=forward_step,
        data_iterator=iter(batches),
        model=model,
        num_microbatches=len(batches),
    )
    return reports, {n: p.grad for n, p in global_named_parameters(model)}


def _unshard(shards: List[torch.Tensor], param) -> torch.Tensor:
    """Inverse of the TP split: rank r holds blocks r, tp + r, ... of `stride * tp` blocks."""
    dim, stride, tp = param.partition_dim, getattr(param, "partition_stride", 1), len(shards)
    pieces = [shard.chunk(stride, dim=dim) for shard in shards]  # [rank][block within rank]
    return torch.cat([pieces[r][s] for s in range(stride) for r in range(tp)], dim=dim)


def gather_full_grads(chunks, pstate: ParallelState) -> Dict[str, torch.Tensor]:
    """Gradients of this rank's parameters as full tensors, by global name.

    TP shards are all-gathered; sequence-parallel replicated parameters (partial gradients) and
    the two copies of tied word embeddings (first and last stage) are summed, as the finalize
    step of training does. The last stage's copy is reported under the word embeddings' name.
    """
    out = {}
    for chunk in chunks:
        for name, p in global_named_parameters(chunk):
            g = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            if getattr(p, "sequence_parallel", False) and pstate.tp_group is not None:
                dist.all_reduce(g, group=pstate.tp_group)
            if getattr(p, "shared_embedding", False):
                if pstate.embedding_group is not None:
                    dist.all_reduce(g, group=pstate.embedding_group)
                name = WORD_EMB
            if getattr(p, "tensor_model_parallel", False) and pstate.tp_size > 1:
                shards = [torch.empty_like(g) for _ in range(pstate.tp_size)]
                dist.all_gather(shards, g.contiguous(), group=pstate.tp_group)
                g = _unshard(shards, p)
            out[name] = g
    return out


def assert_close_grads(
    full: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], where: str
) -> None:
    """Every gradient this rank holds equals the serial one."""
    assert full, where
    for name, g in full.items():
        assert name in ref, f"{where}: unexpected parameter {name}"
        torch.testing.assert_close(
            g, ref[name], rtol=1e-4, atol=2e-6, msg=lambda m, name=name: f"{where} {name}: {m}"
        )


def assert_close_reports(reports, ref_reports, where: str) -> None:
    assert len(reports) == len(ref_reports), where
    for i, (r, ref) in enumerate(zip(reports, ref_reports)):
        assert r.keys() == ref.keys(), where
        for k in r:
            torch.testing.assert_close(
                r[k],
                ref[k],
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, i=i, k=k: f"{where} mb {i} {k}: {m}",
            )


# ---- TP = 2 vs TP = 1 ----------------------------------------------------------------------
def _tp_body(rank, world_size, kind, variants):
    pstate = ParallelState.initialize(tensor_model_parallel_size=2)
    make_batches, forward_step = KINDS[kind][1:]
    names = {}
    for label, cfg_kw, model_kw in variants:
        batches = make_batches(2, 8, 2, seed=len(label))
        ref_reports, ref_grads = serial_reference(kind, cfg_kw, batches, **model_kw)
        cfg = make_config(**cfg_kw)
        (chunk,) = build_chunks(kind, cfg, pstate, **model_kw)
        reports = forward_backward_no_pipelining(
            forward_step_func=forward_step,
            data_iterator=iter(batches),
            model=chunk,
            num_microbatches=2,
            pstate=pstate,
            config=cfg,
        )
        assert_close_reports(reports, ref_reports, label)
        full = gather_full_grads([chunk], pstate)
        assert_close_grads(full, ref_grads, label)
        assert full.keys() == ref_grads.keys(), label
        names[label] = len(full)
    return names


GPT_VARIANTS = [
    ("gpt", {}, {}),
    (
        "gpt sp rope swiglu",
        dict(sequence_parallel=True, position_embedding_type="rope", swiglu=True),
        {},
    ),
    (
        "gpt sp rmsnorm nobias untied",
        dict(sequence_parallel=True, normalization="RMSNorm", add_bias_linear=False),
        dict(share_embeddings_and_output_weights=False),
    ),
]
BERT_VARIANTS = [("bert", {}, {}), ("bert sp", dict(sequence_parallel=True), {})]


def test_gpt_tensor_parallel_matches_serial():
    results = run_distributed(_tp_body, 2, "gpt", GPT_VARIANTS, timeout=180)
    assert results[0] == results[1] and len(results[0]) == len(GPT_VARIANTS)


def test_bert_tensor_parallel_matches_serial():
    results = run_distributed(_tp_body, 2, "bert", BERT_VARIANTS, timeout=180)
    assert results[0] == results[1] and len(results[0]) == len(BERT_VARIANTS)


# ---- a vocabulary padded differently at TP = 1 and TP = 2 -----------------------------------
# 70 ids with --make-vocab-size-divisible-by 16: 80 rows at TP 1, 96 at TP 2.
TRUE_VOCAB, ROWS_TP1, ROWS_TP2 = 70, 80, 96
VOCAB_SIZED = (WORD_EMB, "output_layer.weight", "output_layer.bias")


def real_rows(grads: Dict[str, torch.Tensor], where: str) -> Dict[str, torch.Tensor]:
    """The gradients with vocabulary-sized ones cut to the real ids; padding rows must have none."""
    out = {}
    for name, g in grads.items():
        if name in VOCAB_SIZED:
            assert not g[TRUE_VOCAB:].any(), f"{where}: padding rows of {name} got a gradient"
            g = g[:TRUE_VOCAB]
        out[name] = g
    return out


def _padded_body(rank, world_size, kind, variants):
    pstate = ParallelState.initialize(tensor_model_parallel_size=2)
    make_batches, forward_step = KINDS[kind][1:]
    for label, cfg_kw, model_kw in variants:
        model_kw = dict(model_kw, true_vocab_size=TRUE_VOCAB)
        batches = make_batches(2, 8, 2, seed=len(label), vocab=TRUE_VOCAB)
        ref_reports, ref_grads = serial_reference(kind, cfg_kw, batches, ROWS_TP1, **model_kw)
        cfg = make_config(**cfg_kw)
        (chunk,) = build_chunks(kind, cfg, pstate, ROWS_TP2, **model_kw)
        reports = forward_backward_no_pipelining(
            forward_step_func=forward_step,
            data_iterator=iter(batches),
            model=chunk,
            num_microbatches=2,
            pstate=pstate,
            config=cfg,
        )
        assert_close_reports(reports, ref_reports, label)
        full = real_rows(gather_full_grads([chunk], pstate), f"{label} TP2")
        assert full.keys() == ref_grads.keys(), label
        assert_close_grads(full, real_rows(ref_grads, f"{label} TP1"), label)
    return "ok"


@pytest.mark.parametrize(
    "kind,variants",
    [("gpt", [GPT_VARIANTS[0], GPT_VARIANTS[2]]), ("bert", BERT_VARIANTS[:1])],
    ids=["gpt", "bert"],
)
def test_vocabulary_padded_differently_per_tp_gives_the_same_model(kind, variants):
    """80 rows at TP 1 and 96 at TP 2 for 70 ids: the same losses and real-row gradients."""
    assert run_distributed(_padded_body, 2, kind, variants, timeout=180) == ["ok", "ok"]

"""Every parallel layout trains the same model: GPT and BERT at TP {1,2} x PP {1,2} x DP {1,2}
(and interleaved PP 2) give the single-process run's per-iteration losses and gradient norms and,
after 3 steps, its weights (checkpoint shards merged to full tensors with the conversion code of
tools/checkpoint_util.py).

How weights are compared, and why: summation order differs between layouts (TP splits matmul
reductions, DP sums gradients across ranks, gloo sums in its own order), so gradients agree to
rounding, not bit for bit. The quantity compared is the update (final - initial weights), and its
tolerance is what that rounding can do to it, term by term (`update_tolerance`):
- gradient rounding: every gradient element may be off by GRAD_RTOL (1e-5) of the tensor's
  largest gradient. Reordering an fp32 sum of n terms changes it by up to (n - 1) x eps32/2 of
  the terms' magnitudes, 1e-5 for n ~ 170, and the longest reductions here have 64-256 terms
  (tokens per batch, FFN width, vocabulary); the layouts measured differ by ~1 eps32 (1.2e-7).
  SGD with momentum is linear in the gradient, so its update may move by GRAD_RTOL of the largest
  update (rtol 1e-5, atol 1e-5 x max). Adam divides by sqrt(v) + eps: a step moves by at most ~lr
  whatever the gradient, but a gradient change dg changes it by up to 2 x lr / eps x dg, the most
  where the gradient is far below eps. With the default eps (1e-8) that gain is 6e5 and a
  gradient that is zero up to noise (the attention key bias: softmax is invariant to it) takes
  full +-lr steps whose sign is the noise's, so no tolerance below lr could work. The Adam cases
  therefore run with --adam-eps 1e-4 (gain 60 here), and their tolerance adds ITERS x 2 x lr / eps
  x GRAD_RTOL x (the tensor's largest gradient, bounded by the reference's Adam second moment):
  0.02-4.4% of the tensor's largest update, the most for biases with large gradients.
- fp32 storage: each step rounds the new weight to fp32; two runs whose exact values differ by d
  store values that differ by at most d + 1 ulp, and 1 ulp <= eps32 x |w|: ITERS x eps32 x max|w|.
A wrong shard, a missed or doubled reduction or a wrong micro-batch moves updates by a sizeable
fraction of lr or of the update itself, far beyond that; the tolerance is asserted to stay under
10% of each tensor's largest update, so a change of flags cannot make the comparison vacuous
(with the default Adam eps it would exceed the update itself).
Losses and gradient norms are compared at rtol 1e-5.

The fast subset (unmarked) covers TP, PP, DP, all three together, interleaving and BERT; the full
matrix is marked slow.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch

import pretrain_bert
import pretrain_gpt
from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.training import checkpoint_convert as cc
from megatron.training.data import build_datasets, core_dataset_kwargs
from megatron.training.training import pretrain
from tests.distributed.launcher import run_distributed

ITERS = 3
COMMON = (
    f"--num-layers 4 --hidden-size 32 --num-attention-heads 4 --train-iters {ITERS} "
    "--micro-batch-size 2 --global-batch-size 8 --tokenizer-type NullTokenizer --vocab-size 60 "
    # 61 ids padded to 64 at TP 1 and TP 2 alike (the default 128 x TP would differ).
    "--make-vocab-size-divisible-by 32 --hidden-dropout 0 --attention-dropout 0 --seed 11 "
    "--log-interval 100 --eval-iters 0 --num-workers 0"
).split()
SGD = ["--optimizer", "sgd", "--lr", "0.3", "--sgd-momentum", "0.9"]
ADAM = ["--optimizer", "adam", "--lr", "3e-3", "--adam-eps", "1e-4"]
# Relative rounding error of a gradient element, w.r.t. the tensor's largest gradient (see above).
GRAD_RTOL = 1e-5
GPT_ARGS = COMMON + ["--seq-length", "16", "--mock-data"]
# BERT special ids inside the NullTokenizer's 61 ids; corpus tokens are 4..59.
PAD, CLS, SEP, MASK, FIRST_WORD = 0, 1, 2, 3, 4


# ---- BERT data: a tiny sentence-split corpus -------------------------------------------------
def write_bert_corpus(prefix: str, seed: int = 5, num_docs: int = 40) -> None:
    """Documents of 2-6 sentences of 3-12 random word ids, one sequence per sentence."""
    rng = np.random.default_rng(seed)
    with IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32) as builder:
        for _ in range(num_docs):
            for _ in range(rng.integers(2, 7)):
                builder.add_item(rng.integers(FIRST_WORD, 60, rng.integers(3, 13)))
            builder.end_document()
        builder.finalize(prefix + ".idx")


def bert_datasets_provider(run, rt, num_samples):
    """pretrain_bert's provider with the special ids given explicitly (NullTokenizer has none)."""
    config = BertDatasetConfig(
        **core_dataset_kwargs(run),
        masking_probability=0.15,
        short_sequence_probability=0.1,
        classification_head=True,
        binary_head_type="sop",
        cls_id=CLS,
        sep_id=SEP,
        mask_id=MASK,
        pad_id=PAD,
        vocab_size=60,
    )
    return build_datasets(BertDataset, config, num_samples)


# ---- one run in N processes ------------------------------------------------------------------
def _train(rank: int, world_size: int, model: str, argv: List[str]) -> List[Dict]:
    if model == "gpt":
        providers = (
            pretrain_gpt.datasets_provider,
            pretrain_gpt.model_provider,
            pretrain_gpt.forward_step,
        )
    else:
        providers = (
            bert_datasets_provider,
            pretrain_bert.model_provider,
            pretrain_bert.forward_step,
        )
    history: List[Dict] = []
    pretrain(*providers, argv=argv, history=history)
    return [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in history]


def layout_flags(tp: int, pp: int, vpp_layers) -> List[str]:
    flags = ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    if vpp_layers:
        flags += ["--num-layers-per-virtual-pipeline-stage", str(vpp_layers)]
    return flags


def run_layout(model, base, tp, pp, dp, vpp_layers, save_dir):
    """(history of rank 0, merged full weights) of one training run."""
    argv = base + layout_flags(tp, pp, vpp_layers) + ["--save", str(save_dir)]
    histories = run_distributed(_train, tp * pp * dp, model, argv, timeout=240)
    return histories[0], cc.load_merged(str(save_dir)).model


def initial_weights(model: str, merged_args, vocab: int) -> Dict[str, torch.Tensor]:
    """The full weights every layout starts from (initialisation is keyed by global names; the
    rows of padding ids start at zero)."""
    from megatron.core.models import BertModel, GPTModel

    config = cc.transformer_config(merged_args, cc.Layout(1, 1))
    cls = GPTModel if model == "gpt" else BertModel
    max_pos = merged_args["model"]["max_position_embeddings"]
    net = cls(config, vocab, max_pos, true_vocab_size=cc.tokenizer_vocab_size(merged_args))
    net.initialize(merged_args["training"]["seed"])
    return {k: v.detach() for k, v in net.state_dict().items()}


# ---- references (single process) -------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert_data")
    write_bert_corpus(str(root / "corpus"))
    data = ["--data-path", str(root / "corpus"), "--data-cache-path", str(root / "cache")]
    return COMMON + ["--seq-length", "32", "--split", "100,0,0"] + data


@pytest.fixture(scope="module")
def references(tmp_path_factory, bert_base):
    """{(model, optimizer): (history, full weights, initial weights)}, computed on first use."""
    cache = {}

    def get(model: str, optimizer: str):
        key = (model, optimizer)
        if key not in cache:
            base = (GPT_ARGS if model == "gpt" else bert_base) + (
                SGD if optimizer == "sgd" else ADAM
            )
            save = tmp_path_factory.mktemp(f"ref_{model}_{optimizer}")
            history, weights = run_layout(model, base, 1, 1, 1, None, save)
            merged = cc.load_merged(str(save))
            init = initial_weights(model, merged.args, merged.padded_vocab_size)
            cache[key] = (base, history, weights, init, adam_gradient_noise_bound(merged))
        return cache[key]

    return get


def adam_gradient_noise_bound(merged: cc.MergedCheckpoint) -> Dict[str, float]:
    """{parameter: how far Adam's ITERS steps can move a weight of it when each gradient element
    is off by GRAD_RTOL x the largest gradient of the tensor}; {} for SGD.

    Step t's update lr * m^ / (sqrt(v^) + eps) (bias-corrected moments, lr the peak learning
    rate) changes by at most lr / eps x dg through m^, and by at most sqrt(t) / 4 x lr / eps x dg
    through v^ (|m^| <= ~sqrt(v^), x / (x + eps)^2 <= 1 / (4 eps)): under 2 x lr / eps x dg for
    t <= 16. The largest gradient comes from the reference's second moment after T steps:
    v = (1 - b2) sum_t b2^(T-t) g_t^2 >= (1 - b2) b2^(T-1) g_t^2 bounds |g_t| at every step t.
    """
    opt = merged.args["optimizer"]
    if opt["optimizer"] != "adam":
        return {}
    lr, eps, beta2 = opt["lr"], opt["adam_eps"], opt["adam_beta2"]
    bound = {}
    for name, state in merged.optimizer["params"].items():
        steps = int(state["step"])
        g_max = (state["exp_avg_sq"] / ((1 - beta2) * beta2 ** (steps - 1))).sqrt().max().item()
        bound[name] = steps * 2 * (lr / eps) * GRAD_RTOL * g_max
    return bound


def update_tolerance(name, moved_ref, ref_w, init, adam_bound) -> float:
    """Absolute tolerance on the update of parameter `name` (module docstring, term by term)."""
    w_max = max(init[name].abs().max().item(), ref_w[name].abs().max().item())
    storage = ITERS * torch.finfo(torch.float32).eps * w_max
    return GRAD_RTOL * moved_ref.abs().max().item() + adam_bound.get(name, 0.0) + storage


def assert_same_training(ref, got, init, what: str, adam_bound=None) -> None:
    ref_hist, ref_w = ref
    hist, weights = got
    assert [h["iteration"] for h in hist] == list(range(1, ITERS + 1)), what
    for key in [k for k in ref_hist[0] if "loss" in k] + ["grad_norm"]:
        expect = [h[key] for h in ref_hist]
        actual = [h[key] for h in hist]
        np.testing.assert_allclose(actual, expect, rtol=1e-5, err_msg=f"{what}: {key}")
    assert list(weights) == list(ref_w), f"{what}: parameter names differ"
    for name, w in weights.items():
        moved_ref = ref_w[name] - init[name]
        moved = w - init[name]
        scale = moved_ref.abs().max().item()
        assert scale > 0, f"{what}: {name} did not train"
        atol = update_tolerance(name, moved_ref, ref_w, init, adam_bound or {})
        assert atol < 0.1 * scale, f"{what}: {name}: tolerance {atol:.3g} vs update {scale:.3g}"
        torch.testing.assert_close(
            moved,
            moved_ref,
            rtol=GRAD_RTOL,
            atol=atol,
            msg=lambda m, name=name: f"{what}: {name} update differs: {m}",
        )


# ---- the matrix ------------------------------------------------------------------------------
def _case(model, tp, pp, dp, vpp=None, optimizer="sgd", slow=True):
    marks = [pytest.mark.slow] if slow else []
    name = f"{model}-tp{tp}-pp{pp}-dp{dp}" + (f"-vpp{vpp}" if vpp else "") + f"-{optimizer}"
    return pytest.param(model, tp, pp, dp, vpp, optimizer, marks=marks, id=name)


FAST = {
    ("gpt", 2, 2, 2, None, "sgd"),
    ("gpt", 1, 2, 1, 1, "sgd"),
    ("gpt", 2, 2, 1, None, "adam"),
    ("bert", 2, 2, 1, None, "sgd"),
}
CASES = []
for _model in ("gpt", "bert"):
    for _tp in (1, 2):
        for _pp in (1, 2):
            for _dp in (1, 2):
                if (_tp, _pp, _dp) != (1, 1, 1):
                    CASES.append((_model, _tp, _pp, _dp, None, "sgd"))
    CASES.append((_model, 1, 2, 1, 1, "sgd"))  # interleaved: 2 virtual stages of 1 layer
    CASES.append((_model, 2, 2, 2, 1, "sgd"))
CASES.append(("gpt", 2, 2, 1, None, "adam"))
CASES.append(("gpt", 1, 1, 2, None, "adam"))
PARAMS = [_case(*c, slow=c not in FAST) for c in CASES]


@pytest.mark.parametrize("model,tp,pp,dp,vpp,optimizer", PARAMS)
def test_layout_matches_single_process(references, tmp_path, model, tp, pp, dp, vpp, optimizer):
    base, ref_hist, ref_w, init, adam_bound = references(model, optimizer)
    got = run_layout(model, base, tp, pp, dp, vpp, tmp_path)
    assert_same_training(
        (ref_hist, ref_w), got, init, f"{model} TP{tp} PP{pp} DP{dp} VPP-layers {vpp}", adam_bound
    )


# ---- a vocabulary that pads differently per TP -----------------------------------------------
# NullTokenizer --vocab-size 69 has 70 ids (69 + end of document); --make-vocab-size-divisible-by
# 16 x TP pads them to 80 rows at TP 1 and 96 at TP 2. The layouts above need no extra padding.
PADDED_VOCAB = ["--vocab-size", "69", "--make-vocab-size-divisible-by", "16"]
TRUE_VOCAB = 70
VOCAB_SIZED = ("embedding.word_embeddings.weight", "output_layer.weight", "output_layer.bias")


def real_rows(weights: Dict[str, torch.Tensor], what: str) -> Dict[str, torch.Tensor]:
    """Vocabulary-sized tensors cut to the real ids; their padding rows must be zero (they start
    at zero and get no gradient)."""
    out = {}
    for name, w in weights.items():
        if name in VOCAB_SIZED:
            assert not w[TRUE_VOCAB:].any(), f"{what}: padding rows of {name} are not zero"
            w = w[:TRUE_VOCAB]
        out[name] = w
    return out


@pytest.mark.parametrize("model", ["gpt", "bert"])
def test_vocabulary_padded_differently_per_tp_trains_the_same(bert_base, tmp_path, model):
    """TP 2 (96 rows) trains the TP 1 model (80 rows): the same losses, gradient norms and
    updates of every real row."""
    base = (GPT_ARGS if model == "gpt" else bert_base) + SGD + PADDED_VOCAB
    ref_hist, ref_w = run_layout(model, base, 1, 1, 1, None, tmp_path / "tp1")
    hist, weights = run_layout(model, base, 2, 1, 1, None, tmp_path / "tp2")
    merged = cc.load_merged(str(tmp_path / "tp1"))
    assert merged.padded_vocab_size == 80
    assert cc.load_merged(str(tmp_path / "tp2")).padded_vocab_size == 96
    init = real_rows(initial_weights(model, merged.args, 80), "init")
    ref = (ref_hist, real_rows(ref_w, "TP1"))
    assert_same_training(ref, (hist, real_rows(weights, "TP2")), init, f"{model} padded TP2")

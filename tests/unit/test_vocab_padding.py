"""Vocabulary padding (--make-vocab-size-divisible-by x TP) does not change the model.

A model whose embedding has 80 or 96 rows for a 70-id tokenizer is the model with exactly 70
rows: the real rows start the same, the padding rows start at zero, and padding ids take no part
in the softmax, the loss, the gradients of the real rows, the returned logits or generation.
"""

from __future__ import annotations

import pytest
import torch

from megatron.core.models import BertModel, GPTModel
from megatron.core.models.common import global_named_parameters
from megatron.core.transformer import TransformerConfig
from tools import generate as generate_tool

TRUE_VOCAB, S, B = 70, 12, 3
# 70 ids padded by --make-vocab-size-divisible-by 16: 80 rows at TP 1, 96 at TP 2 (and 70 = none).
PADDINGS = (70, 80, 96)
VOCAB_SIZED = ("embedding.word_embeddings.weight", "output_layer.weight", "output_layer.bias")


def _cfg(**kw) -> TransformerConfig:
    base = dict(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    base.update(kw)
    return TransformerConfig(**base)


def _build(kind: str, rows: int, seed: int = 3, **kw):
    if kind == "bert":
        model = BertModel(_cfg(), rows, S, true_vocab_size=TRUE_VOCAB)
    else:
        model = GPTModel(_cfg(), rows, S, true_vocab_size=TRUE_VOCAB, **kw)
    model.initialize(seed)
    return model


def _run(kind: str, model, ids, labels):
    """Loss summed over tokens (GPT) or tokens + binary head (BERT); backward done."""
    if kind == "bert":
        types = torch.zeros_like(ids)
        lm, binary = model(ids, torch.ones_like(ids), types, lm_labels=labels)
        loss = lm.sum() + binary.float().sum()
    else:
        loss = model(ids, torch.arange(S).expand(B, S), labels=labels).sum()
    loss.backward()
    return loss.detach()


KINDS = [("gpt", {}), ("gpt", {"share_embeddings_and_output_weights": False}), ("bert", {})]
IDS = pytest.mark.parametrize("kind,kw", KINDS, ids=["gpt", "gpt-untied", "bert"])


@IDS
def test_initialisation_of_the_real_rows_does_not_depend_on_the_padding(kind, kw):
    models = {rows: _build(kind, rows, **kw) for rows in PADDINGS}
    params = {rows: dict(global_named_parameters(m)) for rows, m in models.items()}
    seen = set()
    for name, exact in params[TRUE_VOCAB].items():
        for rows in PADDINGS[1:]:
            p = params[rows][name]
            if name in VOCAB_SIZED:
                seen.add(name)
                assert p.shape[0] == rows, name
                assert torch.equal(p[:TRUE_VOCAB], exact), f"{name}: real rows differ at {rows}"
                assert not p[TRUE_VOCAB:].any(), f"{name}: padding rows of {rows} are not zero"
            else:
                assert torch.equal(p, exact), name
    assert "embedding.word_embeddings.weight" in seen
    assert ("output_layer.weight" in seen) == bool(kw)


def _poison_padding(model, rows: int) -> None:
    """Large values in every padding row: they would dominate any softmax they took part in."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in global_named_parameters(model):
            if name in VOCAB_SIZED and p.shape[0] == rows:
                p[TRUE_VOCAB:] = 50.0 * torch.randn(p[TRUE_VOCAB:].shape, generator=g) + 20.0


@IDS
@pytest.mark.parametrize("rows", PADDINGS[1:])
def test_padding_takes_no_part_in_loss_gradients_or_logits(kind, kw, rows):
    exact, padded = _build(kind, TRUE_VOCAB, **kw), _build(kind, rows, **kw)
    _poison_padding(padded, rows)
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, TRUE_VOCAB, (B, S), generator=g)
    labels = torch.randint(0, TRUE_VOCAB, (B, S), generator=g)
    labels[0, :3] = TRUE_VOCAB - 1  # the last real id, next to the padding
    loss_exact, loss_padded = _run(kind, exact, ids, labels), _run(kind, padded, ids, labels)
    torch.testing.assert_close(loss_padded, loss_exact, rtol=1e-5, atol=1e-5)
    grads = {n: p.grad for n, p in global_named_parameters(padded)}
    for name, p in global_named_parameters(exact):
        got = grads[name]
        if name in VOCAB_SIZED:
            assert not got[TRUE_VOCAB:].any(), f"{name}: padding rows got a gradient"
            got = got[:TRUE_VOCAB]
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        if kind == "bert":
            types, ones = torch.zeros_like(ids), torch.ones_like(ids)
            logits, want = padded(ids, ones, types)[0], exact(ids, ones, types)[0]
        else:
            pos = torch.arange(S).expand(B, S)
            logits, want = padded(ids, pos), exact(ids, pos)
    assert logits.shape == (B, S, TRUE_VOCAB)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)


def test_true_vocab_size_must_fit_the_padded_vocabulary():
    with pytest.raises(ValueError, match=r"true_vocab_size 81 must be in \[1, vocab_size 80\]"):
        GPTModel(_cfg(), 80, S, true_vocab_size=81)
    with pytest.raises(ValueError, match="true_vocab_size 0"):
        BertModel(_cfg(), 80, S, true_vocab_size=0)


@pytest.mark.parametrize("greedy", [True, False])
def test_generation_never_samples_a_padding_id(greedy):
    """Poisoned padding rows win every argmax when they are in the logits; they are not."""
    sampling = dict(greedy=greedy, temperature=1.0, top_k=0, top_p=0.0)
    model = _build("gpt", 80).eval()
    _poison_padding(model, 80)
    out = generate_tool.generate(model, [1, 2, 3], 20, S, None, seed=0, **sampling)
    assert len(out) == 23 and max(out) < TRUE_VOCAB
    # What the exclusion prevents: the same weights with every row taken as a token.
    unaware = GPTModel(_cfg(), 80, S)
    unaware.load_state_dict(model.state_dict())
    out = generate_tool.generate(unaware.eval(), [1, 2, 3], 20, S, None, seed=0, **sampling)
    assert max(out[3:]) >= TRUE_VOCAB

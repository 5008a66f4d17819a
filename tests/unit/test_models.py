"""GPT / BERT forward: shapes, masks, and losses against a hand-written reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from megatron.core.models import BertModel, GPTModel
from megatron.core.models.common import global_named_parameters, pad_vocab_size
from megatron.core.parallel_state import RankLayout
from megatron.core.transformer import TransformerConfig

V, S, B = 64, 12, 3


def _cfg(**kw):
    base = dict(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    base.update(kw)
    return TransformerConfig(**base)


def _ref_layer(p, pre, x, mask_add, heads, swiglu=False):
    """Plain-torch pre-LN layer on x [b, s, h] with an additive mask [b or 1, 1, s, s]."""
    b, s, h = x.shape
    hn = h // heads
    ln = F.layer_norm(x, (h,), p[pre + "input_layernorm.weight"], p[pre + "input_layernorm.bias"])
    qkv = (
        ln @ p[pre + "self_attention.linear_qkv.weight"].t()
        + p[pre + "self_attention.linear_qkv.bias"]
    )
    qkv = qkv.view(b, s, heads, 3, hn)
    q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # [b, heads, s, hn]
    scores = q @ k.transpose(-1, -2) / math.sqrt(hn) + mask_add
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
    x = (
        x
        + ctx @ p[pre + "self_attention.linear_proj.weight"].t()
        + p[pre + "self_attention.linear_proj.bias"]
    )
    ln2 = F.layer_norm(
        x, (h,), p[pre + "pre_mlp_layernorm.weight"], p[pre + "pre_mlp_layernorm.bias"]
    )
    hid = ln2 @ p[pre + "mlp.linear_fc1.weight"].t() + p[pre + "mlp.linear_fc1.bias"]
    hid = 0.5 * hid * (1.0 + torch.erf(hid / math.sqrt(2.0)))
    return x + hid @ p[pre + "mlp.linear_fc2.weight"].t() + p[pre + "mlp.linear_fc2.bias"]


def _ref_gpt_loss(model, cfg, ids, labels):
    p = {n: t.detach() for n, t in global_named_parameters(model)}
    b, s = ids.shape
    x = (
        p["embedding.word_embeddings.weight"][ids]
        + p["embedding.position_embeddings.weight"][torch.arange(s)]
    )
    causal = torch.full((s, s), float("-inf")).triu(1)
    for i in range(cfg.num_layers):
        x = _ref_layer(p, f"decoder.layers.{i}.", x, causal, cfg.num_attention_heads)
    x = F.layer_norm(
        x,
        (cfg.hidden_size,),
        p["decoder.final_layernorm.weight"],
        p["decoder.final_layernorm.bias"],
    )
    logits = x @ p["embedding.word_embeddings.weight"].t()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    ).view(b, s)


def test_gpt_loss_matches_reference():
    cfg = _cfg()
    m = GPTModel(cfg, V, S)
    m.initialize(1234)
    ids, labels = torch.randint(0, V, (B, S)), torch.randint(0, V, (B, S))
    pos = torch.arange(S).expand(B, S)
    loss = m(ids, pos, None, labels=labels)
    assert loss.shape == (B, S) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, _ref_gpt_loss(m, cfg, ids, labels), rtol=1e-5, atol=1e-5)


def test_gpt_gradients_match_reference():
    cfg = _cfg()
    m = GPTModel(cfg, V, S)
    m.initialize(5)
    ids, labels = torch.randint(0, V, (B, S)), torch.randint(0, V, (B, S))
    m(ids, torch.arange(S).expand(B, S), None, labels=labels).mean().backward()
    ours = {n: p.grad.clone() for n, p in global_named_parameters(m)}
    for p in m.parameters():
        p.grad = None
    params = dict(global_named_parameters(m))
    # Reference gradients through the plain-torch forward using the same leaf tensors.
    ref = _ref_gpt_loss_with_grad(m, cfg, ids, labels, params)
    for n in ours:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)


def _ref_gpt_loss_with_grad(model, cfg, ids, labels, params):
    p = dict(params)
    b, s = ids.shape
    x = (
        p["embedding.word_embeddings.weight"][ids]
        + p["embedding.position_embeddings.weight"][torch.arange(s)]
    )
    causal = torch.full((s, s), float("-inf")).triu(1)
    for i in range(cfg.num_layers):
        x = _ref_layer(p, f"decoder.layers.{i}.", x, causal, cfg.num_attention_heads)
    x = F.layer_norm(
        x,
        (cfg.hidden_size,),
        p["decoder.final_layernorm.weight"],
        p["decoder.final_layernorm.bias"],
    )
    logits = x @ p["embedding.word_embeddings.weight"].t()
    F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1)).backward()
    return {n: t.grad for n, t in params.items()}


def test_gpt_causal_and_document_masks():
    cfg = _cfg()
    m = GPTModel(cfg, V, S)
    m.initialize(0)
    ids = torch.randint(0, V, (1, S))
    pos = torch.arange(S).unsqueeze(0)
    base = m(ids, pos)
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % V
    out = m(changed, pos)
    torch.testing.assert_close(out[:, :8], base[:, :8])  # the past never sees the future
    assert not torch.allclose(out[:, 8:], base[:, 8:])
    # Document mask: tokens 6.. form a second document that must not see tokens 0..5.
    doc = torch.zeros(1, 1, S, S, dtype=torch.bool)
    doc[..., 6:, :6] = True
    a = m(ids, pos, doc)
    other = ids.clone()
    other[0, :6] = (other[0, :6] + 3) % V
    b = m(other, pos, doc)
    torch.testing.assert_close(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize(
    "kw",
    [
        dict(position_embedding_type="rope"),
        dict(swiglu=True, normalization="RMSNorm", add_bias_linear=False),
        dict(ffn_hidden_size=48, kv_channels=16),
    ],
)
def test_gpt_variants_train(kw):
    cfg = _cfg(**kw)
    m = GPTModel(cfg, V, S, share_embeddings_and_output_weights=not kw.get("swiglu", False))
    m.initialize(3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    ids = torch.randint(0, V, (4, S))
    pos = torch.arange(S).expand(4, S)
    first = None
    for _ in range(20):
        loss = m(ids[:, :-1], pos[:, :-1], labels=ids[:, 1:]).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_rope_uses_position_ids():
    cfg = _cfg(position_embedding_type="rope")
    m = GPTModel(cfg, V, S)
    m.initialize(1)
    ids = torch.randint(0, V, (1, S))
    a = m(ids, torch.arange(S).unsqueeze(0))
    b = m(ids, (torch.arange(S) + 5).unsqueeze(0))
    # Rotary attention depends only on relative positions: shifting every position changes nothing.
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _ref_bert(model, cfg, ids, types, padding, labels):
    p = {n: t.detach() for n, t in global_named_parameters(model)}
    b, s = ids.shape
    x = (
        p["embedding.word_embeddings.weight"][ids]
        + p["embedding.position_embeddings.weight"][torch.arange(s)]
        + p["embedding.tokentype_embeddings.weight"][types]
    )
    mask = torch.zeros(b, 1, 1, s).masked_fill((padding == 0).view(b, 1, 1, s), float("-inf"))
    for i in range(cfg.num_layers):
        x = _ref_layer(p, f"encoder.layers.{i}.", x, mask, cfg.num_attention_heads)
    x = F.layer_norm(
        x,
        (cfg.hidden_size,),
        p["encoder.final_layernorm.weight"],
        p["encoder.final_layernorm.bias"],
    )
    t = F.gelu(x @ p["lm_head.dense.weight"].t() + p["lm_head.dense.bias"])
    t = F.layer_norm(
        t, (cfg.hidden_size,), p["lm_head.layer_norm.weight"], p["lm_head.layer_norm.bias"]
    )
    logits = t @ p["embedding.word_embeddings.weight"].t() + p["output_layer.bias"]
    lm = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="none").view(b, s)
    pooled = torch.tanh(x[:, 0] @ p["pooler.dense.weight"].t() + p["pooler.dense.bias"])
    return lm, pooled @ p["binary_head.weight"].t() + p["binary_head.bias"]


def test_bert_losses_match_reference_and_padding_is_ignored():
    cfg = _cfg()
    m = BertModel(cfg, V, S)
    m.initialize(11)
    ids, labels = torch.randint(0, V, (B, S)), torch.randint(0, V, (B, S))
    types = torch.zeros(B, S, dtype=torch.long)
    types[:, 6:] = 1
    padding = torch.ones(B, S, dtype=torch.long)
    padding[0, 9:] = 0
    lm, binary = m(ids, padding, types, lm_labels=labels)
    ref_lm, ref_bin = _ref_bert(m, cfg, ids, types, padding, labels)
    torch.testing.assert_close(lm, ref_lm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(binary, ref_bin, rtol=1e-5, atol=1e-5)
    other = ids.clone()
    other[0, 9:] = (other[0, 9:] + 7) % V  # change only padded tokens
    lm2, bin2 = m(other, padding, types, lm_labels=labels)
    torch.testing.assert_close(lm2[0, :9], lm[0, :9])
    torch.testing.assert_close(bin2, binary)


def test_init_is_seeded_and_scaled():
    cfg = _cfg(num_layers=4, init_method_std=0.05)
    a, b = GPTModel(cfg, V, S), GPTModel(cfg, V, S)
    a.initialize(1)
    b.initialize(1)
    for (n, p), (_, q) in zip(global_named_parameters(a), global_named_parameters(b)):
        assert torch.equal(p, q), n
    proj = dict(global_named_parameters(a))["decoder.layers.0.mlp.linear_fc2.weight"]
    assert proj.std().item() == pytest.approx(0.05 / math.sqrt(8), rel=0.1)
    assert dict(global_named_parameters(a))["decoder.layers.0.input_layernorm.weight"].eq(1).all()


def test_pad_vocab_size():
    assert pad_vocab_size(50257, 128, 1) == 50304
    assert pad_vocab_size(50257, 128, 2) == 50432


def test_config_validation_messages():
    with pytest.raises(
        ValueError, match="--hidden-size 30 is not divisible by --num-attention-heads 4"
    ):
        TransformerConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="--recompute-method"):
        TransformerConfig(recompute_granularity="full")
    with pytest.raises(ValueError, match="divisible by --pipeline-model-parallel-size"):
        TransformerConfig(num_layers=3).check_layout(RankLayout(2, 1, 2))

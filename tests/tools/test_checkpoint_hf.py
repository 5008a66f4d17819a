"""tools/checkpoint_to_hf.py and tools/checkpoint_from_hf.py: trained checkpoints of parallel
layouts exported to transformers compute the same logits as our model (fp32, atol 1e-5), load
with AutoModel* / AutoTokenizer and no custom code; HF folders imported at TP2 x PP2 compute the
HF model's logits, export back to identical tensors and continue pretraining."""

from __future__ import annotations

import logging

import pytest
import torch

from megatron.tokenizer import build_stored_tokenizer
from megatron.training import checkpointing as ckpt
from megatron.training import hf_export
from megatron.training.hf_tokenizer import save_hf_tokenizer
from megatron.training.serial_model import load_serial_model
from tests.conftest import TOKENIZER_DIR
from tests.integration.test_checkpoint_reshard import train
from tests.integration.test_layout_matrix import COMMON, bert_base  # noqa: F401 (fixture)
from tools import checkpoint_from_hf, checkpoint_to_hf

transformers = pytest.importorskip("transformers", reason="the HF export/import needs transformers")

SGD = ["--optimizer", "sgd", "--lr", "0.3", "--train-iters", "2"]
NULL_VOCAB = 61  # COMMON's NullTokenizer: 60 ids + its end-of-document id, padded to 64
GPT2_TOKENIZER = [
    *("--tokenizer-type", "GPT2BPETokenizer"),
    *("--vocab-file", str(TOKENIZER_DIR / "gpt2-vocab.json")),
    *("--merge-file", str(TOKENIZER_DIR / "gpt2-merges.txt")),
]
LLAMA_FLAGS = [
    *("--swiglu", "--position-embedding-type", "rope", "--normalization", "RMSNorm"),
    *("--disable-bias-linear", "--untie-embeddings-and-output-weights", "--rotary-base", "5000"),
]


def _with_tokenizer(flags, tokenizer):
    """COMMON with its NullTokenizer replaced by `tokenizer`."""
    i = flags.index("--tokenizer-type")
    return flags[:i] + flags[i + 4 :] + tokenizer


def _ids(vocab: int, b: int = 2, s: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(3))


def _export(load, out, *extra) -> None:
    assert checkpoint_to_hf.main(["--load", str(load), "--save-dir", str(out), *extra]) == 0


# ---- checkpoints trained at parallel layouts ---------------------------------------------------
@pytest.fixture(scope="module")
def gpt3_tp2pp2(tmp_path_factory):
    """GPT-3 architecture (learned positions, LayerNorm, GeLU, tied, biases), GPT-2 BPE
    tokenizer, trained 2 steps at TP2 x PP2."""
    root = tmp_path_factory.mktemp("gpt3")
    base = _with_tokenizer(COMMON, GPT2_TOKENIZER) + ["--seq-length", "16", "--mock-data"]
    train("gpt", base + SGD, 2, 2, None, 1, ["--save", str(root / "ckpt")])
    return root / "ckpt"


@pytest.fixture(scope="module")
def llama_tp2pp2_vpp(tmp_path_factory):
    """RoPE + SwiGLU + RMSNorm, untied, no biases, NullTokenizer, trained 2 steps at TP2 x PP2
    with 2 virtual stages per pipeline rank."""
    root = tmp_path_factory.mktemp("llama")
    base = COMMON + ["--seq-length", "16", "--mock-data"] + LLAMA_FLAGS + SGD
    train("gpt", base, 2, 2, 1, 1, ["--save", str(root / "ckpt")])
    return root / "ckpt"


def test_gpt3_at_tp2pp2_exports_to_gpt2_with_the_same_logits(gpt3_tp2pp2, tmp_path):
    _export(gpt3_tp2pp2, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    ours, merged = load_serial_model(str(gpt3_tp2pp2), true_vocab_size=50257)
    assert (merged.layout.tp, merged.layout.pp, merged.padded_vocab_size) == (2, 2, 50304)
    assert hf.config.vocab_size == 50257  # padding rows cut off
    assert hf.config.tie_word_embeddings
    ids = _ids(50257)
    with torch.no_grad():
        expect = ours(ids, torch.arange(16).expand(2, 16))
        got = hf(ids).logits
    assert got.shape == expect.shape == (2, 16, 50257)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)


def test_gpt2_tokenizer_files_give_our_ids(gpt3_tp2pp2, tmp_path):
    _export(gpt3_tp2pp2, tmp_path / "hf", "--dtype", "bf16")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = build_stored_tokenizer({"tokenizer_type": "GPT2BPETokenizer", **_gpt2_files()})
    text = "It is a truth universally acknowledged, that a single man\n in possession 1234 â€™ ü."
    assert hf_tok(text)["input_ids"] == ours.tokenize(text)
    assert hf_tok.eos_token_id == ours.eod
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")
    assert hf.transformer.wte.weight.dtype == torch.bfloat16


def _gpt2_files():
    return {
        "vocab_file": str(TOKENIZER_DIR / "gpt2-vocab.json"),
        "merge_file": str(TOKENIZER_DIR / "gpt2-merges.txt"),
    }


def test_llama_architecture_at_tp2pp2_vpp_exports_to_llama(llama_tp2pp2_vpp, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        _export(llama_tp2pp2_vpp, tmp_path / "hf")
    assert "no tokenizer files written" in caplog.text  # NullTokenizer
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.vocab_size == NULL_VOCAB and not hf.config.tie_word_embeddings
    ours, merged = load_serial_model(str(llama_tp2pp2_vpp), true_vocab_size=NULL_VOCAB)
    assert (merged.layout.tp, merged.layout.pp, merged.layout.vpp) == (2, 2, 2)
    ids = _ids(NULL_VOCAB)
    with torch.no_grad():
        expect = ours(ids, torch.arange(16).expand(2, 16))
        got = hf(ids).logits
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def bert_tp2(tmp_path_factory, bert_base):  # noqa: F811 (the imported fixture)
    """BERT with its binary head, trained 2 steps at TP2 x PP1."""
    root = tmp_path_factory.mktemp("bert")
    train("bert", bert_base + SGD, 2, 1, None, 1, ["--save", str(root / "ckpt")])
    return root / "ckpt"


def test_bert_at_tp2_exports_to_megatron_bert_with_the_same_mlm_and_binary_logits(
    bert_tp2, tmp_path
):
    _export(bert_tp2, tmp_path / "hf")
    hf = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "MegatronBertForPreTraining"
    assert hf.config.vocab_size == NULL_VOCAB
    ours, merged = load_serial_model(str(bert_tp2), true_vocab_size=NULL_VOCAB)
    assert merged.model_type == "BERT" and merged.layout.tp == 2
    ids = _ids(NULL_VOCAB, s=32)
    padding = torch.ones(2, 32, dtype=torch.long)
    padding[1, 20:] = 0  # the second sequence is padded
    types = torch.zeros(2, 32, dtype=torch.long)
    types[:, 10:] = 1
    with torch.no_grad():
        mlm, binary = ours(ids, padding, types)
        out = hf(input_ids=ids, attention_mask=padding, token_type_ids=types)
    real = padding.bool()  # padded positions' outputs are used by neither model
    torch.testing.assert_close(out.prediction_logits[real], mlm[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.seq_relationship_logits, binary, rtol=0, atol=1e-5)


def test_bert_wordpiece_tokenizer_with_extra_ids_gives_our_ids(tmp_path):
    tok_args = {
        "tokenizer_type": "BertWordPieceLowerCase",
        "vocab_file": str(TOKENIZER_DIR / "bert-base-uncased-vocab.txt"),
        "vocab_extra_ids": 3,
    }
    assert save_hf_tokenizer(tok_args, str(tmp_path)) == 30522 + 2 + 3  # [BOS], [EOS], extra
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = build_stored_tokenizer(tok_args)
    text = "Mr. Darcy's Pemberley, unaccountably ÉLÉGANT estates!"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.tokenize(text)
    assert hf_tok.convert_tokens_to_ids("<extra_id_2>") == ours.additional_special_tokens_ids[2]
    assert (hf_tok.cls_token_id, hf_tok.sep_token_id, hf_tok.mask_token_id) == (
        ours.cls,
        ours.sep,
        ours.mask,
    )


@pytest.mark.parametrize(
    "change, named",
    [
        ({"normalization": "RMSNorm"}, "--normalization RMSNorm"),  # GPT-2 has LayerNorm
        ({"position_embedding_type": "rope"}, "--normalization LayerNorm"),  # Llama: RMSNorm
        ({"swiglu": True}, "--swiglu"),
    ],
)
def test_an_architecture_without_hf_class_is_an_error_naming_the_option(gpt3_tp2pp2, change, named):
    args = ckpt.stored_args(str(gpt3_tp2pp2))
    args["transformer"].update(change)
    with pytest.raises(hf_export.UnsupportedArchitecture, match=named.replace("-", r"\-")):
        hf_export.hf_architecture(args, "GPT")


def test_a_missing_tokenizer_file_is_an_error_naming_it_and_the_way_out(tmp_path):
    missing = str(tmp_path / "moved" / "gpt2-vocab.json")
    tok_args = {"tokenizer_type": "GPT2BPETokenizer", **_gpt2_files(), "vocab_file": missing}
    with pytest.raises(ValueError, match="--skip-tokenizer") as err:
        save_hf_tokenizer(tok_args, str(tmp_path / "hf"))
    assert missing in str(err.value)


def test_skip_tokenizer_and_an_existing_save_dir(gpt3_tp2pp2, tmp_path, capsys):
    _export(gpt3_tp2pp2, tmp_path / "hf", "--true-vocab-size", "50257", "--skip-tokenizer")
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    assert (tmp_path / "hf" / "config.json").exists()
    argv = ["--load", str(gpt3_tp2pp2), "--save-dir", str(tmp_path / "hf")]
    assert checkpoint_to_hf.main(argv) == 2
    assert "--save-dir" in capsys.readouterr().err


# ---- import ------------------------------------------------------------------------------------
def _random_hf(kind: str, folder, vocab: int = NULL_VOCAB, **overrides):
    """A small random HF model of `kind` saved to `folder` (weights std 0.2: logits of order 1)."""
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=32
        )
        config.activation_function = "gelu"  # exact GeLU, as ours
    else:
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=32,
            rope_theta=5000.0,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=vocab - 1,
        )
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return model


def _import(hf_dir, save, tp=2, pp=2) -> int:
    argv = ["--hf-dir", str(hf_dir), "--save", str(save), "--make-vocab-size-divisible-by", "32"]
    argv += ["--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp)]
    return checkpoint_from_hf.main(argv)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_import_at_tp2pp2_gives_the_hf_logits_and_exports_back_identically(kind, tmp_path):
    hf = _random_hf(kind, tmp_path / "hf")
    assert _import(tmp_path / "hf", tmp_path / "ckpt") == 0
    ours, merged = load_serial_model(str(tmp_path / "ckpt"), true_vocab_size=NULL_VOCAB)
    assert (merged.layout.tp, merged.layout.pp, merged.release) == (2, 2, True)
    assert merged.padded_vocab_size == 64  # 61 padded for TP 2
    assert merged.args["tokenizer"]["tokenizer_type"] == "NullTokenizer"
    ids = _ids(NULL_VOCAB)
    with torch.no_grad():
        expect = hf(ids).logits
        got = ours(ids, torch.arange(16).expand(2, 16))
    assert expect.abs().max() > 0.5  # not a vacuous comparison
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)
    _export(tmp_path / "ckpt", tmp_path / "back")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").state_dict()
    original = hf.state_dict()
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_gpt2_tokenizer_is_imported_with_the_model(tmp_path):
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(_gpt2_folder(tmp_path))
    _random_hf("gpt2", tmp_path / "hf", vocab=len(hf_tok))
    hf_tok.save_pretrained(tmp_path / "hf")
    assert _import(tmp_path / "hf", tmp_path / "ckpt", tp=1, pp=1) == 0
    tok_args = ckpt.stored_args(str(tmp_path / "ckpt"))["tokenizer"]
    assert tok_args["tokenizer_type"] == "HuggingFaceTokenizer"
    ours = build_stored_tokenizer(tok_args)
    text = "Emma Woodhouse, handsome, clever, and rich"
    assert ours.vocab_size == 50257 and ours.tokenize(text) == hf_tok(text)["input_ids"]


def _gpt2_folder(tmp_path):
    import shutil

    folder = tmp_path / "gpt2_tok"
    folder.mkdir()
    shutil.copyfile(TOKENIZER_DIR / "gpt2-vocab.json", folder / "vocab.json")
    shutil.copyfile(TOKENIZER_DIR / "gpt2-merges.txt", folder / "merges.txt")
    return folder


def test_grouped_query_attention_is_refused_naming_the_config_field(tmp_path, capsys):
    _random_hf("llama", tmp_path / "hf", num_key_value_heads=2)
    assert _import(tmp_path / "hf", tmp_path / "ckpt") == 2
    assert "num_key_value_heads 2" in capsys.readouterr().err
    assert not (tmp_path / "ckpt" / "release").exists()


def test_an_imported_llama_continues_pretraining(tmp_path):
    """pretrain_gpt's --load accepts the imported arguments, loads the weights and trains on from
    iteration 0 (at lr 0 the weights it saves after 2 iterations are the imported ones)."""
    from megatron.training.checkpoint_convert import load_merged

    _random_hf("llama", tmp_path / "hf")
    assert _import(tmp_path / "hf", tmp_path / "ckpt", tp=2, pp=1) == 0
    base = COMMON + ["--seq-length", "16", "--mock-data", "--max-position-embeddings", "32"]
    base += LLAMA_FLAGS + ["--kv-channels", "8", "--ffn-hidden-size", "64", "--rotary-base"]
    base += ["5000", "--layernorm-epsilon", "1e-06"] + SGD + ["--lr", "0.0"]
    load = ["--load", str(tmp_path / "ckpt"), "--save", str(tmp_path / "on")]
    history = train("gpt", base, 2, 1, None, 1, load)
    assert [h["iteration"] for h in history] == [1, 2]
    assert all(h["lm loss"] == h["lm loss"] for h in history)  # not NaN
    imported, trained = load_merged(str(tmp_path / "ckpt")), load_merged(str(tmp_path / "on"))
    assert trained.iteration == 2 and sorted(trained.model) == sorted(imported.model)
    for name, tensor in imported.model.items():
        assert torch.equal(trained.model[name], tensor), name

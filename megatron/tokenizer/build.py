"""``build_tokenizer``: the tokenizer a ``TokenizerConfig`` describes."""

from __future__ import annotations

import logging

from .base import MegatronTokenizer
from .config import TokenizerConfig

logger = logging.getLogger(__name__)


def build_tokenizer(config: TokenizerConfig) -> MegatronTokenizer:
    """Build the tokenizer selected by ``config.tokenizer_type`` (validated by the config).

    The returned tokenizer's ``vocab_size`` is unpadded; the model pads it
    (--make-vocab-size-divisible-by x tensor-parallel size).
    """
    kind = config.tokenizer_type
    logger.info("building %s tokenizer", kind)
    if kind == "GPT2BPETokenizer":
        from .gpt2_bpe import GPT2BPETokenizer

        return GPT2BPETokenizer(
            config.vocab_file, config.merge_file, backend=config.tokenizer_backend
        )
    if kind in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        from .bert_wordpiece import BertWordPieceTokenizer

        return BertWordPieceTokenizer(
            config.vocab_file,
            lower_case=kind == "BertWordPieceLowerCase",
            vocab_extra_ids=config.vocab_extra_ids,
            backend=config.tokenizer_backend,
        )
    if kind == "SentencePieceTokenizer":
        from .sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer(config.tokenizer_model, config.vocab_extra_ids)
    if kind == "HuggingFaceTokenizer":
        from .huggingface_tokenizer import HuggingFaceTokenizer

        return HuggingFaceTokenizer(config.tokenizer_model)
    if kind == "NullTokenizer":
        from .null_tokenizer import NullTokenizer

        return NullTokenizer(config.vocab_size)
    raise ValueError(f"--tokenizer-type {kind!r} is not supported")  # config validated it


def build_stored_tokenizer(tok_args: dict, overrides: dict | None = None) -> MegatronTokenizer:
    """The tokenizer of a checkpoint's stored `--tokenizer-*` options (its `args["tokenizer"]`).

    Keys TokenizerConfig does not know (options of other versions) are ignored; non-empty
    `overrides` (vocab_file, merge_file, tokenizer_model) replace the stored file paths, for
    tokenizer files that moved since training.
    """
    import dataclasses

    names = {f.name for f in dataclasses.fields(TokenizerConfig)}
    values = {k: v for k, v in tok_args.items() if k in names}
    values.update({k: v for k, v in (overrides or {}).items() if v})
    return build_tokenizer(TokenizerConfig(**values))

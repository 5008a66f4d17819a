"""The tokenizer of a checkpoint's stored arguments (tools/generate.py's rule, in the package)."""

from __future__ import annotations

from megatron.tokenizer import TokenizerConfig, build_tokenizer


def stored_tokenizer(args: dict, overrides: dict):
    """The tokenizer of a checkpoint's stored arguments; non-empty `overrides` (vocab_file,
    merge_file, tokenizer_model) replace the stored file paths."""
    tk = dict(args["tokenizer"])
    tk.update({k: v for k, v in overrides.items() if v})
    return build_tokenizer(TokenizerConfig(**tk))

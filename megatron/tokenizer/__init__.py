"""Tokenizers selected by --tokenizer-type.

    from megatron.tokenizer import TokenizerConfig, build_tokenizer

    tokenizer = build_tokenizer(TokenizerConfig("GPT2BPETokenizer", vocab_file=..., merge_file=...))
    ids = tokenizer.tokenize("Hello world")      # [15496, 995]
    tokenizer.eod                                # 50256

``split_sentences`` (megatron.tokenizer.sentence_split) is the regex sentence splitter used by
tools/preprocess_data.py --split-sentences.
"""

from .base import MegatronTokenizer
from .build import build_stored_tokenizer, build_tokenizer
from .config import TOKENIZER_TYPES, TokenizerConfig
from .sentence_split import split_sentences

__all__ = [
    "build_stored_tokenizer",
    "MegatronTokenizer",
    "TOKENIZER_TYPES",
    "TokenizerConfig",
    "build_tokenizer",
    "split_sentences",
]

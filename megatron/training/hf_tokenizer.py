"""The tokenizer of a checkpoint's stored arguments as HF transformers tokenizer files.

`save_hf_tokenizer` writes what `AutoTokenizer.from_pretrained(folder)` reads, with the same ids
as our tokenizer of that type:

- GPT2BPETokenizer -> GPT2TokenizerFast from its vocab.json and merges.txt;
- BertWordPieceLowerCase / BertWordPieceCase -> BertTokenizerFast from its vocab.txt (plus the
  --vocab-extra-ids <extra_id_N> tokens, appended in the same order);
- HuggingFaceTokenizer -> a PreTrainedTokenizerFast of its tokenizer.json with its special
  tokens;
- NullTokenizer (ids only) -> nothing: there is no text to tokenize.

Other types raise ValueError naming --tokenizer-type.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from megatron.tokenizer import build_stored_tokenizer

logger = logging.getLogger(__name__)

SPECIAL_KEYS = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")


def special_ids(tokenizer) -> Dict[str, int]:
    """{bos / eos / pad / ...: id} of the special tokens `tokenizer` has."""
    found = {}
    for key in SPECIAL_KEYS:
        try:
            found[key] = getattr(tokenizer, key)
        except NotImplementedError:
            continue
    if "eos" not in found:
        try:
            found["eos"] = tokenizer.eod
        except NotImplementedError:
            pass
    return found


def _special_tokens(tokenizer) -> Dict[str, str]:
    """{bos_token: string, ...} for a transformers tokenizer's constructor."""
    inv = tokenizer.inv_vocab
    return {f"{k}_token": inv[i] for k, i in special_ids(tokenizer).items() if i in inv}


def _from_files(cls, files: Dict[str, str], **kwargs):
    """`cls.from_pretrained` of a folder holding `files` ({name in the folder: path}): the file
    names every transformers version reads."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name, path in files.items():
            shutil.copyfile(path, os.path.join(folder, name))
        return cls.from_pretrained(folder, **kwargs)


def _hf_tokenizer(tok_args: Dict[str, Any], tokenizer):
    import transformers

    kind = tok_args["tokenizer_type"]
    if kind == "GPT2BPETokenizer":
        files = {"vocab.json": tok_args["vocab_file"], "merges.txt": tok_args["merge_file"]}
        return _from_files(transformers.GPT2TokenizerFast, files)
    if kind in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        hf = _from_files(
            transformers.BertTokenizerFast,
            {"vocab.txt": tok_args["vocab_file"]},
            do_lower_case=kind == "BertWordPieceLowerCase",
        )
        # ours appends [BOS], [EOS] and the <extra_id_N> tokens after vocab.txt, in that order
        added = [tokenizer.inv_vocab[i] for i in range(len(hf), tokenizer.vocab_size)]
        hf.add_tokens(added, special_tokens=True)
        return hf
    if kind == "HuggingFaceTokenizer":
        path = tok_args["tokenizer_model"]
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        return transformers.PreTrainedTokenizerFast(
            tokenizer_file=file, **_special_tokens(tokenizer)
        )
    raise ValueError(
        f"--tokenizer-type {kind}: no HF tokenizer is written for this type (supported: "
        "GPT2BPETokenizer, BertWordPiece*, HuggingFaceTokenizer, NullTokenizer); pass "
        "--skip-tokenizer and save a matching HF tokenizer into the folder yourself"
    )


def save_hf_tokenizer(tok_args: Optional[Dict[str, Any]], out_dir: str) -> Optional[int]:
    """Write the HF tokenizer files of the stored tokenizer into `out_dir`.

    Returns its vocabulary size, or None when nothing was written (no tokenizer stored, or a
    NullTokenizer). Raises ValueError naming the tokenizer file that cannot be read, or when
    the HF tokenizer's size differs from ours.
    """
    kind = (tok_args or {}).get("tokenizer_type")
    if kind in (None, "NullTokenizer"):
        logger.info(
            "the checkpoint's tokenizer is %s: no tokenizer files written (its ids are not text)",
            kind or "not stored",
        )
        return None
    try:
        tokenizer = build_stored_tokenizer(tok_args)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot read the checkpoint's tokenizer ({err}); run from the folder training "
            "ran in (the stored paths may be relative) or pass --skip-tokenizer"
        ) from None
    hf = _hf_tokenizer(tok_args, tokenizer)
    if len(hf) != tokenizer.vocab_size:
        raise ValueError(
            f"the HF tokenizer of {kind} has {len(hf)} ids, ours {tokenizer.vocab_size}; "
            "pass --skip-tokenizer and save a matching tokenizer yourself"
        )
    hf.save_pretrained(out_dir)
    logger.info("wrote the %s tokenizer as %s to %s", kind, type(hf).__name__, out_dir)
    return len(hf)

"""Held-out loss, perplexity and bits per byte of a GPT model on an indexed dataset.

The documents of the chosen range are read back to back (as training reads them) and cut into
windows of `seq_length` predicted tokens: window k predicts tokens [k*s, (k+1)*s) from the
token before each, so every token is scored exactly once, at full length, with no curriculum
truncation and no token dropping. When the tokenizer has an end-of-document token it is put in
front of the first window, so the first token is predicted too (lm-evaluation-harness's rolling
log-likelihood does the same); the last window may be shorter.

Bits per byte divide the summed negative log-likelihood (in bits) by the UTF-8 bytes of the
documents' text, each document detokenized on its own without its end-of-document tokens; it
needs a tokenizer that detokenizes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional, Tuple

import numpy as np
import torch


@dataclasses.dataclass
class HeldOutResult:
    """Sums over the scored tokens; the means are properties."""

    tokens: int
    """Tokens scored (predicted)."""
    nats: float
    """Summed negative log-likelihood of the scored tokens (natural log)."""
    windows: int
    """Forward passes (windows of at most seq_length predicted tokens)."""
    text_bytes: Optional[int] = None
    """UTF-8 bytes of the documents' text; None when the tokenizer cannot detokenize."""

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token (nats): the `lm loss` of training."""
        return self.nats / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        """exp(loss), inf when it overflows."""
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bits_per_byte(self) -> Optional[float]:
        """Summed negative log-likelihood in bits per byte of text, or None."""
        if not self.text_bytes:
            return None
        return self.nats / math.log(2) / self.text_bytes


def document_token_range(indexed, first_doc: int, last_doc: int) -> Tuple[int, int]:
    """[start, stop) token positions in the `.bin` of documents [first_doc, last_doc)."""
    docs = indexed.document_indices
    if not 0 <= first_doc <= last_doc <= len(docs) - 1:
        raise ValueError(
            f"{indexed.path_prefix}: documents [{first_doc}, {last_doc}) out of range "
            f"(it has {len(docs) - 1})"
        )
    return _token_position(indexed, int(docs[first_doc])), _token_position(
        indexed, int(docs[last_doc])
    )


def _token_position(indexed, sequence: int) -> int:
    """Position in the `.bin` of sequence `sequence`'s first token (the end for the last + 1)."""
    if sequence >= len(indexed):
        return indexed.num_tokens
    return int(indexed.sequence_pointers[sequence]) // indexed.dtype.itemsize


def windows(num_tokens: int, seq_length: int) -> Iterator[Tuple[int, int]]:
    """[a, b) spans of a token stream, b - a <= seq_length + 1: inputs stream[a:b-1], targets
    stream[a+1:b]; consecutive spans share one token, so each target is scored once."""
    for a in range(0, max(num_tokens - 1, 0), seq_length):
        yield a, min(a + seq_length + 1, num_tokens)


@torch.no_grad()
def score_stream(
    model,
    stream: np.ndarray,
    seq_length: int,
    micro_batch_size: int = 8,
    max_windows: Optional[int] = None,
    device: str = "cpu",
) -> HeldOutResult:
    """Sum the model's negative log-likelihood of `stream[1:]` given what comes before, in
    windows of seq_length (see `windows`), micro_batch_size windows of equal length at a time."""
    spans = list(windows(len(stream), seq_length))[:max_windows]
    nats, tokens = 0.0, 0
    for i in range(0, len(spans), micro_batch_size):
        batch = spans[i : i + micro_batch_size]
        for length in sorted({b - a for a, b in batch}):
            rows = [stream[a:b] for a, b in batch if b - a == length]
            seq = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)  # [b, length]
            pos = torch.arange(length - 1, device=device).expand(len(rows), length - 1)
            loss = model(seq[:, :-1], pos, None, labels=seq[:, 1:])  # [b, length - 1]
            nats += float(loss.double().sum())
            tokens += loss.numel()
    return HeldOutResult(tokens=tokens, nats=nats, windows=len(spans))


def text_bytes(tokenizer, indexed, first_doc: int, last_doc: int) -> Optional[int]:
    """UTF-8 bytes of documents [first_doc, last_doc), each detokenized without its
    end-of-document tokens; None when the tokenizer cannot detokenize."""
    eod = getattr(tokenizer, "eod", None)
    total = 0
    for d in range(first_doc, last_doc):
        start, stop = document_token_range(indexed, d, d + 1)
        ids = [int(t) for t in indexed.tokens(start, stop) if eod is None or int(t) != eod]
        try:
            text = tokenizer.detokenize(ids)
        except (NotImplementedError, AttributeError):
            return None
        total += len(text.encode("utf-8"))
    return total

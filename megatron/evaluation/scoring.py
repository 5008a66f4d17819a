"""Batched log-likelihood scoring and greedy decoding with a causal language model.

The model is any module called as `model(ids[b, s], position_ids[b, s])` that returns logits
[b, s, v] under a plain causal mask (our GPT models, see `megatron.core.models.gpt`). Rows of a
batch are padded on the right: with a causal mask the padding comes after every scored position
and so changes nothing. Requests are processed longest first, so each batch holds rows of
similar length (little padding), and the results come back in the order of the requests.
This module does not depend on lm-evaluation-harness; `lm_eval_model` adapts it to that API.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch

TokenIds = List[int]


@dataclasses.dataclass
class GreedyRequest:
    """One greedy generation: extend `prompt` by at most `max_new_tokens` ids."""

    prompt: TokenIds
    max_new_tokens: int
    stop: Optional[Callable[[TokenIds], bool]] = None
    """Called with the ids generated so far after each step; True ends this request."""


def longest_first(lengths: Sequence[int]) -> List[int]:
    """Indices of `lengths` from the longest to the shortest (ties keep their order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


class CausalLMScorer:
    """Log-likelihoods and greedy continuations of token ids, `batch_size` rows a forward pass.

    Args:
        model: the causal LM (eval mode), on `device`.
        max_length: the most tokens one forward pass sees (the model's context window).
        batch_size: rows per forward pass.
        device: where the id tensors are put.
        pad_id: id used to pad rows on the right (never scored).
    """

    def __init__(self, model, max_length: int, batch_size: int = 1, device="cpu", pad_id=0):
        if max_length < 2:
            raise ValueError(f"max_length={max_length}: give at least 2 tokens")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: give a positive number")
        self.model, self.max_length, self.batch_size = model, max_length, batch_size
        self.device, self.pad_id = device, pad_id

    @torch.no_grad()
    def _logits(self, rows: List[TokenIds]) -> torch.Tensor:
        """Logits of right-padded rows: [b, longest row, v]."""
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)  # [b, s]
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        ids = ids.to(self.device)
        pos = torch.arange(longest, device=self.device).expand(len(rows), longest)  # [b, s]
        return self.model(ids, pos)  # [b, s, v]

    def _model_input(self, context: TokenIds, continuation: TokenIds) -> TokenIds:
        if not context:
            raise ValueError("empty context: put a prefix token (e.g. end-of-document) first")
        if not continuation:
            raise ValueError("empty continuation: there is nothing to score")
        if len(continuation) > self.max_length:
            raise ValueError(
                f"a continuation of {len(continuation)} tokens does not fit max_length="
                f"{self.max_length}; score it in windows (loglikelihood_rolling) instead"
            )
        # The last max_length + 1 tokens; the model reads all but the last one.
        return (context + continuation)[-(self.max_length + 1) :][:-1]

    def score(self, pairs: Sequence[Tuple[TokenIds, TokenIds]]) -> List[Tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding yields the continuation) of
        each (context ids, continuation ids) pair; the context is cut on the left to fit."""
        rows = [self._model_input(ctx, cont) for ctx, cont in pairs]
        results: List[Optional[Tuple[float, bool]]] = [None] * len(pairs)
        order = longest_first([len(r) for r in rows])
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            logits = self._logits([rows[i] for i in chunk])  # [b, s, v]
            for j, i in enumerate(chunk):
                cont = pairs[i][1]
                end = len(rows[i])
                picked = logits[j, end - len(cont) : end].float()  # [len(cont), v]
                target = torch.tensor(cont, device=picked.device)
                log_probs = torch.log_softmax(picked, dim=-1).double()  # [len(cont), v]
                logp = log_probs.gather(-1, target[:, None]).sum()
                greedy = bool((picked.argmax(-1) == target).all())
                results[i] = (float(logp), greedy)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def greedy(self, requests: Sequence[GreedyRequest], eod: Optional[int]) -> List[TokenIds]:
        """The ids greedy decoding appends to each prompt (without a final `eod`), until `eod`,
        the request's `stop` or its `max_new_tokens`; each step reads the last max_length ids."""
        results: List[TokenIds] = [[] for _ in requests]
        order = longest_first([len(r.prompt) for r in requests])
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, ids in zip(chunk, self._greedy_batch([requests[i] for i in chunk], eod)):
                results[i] = ids
        return results

    def _greedy_batch(self, requests: Sequence[GreedyRequest], eod: Optional[int]):
        for r in requests:
            if not r.prompt:
                raise ValueError("empty prompt: put a prefix token (e.g. end-of-document) first")
        generated: List[TokenIds] = [[] for _ in requests]
        active = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
        while active:
            rows = [(requests[i].prompt + generated[i])[-self.max_length :] for i in active]
            logits = self._logits(rows)  # [b, s, v]
            still = []
            for j, i in enumerate(active):
                nxt = int(logits[j, len(rows[j]) - 1].argmax())
                if eod is not None and nxt == eod:
                    continue
                generated[i].append(nxt)
                done = len(generated[i]) >= requests[i].max_new_tokens
                if not done and not (requests[i].stop and requests[i].stop(generated[i])):
                    still.append(i)
            active = still
        return generated

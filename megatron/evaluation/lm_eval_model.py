"""lm-evaluation-harness backend `megatron_de`: scores GPT checkpoints of this project.

    lm_eval --model megatron_de --model_args load=runs/x/checkpoints,max_length=1024 \\
        --tasks lambada_austen --include_path megatron/evaluation/tasks --batch_size 8

model_args: `load` (required: the --save folder of a pretrain_gpt.py run, any TP / PP /
virtual-PP layout; it is merged into one model on this process), `iteration` (default: the
latest), `device` (default: cuda when available, else cpu), `batch_size` (rows per forward pass),
`max_length` (tokens a forward pass sees; default: the trained --seq-length), `dtype` (float32,
bfloat16 or float16), `max_gen_toks` (default for generation requests that give none) and
`vocab_file` / `merge_file` / `tokenizer_model` (when the stored tokenizer files have moved).

Context and continuation are tokenized together and split where the context's own tokens end
(trailing spaces of the context move to the continuation), an empty context is replaced by the
end-of-document token, and rolling log-likelihoods use lm-evaluation-harness's own disjoint
windows of max_length (every token scored once; the first predicted after end-of-document).
Generation is greedy only.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from megatron.tokenizer import build_stored_tokenizer
from megatron.training.checkpoint_convert import load_merged
from megatron.training.serial_model import build_serial_model

from .scoring import CausalLMScorer, GreedyRequest

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODEL_ARGS = "load=, iteration=, device=, batch_size=, max_length=, dtype=, max_gen_toks=, "
MODEL_ARGS += "vocab_file=, merge_file=, tokenizer_model="


def _batch_size(value) -> int:
    if value is None:
        return 1
    if str(value).startswith("auto"):
        raise ValueError("megatron_de: batch_size=auto is not supported; give a number")
    return int(value)


def _max_length(model_args: dict, max_length) -> int:
    limit = int(model_args["max_position_embeddings"])
    if max_length is None:
        return min(int(model_args["seq_length"]), limit)
    if not 2 <= int(max_length) <= limit:
        raise ValueError(
            f"megatron_de: max_length={max_length} is outside [2, {limit}] (the checkpoint's "
            "--max-position-embeddings); give a smaller max_length"
        )
    return int(max_length)


class MegatronDELM(LM):
    """lm-evaluation-harness `LM` over a GPT checkpoint; see the module docstring for the
    model_args. One process; requests are batched longest first, results in request order."""

    def __init__(
        self,
        load: Optional[str] = None,
        iteration: Optional[int] = None,
        device: Optional[str] = None,
        batch_size=1,
        max_length: Optional[int] = None,
        dtype: str = "float32",
        max_gen_toks: int = 256,
        vocab_file: Optional[str] = None,
        merge_file: Optional[str] = None,
        tokenizer_model: Optional[str] = None,
        max_batch_size=None,  # lm_eval passes it with batch_size=auto, which is not supported
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise ValueError(
                f"megatron_de: unknown model_args {sorted(unknown)}; it takes {MODEL_ARGS}"
            )
        if not load:
            raise ValueError(
                "megatron_de needs the checkpoint: --model_args load=CKPT (the --save folder)"
            )
        if dtype not in DTYPES:
            raise ValueError(f"megatron_de: dtype={dtype!r}; give one of {sorted(DTYPES)}")
        merged = load_merged(str(load), None if iteration is None else int(iteration))
        if merged.model_type != "GPT":
            raise ValueError(
                f"{load} holds a {merged.model_type} checkpoint; megatron_de scores GPT checkpoints"
            )
        files = dict(vocab_file=vocab_file, merge_file=merge_file, tokenizer_model=tokenizer_model)
        self.tokenizer = build_stored_tokenizer(merged.args["tokenizer"], files)
        self.eod = getattr(self.tokenizer, "eod", None)
        if self.eod is None:
            raise ValueError(f"{load}: its tokenizer has no end-of-document token to prefix with")
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = build_serial_model(merged, self.tokenizer.vocab_size, DTYPES[dtype])
        self.model = model.to(self._device)
        self.max_length = _max_length(merged.args["model"], max_length)
        self.max_gen_toks = int(max_gen_toks)
        self.batch_size = _batch_size(batch_size)
        self.scorer = CausalLMScorer(self.model, self.max_length, self.batch_size, self._device)
        logger.info(
            "megatron_de: %s iteration %d on %s, max_length %d, batch_size %d",
            load, merged.iteration, self._device, self.max_length, self.batch_size,
        )  # fmt: skip

    def tok_encode(self, text: str) -> List[int]:
        """Token ids of `text` (no end-of-document token added)."""
        return list(self.tokenizer.tokenize(text)) if text else []

    def tok_decode(self, ids: List[int]) -> str:
        """Text of token ids."""
        return self.tokenizer.detokenize(list(ids))

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """(context ids, continuation ids): the pair's joint tokens, split after the context's."""
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        if not stripped:
            return [self.eod], self.tok_encode(continuation)
        whole = self.tok_encode(stripped + continuation)
        ctx = self.tok_encode(stripped)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        """(log P(continuation | context), is_greedy) of each request's (context, continuation)."""
        results = self.scorer.score([self._encode_pair(*r.args) for r in requests])
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests) -> List[float]:
        """log P(text) of each request's (text,), in disjoint windows of max_length tokens."""
        pairs, owner = [], []
        for n, r in enumerate(requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(r.args[0]),
                prefix_token=self.eod,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for w in windows:
                pairs.append(make_disjoint_window(w))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, self.scorer.score(pairs)):
            totals[n] += logp
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    def _greedy_request(self, context: str, gen_kwargs: dict) -> Tuple[GreedyRequest, List[str]]:
        """The GreedyRequest of one generation request and its stop strings."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
            raise ValueError(
                "megatron_de decodes greedily: set do_sample=false and temperature=0 in the "
                "task's generation_kwargs (or --gen_kwargs)"
            )
        if kwargs:
            logger.warning("megatron_de: ignoring generation_kwargs %s (greedy only)", kwargs)

        def stop(ids: List[int]) -> bool:
            text = self.tok_decode(ids)
            return any(s in text for s in until)

        prompt = self.tok_encode(context) or [self.eod]
        return GreedyRequest(prompt, max_new, stop if until else None), until

    def generate_until(self, requests) -> List[str]:
        """Greedy continuation of each request's (context, gen_kwargs), ended by the first of
        gen_kwargs' `until` strings (cut off), end-of-document or `max_gen_toks` tokens."""
        prepared = [self._greedy_request(*r.args) for r in requests]
        generated = self.scorer.greedy([g for g, _ in prepared], self.eod)
        texts = []
        for r, (_, until), ids in zip(requests, prepared, generated):
            text = self.tok_decode(ids)
            cuts = [text.find(s) for s in until if s and s in text]
            text = text[: min(cuts)] if cuts else text
            self.cache_hook.add_partial("generate_until", r.args, text)
            texts.append(text)
        return texts

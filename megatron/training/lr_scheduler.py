"""Learning-rate schedule: linear warmup, then constant / linear / cosine / inverse-sqrt decay.

Progress is counted in samples (Megatron) or, when token budgets are given, in tokens
(Megatron-DeepSpeed's --lr-warmup-tokens / --lr-decay-tokens). Token counts are the tokens
actually consumed, so a curriculum that truncates sequences or random-LTD that drops tokens
stretches the schedule accordingly; the training loop also counts the tokens of steps an fp16
overflow skipped (as Megatron-DeepSpeed's scheduler reads the absolute consumed-token count), the
samples only of applied updates (as Megatron). `budget.schedule_spans` gives warmup and decay in
one unit.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, Optional

logger = logging.getLogger(__name__)


class OptimizerParamScheduler:
    """Sets `lr` of every optimizer param group from the progress of training.

    Args:
        optimizer: the optimizer (anything with a `param_groups` list of dicts with an "lr" key;
            an optional "lr_mult" scales a group's lr). The groups are looked up at every step,
            because loading an optimizer state may replace the group dicts.
        max_lr / min_lr: peak and final learning rates (--lr / --min-lr).
        decay_style: constant | linear | cosine | inverse-square-root.
        warmup_steps / decay_steps: warmup and decay span in samples.
        warmup_tokens / decay_tokens: the same in tokens; when set they take precedence.
        warmup_layer_tokens / decay_layer_tokens: the same in layer-tokens (tokens summed over the
            layers that processed them; random-LTD's layer_token_lr_schedule); when set they take
            precedence over both.
    """

    def __init__(
        self,
        optimizer,
        max_lr: float,
        min_lr: float,
        decay_style: str,
        warmup_steps: int,
        decay_steps: Optional[int],
        warmup_tokens: Optional[int] = None,
        decay_tokens: Optional[int] = None,
        warmup_layer_tokens: Optional[int] = None,
        decay_layer_tokens: Optional[int] = None,
    ):
        if min_lr > max_lr:
            raise ValueError(f"--min-lr {min_lr} is larger than --lr {max_lr}")
        if (
            decay_style != "constant"
            and not decay_steps
            and not decay_tokens
            and not decay_layer_tokens
        ):
            raise ValueError(
                f"--lr-decay-style {decay_style} needs a decay span: --lr-decay-iters, "
                "--lr-decay-samples, --lr-decay-tokens or a training budget"
            )
        self.optimizer = optimizer
        self.max_lr, self.min_lr, self.decay_style = max_lr, min_lr, decay_style
        self.warmup_steps, self.decay_steps = int(warmup_steps or 0), decay_steps
        self.warmup_tokens, self.decay_tokens = warmup_tokens, decay_tokens
        self.warmup_layer_tokens, self.decay_layer_tokens = warmup_layer_tokens, decay_layer_tokens
        if decay_steps and self.warmup_steps >= decay_steps and decay_style != "constant":
            raise ValueError(
                f"warmup ({self.warmup_steps} samples) must be shorter than decay ({decay_steps} "
                "samples)"
            )
        self.num_steps = 0  # samples consumed
        self.num_tokens = 0  # tokens consumed
        self.num_layer_tokens = 0  # layer-tokens consumed
        self.step(0, 0)

    def _warmup(self):
        """(progress, span) of the warmup in its unit."""
        if self.warmup_layer_tokens:
            return self.num_layer_tokens, self.warmup_layer_tokens
        if self.warmup_tokens:
            return self.num_tokens, self.warmup_tokens
        return self.num_steps, self.warmup_steps

    def _decay(self):
        """(progress, start, end) of the decay in its unit."""
        if self.decay_layer_tokens:
            return self.num_layer_tokens, self.warmup_layer_tokens or 0, self.decay_layer_tokens
        if self.decay_tokens:
            start = self.warmup_tokens or 0
            return self.num_tokens, start, self.decay_tokens
        start = self.warmup_steps if not self.warmup_tokens else 0
        return self.num_steps, start, self.decay_steps

    def get_lr(self) -> float:
        """Learning rate at the current progress."""
        done, span = self._warmup()
        if span and done <= span:
            return self.max_lr * done / span
        if self.decay_style == "constant":
            return self.max_lr
        x, start, end = self._decay()
        if self.decay_style == "inverse-square-root":
            warm = max(span, 1)
            return max(self.min_lr, self.max_lr * math.sqrt(warm) / math.sqrt(max(done, 1)))
        if x > end:
            return self.min_lr
        ratio = (x - start) / max(end - start, 1)
        ratio = min(max(ratio, 0.0), 1.0)
        if self.decay_style == "linear":
            coeff = 1.0 - ratio
        else:  # cosine
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def step(self, increment: int, token_num: int = 0, layer_tokens: int = 0) -> float:
        """Advance by `increment` samples, `token_num` tokens and `layer_tokens` layer-tokens;
        returns the new lr."""
        self.num_steps += increment
        self.num_tokens += token_num
        self.num_layer_tokens += layer_tokens
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def state_dict(self) -> Dict:
        return {
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "decay_style": self.decay_style,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "warmup_tokens": self.warmup_tokens,
            "decay_tokens": self.decay_tokens,
            "warmup_layer_tokens": self.warmup_layer_tokens,
            "decay_layer_tokens": self.decay_layer_tokens,
            "num_steps": self.num_steps,
            "num_tokens": self.num_tokens,
            "num_layer_tokens": self.num_layer_tokens,
        }

    def load_state_dict(
        self, sd: Dict, use_checkpoint: bool = False, override: bool = False
    ) -> None:
        """Restore progress; the schedule's shape comes from the checkpoint only with
        use_checkpoint, and a mismatch with the command line is an error unless override."""
        keys = (
            "max_lr",
            "min_lr",
            "decay_style",
            "warmup_steps",
            "decay_steps",
            "warmup_tokens",
            "decay_tokens",
            "warmup_layer_tokens",
            "decay_layer_tokens",
        )
        if not override:
            for k in keys:
                if use_checkpoint:
                    setattr(self, k, sd[k])
                elif sd.get(k) != getattr(self, k):
                    raise ValueError(
                        f"learning-rate schedule value {k} is {getattr(self, k)} on the command "
                        "line but "
                        f"{sd.get(k)} in the checkpoint; pass --use-checkpoint-opt_param-scheduler "
                        "to "
                        "take the checkpoint's or --override-opt_param-scheduler to take the new "
                        "one"
                    )
        self.num_steps, self.num_tokens, self.num_layer_tokens = 0, 0, 0
        self.step(sd["num_steps"], sd.get("num_tokens", 0), sd.get("num_layer_tokens", 0))

"""The Megatron optimizer: torch AdamW / SGD wrapped with fp32 master weights, loss scaling,
model-parallel gradient clipping and a layout-independent state dict.

The torch optimizer steps *main* tensors, one per piece of model parameter this rank updates
(`_Shard`): here, without the distributed optimizer, every piece is a whole parameter.
- fp32 model: the main tensor is the model parameter itself and its grad is `main_grad`;
- bf16 / fp16 model: the main tensor is an fp32 master copy; `main_grad` (fp32, or cast to it)
  becomes its grad and the updated value is cast back into the model parameter.

One step: gradients to the main tensors -> (fp16) unscale and check for inf/nan over the
model-parallel group, skipping the step on overflow -> clip by the global norm -> torch step ->
copy back into the model.

Canonical state dict (the same for this class and `DistributedOptimizer`, independent of the
data-parallel size; only plain tensors, lists, dicts and numbers, so `torch.load(...,
weights_only=True)` reads it)::

    {"format": "megatron_de.optimizer/1", "optimizer": "adam" | "sgd", "num_steps": int,
     "param_groups": [{"lr", "weight_decay", "lr_mult", "wd_mult", ..., "params": [index]}],
     "params": [  # one per trainable parameter, in model order
         {"name": str, "shape": [int], "master": fp32 tensor (mixed precision only),
          "exp_avg", "exp_avg_sq": tensors, "step": int   (adam, after the first step)
          "momentum_buffer": tensor                       (sgd with momentum, after it)}],
     "grad_scaler": {"scale", ...} | None}
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..distributed.ddp import DistributedDataParallel
from ..distributed.finalize_model_grads import grad_of
from ..parallel_state import ParallelState
from ..tensor_parallel.mappings import all_reduce_tensor
from .clip_grads import clip_grads_by_norm, global_grad_norm
from .config import OptimizerConfig
from .grad_scaler import ConstantGradScaler, DynamicGradScaler, MegatronGradScaler

logger = logging.getLogger(__name__)


class NonFiniteGradError(FloatingPointError):
    """`MegatronOptimizer.step(check_finite=True)` found a NaN or inf gradient norm and did not
    apply the update (every rank of the model-parallel group sees the same norm and raises)."""

    def __init__(self, grad_norm: float):
        super().__init__(f"the gradient norm is {grad_norm}; the update was not applied")
        self.grad_norm = grad_norm


STATE_FORMAT = "megatron_de.optimizer/1"
# Param-group hyperparameters saved in the state dict and restored on load.
_GROUP_KEYS = ("lr", "weight_decay", "lr_mult", "wd_mult", "betas", "eps", "momentum")


@dataclasses.dataclass
class _Shard:
    """Elements [start, end) of the flattened model parameter `index` that this rank updates."""

    index: int
    param: torch.nn.Parameter
    start: int
    end: int
    main: torch.Tensor
    # Distributed optimizer: (DDP chunk, GradBuffer, buffer start, buffer end) of the piece.
    location: Optional[tuple] = None


def model_named_params(
    model_chunks: Sequence[torch.nn.Module],
) -> List[Tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every trainable parameter, in model order (chunks in order)."""
    out = []
    for ci, chunk in enumerate(model_chunks):
        module = chunk.module if isinstance(chunk, DistributedDataParallel) else chunk
        prefix = f"chunk{ci}." if len(model_chunks) > 1 else ""
        out.extend((prefix + n, p) for n, p in module.named_parameters() if p.requires_grad)
    return out


def uses_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Weight decay on >= 2-D weights; none on biases and norm parameters (1-D)."""
    return param.dim() >= 2 and not name.endswith(".bias")


def build_grad_scaler(config: OptimizerConfig, device) -> Optional[MegatronGradScaler]:
    """Constant scaler for --loss-scale, dynamic for --fp16 without it, else None."""
    if config.loss_scale is not None and (config.fp16 or config.bf16):
        return ConstantGradScaler(config.loss_scale, device)
    if config.fp16:
        return DynamicGradScaler(
            config.initial_loss_scale,
            config.min_loss_scale,
            growth_factor=2.0,
            backoff_factor=0.5,
            growth_interval=config.loss_scale_window,
            hysteresis=config.hysteresis,
            device=device,
        )
    return None


class MegatronOptimizer:
    """Non-distributed optimizer (every DP rank holds the full state).

    Args:
        config: optimizer options.
        model_chunks: this rank's model chunks (DistributedDataParallel wrappers, or plain
            modules whose `.grad` is used).
        pstate: process groups (gradient clipping and the inf check reduce over mp_group).
    """

    def __init__(
        self,
        config: OptimizerConfig,
        model_chunks: Sequence[torch.nn.Module],
        pstate: ParallelState,
    ):
        if config.lr is None:
            raise ValueError("OptimizerConfig.lr is not set; pass --lr")
        self.config, self.pstate = config, pstate
        self.model_chunks = list(model_chunks)
        self.named_params = model_named_params(self.model_chunks)
        if not self.named_params:
            raise ValueError("the model has no trainable parameters")
        self.mixed_precision = self._check_dtypes()
        self.device = self.named_params[0][1].device
        self.grad_scaler = build_grad_scaler(config, self.device)
        self.shards: List[_Shard] = self._build_shards()
        self.optimizer = self._build_torch_optimizer()
        self.num_steps = 0
        self.skipped_steps = 0

    # ---- construction -------------------------------------------------------------------------
    def _check_dtypes(self) -> bool:
        dtypes = {p.dtype for _, p in self.named_params}
        want = torch.float16 if self.config.fp16 else torch.bfloat16 if self.config.bf16 else None
        if want is not None and dtypes != {want}:
            flag = "--fp16" if self.config.fp16 else "--bf16"
            raise ValueError(
                f"{flag} needs {want} model parameters, found {sorted(map(str, dtypes))}"
            )
        if want is None and dtypes != {torch.float32}:
            raise ValueError(
                f"model parameters are {sorted(map(str, dtypes))}; set --fp16 or --bf16 for "
                "half-precision models (fp32 master weights), or build the model in fp32"
            )
        return want is not None

    def _build_shards(self) -> List[_Shard]:
        shards = []
        for i, (_, p) in enumerate(self.named_params):
            main = p
            if self.mixed_precision:
                main = torch.nn.Parameter(p.detach().float().clone())
            shards.append(_Shard(i, p, 0, p.numel(), main))
        return shards

    def _build_torch_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for s in self.shards:
            name = self.named_params[s.index][0]
            (decay if uses_weight_decay(name, s.param) else no_decay).append(s.main)
        cfg = self.config
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay, "wd_mult": 1.0, "lr_mult": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "wd_mult": 0.0, "lr_mult": 1.0},
        ]
        if cfg.optimizer == "adam":
            kwargs = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
            if cfg.use_fused_adam:
                try:
                    return torch.optim.AdamW(groups, fused=True, **kwargs)
                except (RuntimeError, ValueError) as err:  # device or torch without the kernel
                    logger.warning("fused AdamW unavailable (%s); using torch's default", err)
            return torch.optim.AdamW(groups, **kwargs)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.sgd_momentum)

    # ---- public interface ---------------------------------------------------------------------
    @property
    def param_groups(self) -> List[dict]:
        """The torch param groups (the scheduler sets "lr" and "weight_decay"; each group also
        has "lr_mult" and "wd_mult": 1/1 for weights, 1/0 for biases and norms)."""
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        """Zero the models' gradient buffers and drop every .grad."""
        for chunk in self.model_chunks:
            if isinstance(chunk, DistributedDataParallel):
                chunk.zero_grad_buffer()
        for _, p in self.named_params:
            p.grad = None
        self._clear_main_grads()

    def get_loss_scale(self) -> torch.Tensor:
        """The current loss scale as a [1] tensor (1.0 without scaling)."""
        if self.grad_scaler is None:
            return torch.ones(1, device=self.device)
        return self.grad_scaler.scale

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """loss * loss scale, same shape as loss (call backward on the result)."""
        if self.grad_scaler is None:
            return loss
        return loss * self.grad_scaler.scale.to(loss.dtype).squeeze(0)

    @torch.no_grad()
    def step(self, check_finite: bool = False) -> Tuple[bool, Optional[float], None]:
        """One update from the finalised gradients.

        Args:
            check_finite: raise `NonFiniteGradError` instead of applying the update when the
                gradient norm is NaN or inf (the norm is then computed even with clipping off).
                fp16 overflow steps are skipped before this check, as always.

        Returns:
            (update_successful, grad_norm, num_zeros_in_grad): False and None norm when an
            fp16 overflow skipped the step; grad_norm None when clipping is off; num_zeros is
            always None.
        """
        grads = self._prepare_main_grads()
        if self.grad_scaler is not None:
            found_inf = self._unscale_and_check(grads)
            self.grad_scaler.update(found_inf)
            if found_inf:
                self.skipped_steps += 1
                self._clear_main_grads()
                return False, None, None
        grad_norm = None
        if self.config.clip_grad > 0 or check_finite:
            params = [s.param for s in self.shards]
            norm = global_grad_norm(params, grads, self.pstate, self._sharded_groups())
            if check_finite and not math.isfinite(norm):
                self._clear_main_grads()
                raise NonFiniteGradError(norm)
            if self.config.clip_grad > 0:
                clip_grads_by_norm(grads, self.config.clip_grad, norm)
                grad_norm = norm
        self.optimizer.step()
        self.num_steps += 1
        self._clear_main_grads()
        self._copy_main_to_model()
        return True, grad_norm, None

    def reload_model_params(self) -> None:
        """Refresh the fp32 master weights from the model (after loading a model checkpoint)."""
        if not self.mixed_precision:
            return
        with torch.no_grad():
            for s in self.shards:
                s.main.copy_(self._model_slice(s).float().view_as(s.main))

    # ---- step pieces --------------------------------------------------------------------------
    def _sharded_groups(self) -> Tuple:
        """Groups beyond mp_group over which per-rank gradients differ (none here)."""
        return ()

    def _shard_grad(self, s: _Shard) -> torch.Tensor:
        """This shard's slice of the model gradient, shaped like s.main."""
        return grad_of(s.param)

    def _model_slice(self, s: _Shard) -> torch.Tensor:
        return s.param.detach()

    def _prepare_main_grads(self) -> List[torch.Tensor]:
        grads = []
        for s in self.shards:
            g = self._shard_grad(s)
            s.main.grad = g if g.dtype == torch.float32 else g.float()
            grads.append(s.main.grad)
        return grads

    def _clear_main_grads(self) -> None:
        # For fp32 models main is the model parameter: a leftover .grad would make autograd
        # accumulate into main_grad directly and the DDP hook add it a second time.
        for s in self.shards:
            s.main.grad = None

    def _unscale_and_check(self, grads: List[torch.Tensor]) -> bool:
        """Divide grads by the loss scale in place; True if any rank saw inf/nan."""
        found_inf = torch.zeros(1, dtype=torch.float32, device=self.device)
        if grads:
            inv = self.grad_scaler.inv_scale.to(self.device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv)
        for group in (self.pstate.mp_group, *self._sharded_groups()):
            all_reduce_tensor(found_inf, group, op=dist.ReduceOp.MAX)
        return bool(found_inf.item() > 0)

    def _copy_main_to_model(self) -> None:
        if self.mixed_precision:
            for s in self.shards:
                s.param.data.copy_(s.main.data)

    # ---- state dict ---------------------------------------------------------------------------
    def _state_fields(self) -> List[str]:
        if self.config.optimizer == "adam":
            return ["exp_avg", "exp_avg_sq"]
        return ["momentum_buffer"] if self.config.sgd_momentum > 0 else []

    def _full_tensors(self, field: Optional[str]) -> List[torch.Tensor]:
        """Per model parameter (model order), the full tensor of `field` (None: master)."""
        out = []
        for s in self.shards:
            t = s.main if field is None else self.optimizer.state[s.main][field]
            out.append(t.detach().view(s.param.shape))
        return out

    def state_dict(self) -> Dict:
        """The canonical, DP-size independent state (see the module docstring).

        Tensors alias the live state; save (or clone) them before stepping again.
        """
        entries = [{"name": name, "shape": list(p.shape)} for name, p in self.named_params]
        if self.mixed_precision:
            for e, t in zip(entries, self._full_tensors(None)):
                e["master"] = t
        if self.num_steps > 0:
            for field in self._state_fields():
                for e, t in zip(entries, self._full_tensors(field)):
                    e[field] = t
            if self.config.optimizer == "adam":
                for e in entries:
                    e["step"] = self.num_steps
        return {
            "format": STATE_FORMAT,
            "optimizer": self.config.optimizer,
            "num_steps": self.num_steps,
            "param_groups": self._group_state(),
            "params": entries,
            "grad_scaler": None if self.grad_scaler is None else self.grad_scaler.state_dict(),
        }

    def _group_state(self) -> List[Dict]:
        index_of = {id(s.main): s.index for s in self.shards}
        groups = []
        for g in self.optimizer.param_groups:
            saved = {
                k: (list(g[k]) if isinstance(g[k], tuple) else g[k]) for k in _GROUP_KEYS if k in g
            }
            saved["params"] = sorted({index_of[id(m)] for m in g["params"]})
            groups.append(saved)
        return groups

    def load_state_dict(self, state: Dict) -> None:
        """Load a canonical state dict saved by this class or DistributedOptimizer, at any
        DP size. Raises ValueError when it belongs to another model or optimizer."""
        self._validate_state(state)
        entries = state["params"]
        if self.mixed_precision:
            if all("master" in e for e in entries):
                with torch.no_grad():
                    for s in self.shards:
                        s.main.copy_(self._slice(entries[s.index]["master"], s).view_as(s.main))
            else:
                self.reload_model_params()
        self._load_torch_state(state)
        self.num_steps = int(state.get("num_steps", 0))
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])

    def _validate_state(self, state: Dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"optimizer state has format {found!r}, expected {STATE_FORMAT!r}; it was not "
                "written by this framework (load with --no-load-optim to skip it)"
            )
        if state["optimizer"] != self.config.optimizer:
            raise ValueError(
                f"optimizer state is for --optimizer {state['optimizer']}, this run uses "
                f"{self.config.optimizer}; match it or load with --no-load-optim"
            )
        entries = state["params"]
        if len(entries) != len(self.named_params):
            raise ValueError(
                f"optimizer state has {len(entries)} parameters, the model "
                f"{len(self.named_params)}; the checkpoint is for a different model (use "
                "--no-load-optim or --finetune)"
            )
        for (name, p), e in zip(self.named_params, entries):
            if list(e["shape"]) != list(p.shape):
                raise ValueError(
                    f"optimizer state of parameter {name} ({e['name']} in the checkpoint) has "
                    f"shape {list(e['shape'])}, the model {list(p.shape)}; the checkpoint is for "
                    "a different model or tensor-parallel size"
                )

    @staticmethod
    def _slice(full: torch.Tensor, s: _Shard) -> torch.Tensor:
        """This shard's elements of a full parameter-shaped tensor, flattened."""
        return full.reshape(-1)[s.start : s.end]

    def _load_torch_state(self, state: Dict) -> None:
        torch_sd = self.optimizer.state_dict()
        ids = {}
        for group in self.optimizer.param_groups:
            for t in group["params"]:
                ids[id(t)] = len(ids)
        new_state = {}
        steps = int(state.get("num_steps", 0))
        fields = [f for f in self._state_fields() if all(f in e for e in state["params"])]
        if steps > 0 and fields:
            for s in self.shards:
                e = state["params"][s.index]
                st = {f: self._slice(e[f], s).clone().view_as(s.main) for f in fields}
                if self.config.optimizer == "adam":
                    st["step"] = torch.tensor(float(e.get("step", steps)), dtype=torch.float32)
                new_state[ids[id(s.main)]] = st
        torch_sd["state"] = new_state
        saved_groups = state.get("param_groups", [])
        if len(saved_groups) == len(torch_sd["param_groups"]):
            for mine, saved in zip(torch_sd["param_groups"], saved_groups):
                for k in _GROUP_KEYS:
                    if k in saved and k in mine:
                        mine[k] = tuple(saved[k]) if isinstance(mine[k], tuple) else saved[k]
        self.optimizer.load_state_dict(torch_sd)

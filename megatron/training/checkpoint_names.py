"""Parameter names of checkpoints written by earlier versions, brought to today's names.

BERT checkpoints used to name the transformer stack `decoder.*`, the MLM head's norm
`lm_head.layernorm`, its bias `lm_head.bias` and the pooler `pooler.weight` / `pooler.bias`.
They now carry megatron-core's names (`encoder.*`, `lm_head.layer_norm`, `output_layer.bias`,
`pooler.dense.*`), and the MLM bias moved behind the head in module order. `upgrade_bert_names`
renames a loaded checkpoint dict in place, model tensors and optimizer entries alike, and moves
the bias's optimizer entry (and its param-group index) to where the model now has it, so such a
checkpoint resumes, converts and exports as if written today. GPT names did not change.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List

logger = logging.getLogger(__name__)

# (old prefix or name, new one), applied to names without their `chunkN.` prefix.
_LEGACY_BERT = (
    ("decoder.", "encoder."),
    ("lm_head.layernorm.", "lm_head.layer_norm."),
    ("lm_head.bias", "output_layer.bias"),
    ("pooler.weight", "pooler.dense.weight"),
    ("pooler.bias", "pooler.dense.bias"),
)
_CHUNK_RE = re.compile(r"^(chunk\d+\.)?(.*)$")
_HEAD = ("lm_head.", "output_layer.")


def _rename(name: str) -> str:
    chunk, rest = _CHUNK_RE.match(name).groups()
    for old, new in _LEGACY_BERT:
        if rest == old or (old.endswith(".") and rest.startswith(old)):
            rest = new + rest[len(old) :]
            break
    return (chunk or "") + rest


def _model_dicts(sd: Dict[str, Any]) -> List[str]:
    return [k for k in sd if re.fullmatch(r"model\d*", k) and isinstance(sd[k], dict)]


def is_legacy_bert(sd: Dict[str, Any]) -> bool:
    """Whether a loaded BERT checkpoint dict still has the old names (its stack is `decoder`)."""
    for k in _model_dicts(sd):
        for name in sd[k]:
            rest = _CHUNK_RE.match(name).group(2)
            if rest.startswith("decoder.") or rest in ("lm_head.bias", "pooler.weight"):
                return True
    return False


def _new_order(names: List[str]) -> List[int]:
    """Old indices in the order the model has them now: each chunk's MLM bias moves behind that
    chunk's last head parameter (`lm_head.*` / `output_layer.*`)."""
    order = list(range(len(names)))
    for i, name in enumerate(names):
        chunk, rest = _CHUNK_RE.match(name).groups()
        if rest != "output_layer.bias":
            continue
        order.remove(i)
        same_head = [
            pos
            for pos, j in enumerate(order)
            if _CHUNK_RE.match(names[j]).group(1) == chunk
            and _CHUNK_RE.match(names[j]).group(2).startswith(_HEAD)
        ]
        order.insert(same_head[-1] + 1 if same_head else len(order), i)
    return order


def _upgrade_optimizer(state: Dict[str, Any]) -> None:
    entries = state.get("params")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return
    for e in entries:
        e["name"] = _rename(e["name"])
    order = _new_order([e["name"] for e in entries])
    state["params"] = [entries[i] for i in order]
    new_index = {old: new for new, old in enumerate(order)}
    for group in state.get("param_groups", []):
        group["params"] = sorted(new_index[i] for i in group["params"])


def upgrade_bert_names(sd: Dict[str, Any], where: str = "checkpoint") -> bool:
    """Rename a legacy BERT checkpoint dict in place (see the module docstring).

    Args:
        sd: one loaded shard (`model` / `modelN` tensors, optional `optimizer`).
        where: the file, for the log line.

    Returns:
        True when something was renamed; a dict with today's names is left as it is.
    """
    if not is_legacy_bert(sd):
        return False
    for k in _model_dicts(sd):
        sd[k] = {_rename(name): t for name, t in sd[k].items()}
    if isinstance(sd.get("optimizer"), dict):
        _upgrade_optimizer(sd["optimizer"])
    logger.info("%s: BERT parameter names of an earlier version renamed to today's", where)
    return True

"""Pretrain a BERT model: `torchrun --nproc-per-node N pretrain_bert.py <Megatron flags>`.

Data must be preprocessed with --split-sentences (one sequence per sentence) and a BERT
WordPiece tokenizer; samples are sentence pairs with masked-LM targets and, unless
--bert-no-binary-head, a sentence-order (or next-sentence) label.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig
from megatron.core.models import BertModel
from megatron.training.data import build_datasets, core_dataset_kwargs
from megatron.training.training import language_model_kwargs, pretrain


def model_provider(run, rt, pre_process=True, post_process=True, vp_rank=None):
    """One BERT model chunk for this rank."""
    return BertModel(
        **language_model_kwargs(run, rt, pre_process, post_process, vp_rank),
        add_binary_head=not run.model.bert_no_binary_head,
    )


def datasets_provider(run, rt, num_samples):
    """Train / valid / test BERT datasets from sentence-split --data-path."""
    d, tok = run.data, rt.tokenizer
    config = BertDatasetConfig(
        **core_dataset_kwargs(run),
        masking_probability=d.mask_prob,
        short_sequence_probability=d.short_seq_prob,
        classification_head=not run.model.bert_no_binary_head,
        binary_head_type=run.model.bert_binary_head_type,
        tokenizer=tok,
    )
    return build_datasets(BertDataset, config, num_samples)


def loss_func(batch, output):
    """Masked-LM loss over predicted positions (+ binary-head cross entropy)."""
    lm_loss, binary_logits = output
    loss_mask = batch["loss_mask"].float()
    lm = (lm_loss * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    if binary_logits is None:
        return lm, {"lm loss": lm.detach()}
    sop = F.cross_entropy(binary_logits.float(), batch["is_random"].view(-1))
    return lm + sop, {"lm loss": lm.detach(), "sop loss": sop.detach()}


def forward_step(data_iterator, model):
    """One micro-batch of sentence pairs."""
    raw = next(data_iterator)
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in raw.items()}
    labels = batch["labels"].clamp(min=0)  # -1 (not predicted) is masked out of the loss
    output = model(
        batch["text"],
        batch["padding_mask"],
        batch["types"],
        lm_labels=labels,
        random_ltd=batch.get("random_ltd"),
    )
    return output, functools.partial(loss_func, batch)


if __name__ == "__main__":
    pretrain(datasets_provider, model_provider, forward_step, model_type="bert")

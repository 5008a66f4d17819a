"""Pretrain a GPT model: `torchrun --nproc-per-node N pretrain_gpt.py <Megatron flags>`."""

from __future__ import annotations

import functools

import torch

from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.models import GPTModel
from megatron.training.data import MockGPTDataset, build_datasets, core_dataset_kwargs
from megatron.training.training import language_model_kwargs, pretrain


def model_provider(run, rt, pre_process=True, post_process=True, vp_rank=None):
    """One GPT model chunk for this rank."""
    return GPTModel(
        **language_model_kwargs(run, rt, pre_process, post_process, vp_rank),
        share_embeddings_and_output_weights=not run.model.untie_embeddings_and_output_weights,
    )


def datasets_provider(run, rt, num_samples):
    """Train / valid / test GPT datasets from --data-path (or synthetic ones with --mock-data)."""
    if run.data.mock_data:
        return tuple(
            MockGPTDataset(n, run.model.seq_length, rt.tokenizer.vocab_size, run.training.seed + i)
            if n
            else None
            for i, n in enumerate(num_samples)
        )
    d = run.data
    config = GPTDatasetConfig(
        **core_dataset_kwargs(run),
        reset_position_ids=d.reset_position_ids,
        reset_attention_mask=d.reset_attention_mask,
        eod_mask_loss=d.eod_mask_loss,
        eod_token=rt.tokenizer.eod,
        create_attention_mask=d.reset_attention_mask,
        vocab_size=rt.tokenizer.vocab_size,  # every data file's ids are checked against it
    )
    return build_datasets(GPTDataset, config, num_samples)


def loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    """Mean per-token loss over the tokens that count; reports "lm loss"."""
    loss_mask = loss_mask.float()
    loss = (output * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    return loss, {"lm loss": loss.detach()}


def forward_step(data_iterator, model):
    """One micro-batch: tokens -> per-token loss on the last stage."""
    batch = next(data_iterator)
    device = next(model.parameters()).device
    text = batch["text"].to(device)
    tokens, labels = text[:, :-1], text[:, 1:]  # [b, s]
    mask = batch.get("attention_mask")
    output = model(
        tokens,
        batch["position_ids"].to(device),
        mask.to(device) if mask is not None else None,
        labels=labels,
        random_ltd=batch.get("random_ltd"),
    )
    return output, functools.partial(loss_func, batch["loss_mask"].to(device))


if __name__ == "__main__":
    pretrain(datasets_provider, model_provider, forward_step, model_type="gpt")

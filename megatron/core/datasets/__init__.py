"""Megatron-format indexed datasets and the GPT / BERT / blended datasets built on them."""

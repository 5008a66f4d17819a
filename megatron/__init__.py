"""Megatron-style GPT/BERT pretraining with curriculum learning and random-LTD built in."""

__version__ = "0.1.0"

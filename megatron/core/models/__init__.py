"""GPT and BERT models built from the transformer package."""

from .bert import BertModel
from .gpt import GPTModel

__all__ = [
    "BertModel",
    "GPTModel",
]

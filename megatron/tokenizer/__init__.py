"""Tokenizers selected by --tokenizer-type."""

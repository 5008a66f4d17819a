"""Shared fixtures: paths to the embedded corpus and the shared reference files, GPU skipping."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
TOKENIZER_DIR = SHARED_DIR / "data" / "tokenizers"
AUSTEN_DIR = REPO_ROOT / "data" / "corpora" / "austen"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tokenizer_dir() -> pathlib.Path:
    """The reference GPT-2 and BERT tokenizer files in ../shared (skips when absent)."""
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"reference tokenizer files not found at {TOKENIZER_DIR}")
    return TOKENIZER_DIR

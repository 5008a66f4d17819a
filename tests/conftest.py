"""Shared fixtures: paths to the embedded corpus and the reference tokenizer files, GPU skipping.

Everything the tests read ships in the repository (data/corpora, data/tokenizers): a fresh clone
runs the whole suite with nothing beside it.
"""

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizers"
TOKENIZER_FILES = ("gpt2-vocab.json", "gpt2-merges.txt", "bert-base-uncased-vocab.txt")
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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny matmuls: a second OpenMP thread only adds
    contention on a shared 2-core machine (use with pytest.mark.usefixtures)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tokenizer_dir() -> pathlib.Path:
    """The reference GPT-2 and bert-base-uncased tokenizer files shipped in data/tokenizers.

    They are part of the repository, so a missing one is a broken checkout: fail, never skip.
    """
    missing = [name for name in TOKENIZER_FILES if not (TOKENIZER_DIR / name).is_file()]
    if missing:
        pytest.fail(
            f"reference tokenizer files missing from {TOKENIZER_DIR}: {missing}", pytrace=False
        )
    return TOKENIZER_DIR

"""Counter-based random numbers: every draw a pure function of integer keys, no generator state.

`stream_key(*words)` folds integers into a 64-bit key; `uniform_u64(key, n)` is the first n words
of the stream of that key (splitmix64 of key + (i + 1) * golden); `permutation(n, key)` a
permutation of range(n) determined by the key. The results are the same on every platform,
numpy version, number of ranks or workers, which is what lets every rank compute the same
curriculum batches without communication.
"""

from __future__ import annotations

from typing import Union

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(x: int) -> int:
    """splitmix64 finaliser of a Python int (mod 2**64)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def stream_key(*words: int) -> int:
    """A 64-bit key from integers (order-sensitive)."""
    h = 0
    for w in words:
        h = mix64((h + GOLDEN + (w & M64)) & M64)
    return h


def uniform_u64(key: Union[int, np.ndarray], n: int) -> np.ndarray:
    """uint64 [n] (or [K, n] for K keys): splitmix64 of key + (i + 1) * golden, the i-th random
    word of the stream `key`."""
    x = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)
    x = x + (np.asarray(key, np.uint64)[:, None] if np.ndim(key) else np.uint64(key))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


HASH_SORT_MAX = 8192
"""Clusters up to this size are permuted by sorting hashed keys (cheap to start), bigger ones with
a seeded RandomState (faster per element)."""


def permutation(n: int, key: int) -> np.ndarray:
    """A permutation of range(n) determined by `key`: the stable argsort of n hashed words for
    n <= HASH_SORT_MAX, else RandomState(words of key and n).permutation(n); both are the same
    on every platform and numpy version."""
    if n <= HASH_SORT_MAX:
        return np.argsort(uniform_u64(key, n), kind="stable")
    words = np.array([key & 0xFFFFFFFF, key >> 32, n & 0xFFFFFFFF, n >> 32], np.uint32)
    return np.random.RandomState(words).permutation(n)

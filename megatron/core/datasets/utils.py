"""Shared pieces of the GPT, BERT and blended datasets: split names and the on-disk index cache.

Index cache layout (one set per dataset and split, in `DatasetConfig.path_to_cache` or a `cache/`
folder beside the data):

    <hash>-<Class>-<split>-<name>.npy        one file per index array
    <hash>-<Class>-<split>-description.json  what the arrays were built from, plus each array's
                                             shape, dtype and sha256

`<hash>` is the md5 of the JSON description of everything that affects the arrays, so a change
of any parameter, of the document split, or of the data itself selects different files: the data
enters through `dataset_fingerprint` (the content of the `.idx` and sampled pages of the `.bin`,
not their modification times). Every file is written under a temporary name and renamed when
complete, the description last, so concurrent writers never expose a partial file; a file that is
unreadable, whose bytes differ from the sha256 recorded at build time (an edit, a damaged disk),
or whose values are out of range for the dataset is reported with a warning and rebuilt. The
building rank removes temporaries that killed processes left in the cache folder.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import numpy as np

from megatron.core.datasets.indexed_dataset import data_file_path, index_file_path
from megatron.core.files import (  # noqa: F401 (atomic writes are re-exported for the datasets)
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    remove_stale_temporaries,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2
"""Bumped when the meaning of cached arrays changes, which invalidates every old cache entry."""


class Split(enum.Enum):
    """The three dataset splits, in Megatron's order (the order of --split weights)."""

    train = 0
    valid = 1
    test = 2


def split_name(split: Union[Split, str, int]) -> str:
    """Normalise a split given as `Split`, name ("train"/"valid"/"test") or position (0/1/2)."""
    if isinstance(split, Split):
        return split.name
    if isinstance(split, (int, np.integer)) and not isinstance(split, bool):
        if 0 <= int(split) < 3:
            return Split(int(split)).name
    elif isinstance(split, str) and split in Split.__members__:
        return split
    raise ValueError(f"unknown split {split!r}; use 'train', 'valid' or 'test'")


def md5_of_json(obj: Any) -> str:
    """md5 hex digest of `obj` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def md5_of_array(array: np.ndarray) -> str:
    """md5 hex digest of an integer array's values (independent of its integer dtype)."""
    data = np.ascontiguousarray(array, dtype=np.int64)
    return hashlib.md5(data.tobytes()).hexdigest()


FINGERPRINT_PAGES = 64
"""Pages of the `.bin` that `dataset_fingerprint` hashes, spread evenly over the file."""

FINGERPRINT_PAGE_SIZE = 4096
"""Bytes per fingerprint page."""

_fingerprints: Dict[tuple, Dict[str, Any]] = {}  # this process's, keyed by the files' stat


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _sampled_pages_sha256(path: str, size: int) -> str:
    """sha256 of FINGERPRINT_PAGES pages spread evenly over the file (the whole of a small one)."""
    digest, page, n = hashlib.sha256(), FINGERPRINT_PAGE_SIZE, FINGERPRINT_PAGES
    with open(path, "rb") as f:
        if size <= page * n:
            digest.update(f.read())
        else:
            for i in range(n):
                f.seek(i * (size - page) // (n - 1))
                digest.update(f.read(page))
    return digest.hexdigest()


def dataset_fingerprint(path_prefix: str) -> Optional[Dict[str, Any]]:
    """Content fingerprint of a `.bin`/`.idx` pair (None when a file is missing).

    The sha256 of the whole `.idx` (every sequence size and document boundary, which is all the
    index arrays are built from) and, for the `.bin`, its size and the sha256 of
    FINGERPRINT_PAGES pages spread over it: re-preprocessing changes it even when sizes and
    modification times are kept, while copying the files or touching them does not. Cheap
    enough for every start (the `.idx` is read in full when it is opened anyway); computed once
    per process for unchanged files.
    """
    idx, bin_ = index_file_path(path_prefix), data_file_path(path_prefix)
    try:
        key = (os.path.abspath(path_prefix), _stat_key(idx), _stat_key(bin_))
    except OSError:
        return None
    if key not in _fingerprints:
        size = key[2][0]
        _fingerprints[key] = {
            "idx_sha256": file_sha256(idx),
            "bin_size": size,
            "bin_pages_sha256": _sampled_pages_sha256(bin_, size),
        }
    return dict(_fingerprints[key])


def default_cache_dir(path_prefix: Optional[str], class_name: str) -> Optional[str]:
    """`<folder of the data prefix>/cache/<class_name>_indices`, or None without a prefix."""
    if not path_prefix:
        return None
    folder = os.path.dirname(os.path.abspath(path_prefix))
    return os.path.join(folder, "cache", f"{class_name}_indices")


Validator = Callable[[Dict[str, np.ndarray]], None]
"""Checks cached index arrays against their dataset; raises ValueError naming the problem."""


class IndexCache:
    """The cached index arrays of one dataset split.

    Args:
        folder: cache folder; None disables caching (every build is local and nothing is written).
        class_name: dataset class name, part of the file names.
        split: split name, part of the file names.
        description: JSON-serialisable description of everything the arrays depend on.
    """

    def __init__(self, folder: Optional[str], class_name: str, split: str, description: dict):
        self.folder = folder
        self.description = {"cache_format": CACHE_FORMAT_VERSION, **description}
        self.hash = md5_of_json(self.description)
        self.base = f"{self.hash}-{class_name}-{split}"

    def path(self, name: str) -> str:
        """Path of the cached array `name` (or of `description.json`)."""
        suffix = "json" if name == "description" else "npy"
        return os.path.join(self.folder or "", f"{self.base}-{name}.{suffix}")

    def load(
        self, names: Sequence[str], validate: Optional[Validator] = None
    ) -> Optional[Dict[str, np.ndarray]]:
        """The cached arrays (read-only memory maps), or None on a miss or a damaged entry.

        Each file's bytes must have the sha256 recorded when it was written, and `validate`
        (when given) must accept the arrays: it raises ValueError naming what is out of range.
        """
        if self.folder is None or not os.path.isfile(self.path("description")):
            return None
        try:
            with open(self.path("description"), "rt", encoding="utf-8") as f:
                stored = json.load(f)
            if stored.get("description") != self.description:
                raise ValueError("its description differs from the requested one")
            arrays = {name: self._load_array(name, stored["arrays"][name]) for name in names}
            if validate is not None:
                validate(arrays)
            return arrays
        except Exception as exc:  # unreadable, truncated, edited or inconsistent: rebuild
            logger.warning(
                "ignoring damaged index cache entry %s (%s: %s); rebuilding it",
                self.path("description"),
                type(exc).__name__,
                exc,
            )
            return None

    def _load_array(self, name: str, meta: Dict[str, Any]) -> np.ndarray:
        path = self.path(name)
        digest = file_sha256(path)
        if digest != meta["sha256"]:
            raise ValueError(
                f"{path} has sha256 {digest}, but {meta['sha256']} was recorded when it was "
                "written (the file was edited or damaged)"
            )
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if list(array.shape) != meta["shape"] or array.dtype.str != meta["dtype"]:
            raise ValueError(
                f"{path} holds {array.dtype.str}{list(array.shape)}, the description says "
                f"{meta['dtype']}{meta['shape']}"
            )
        return array

    def save(self, arrays: Dict[str, np.ndarray]) -> bool:
        """Write the arrays, then the description; False (with a warning) when it cannot."""
        if self.folder is None:
            return False
        try:
            os.makedirs(self.folder, exist_ok=True)
            meta = {}
            for name, array in arrays.items():
                digest = atomic_save_npy(self.path(name), array)
                meta[name] = {
                    "shape": list(array.shape),
                    "dtype": array.dtype.str,
                    "sha256": digest,
                }
            text = json.dumps({"description": self.description, "arrays": meta}, indent=2)
            atomic_write_text(self.path("description"), text)
        except OSError as exc:
            logger.warning(
                "could not write the index cache in %s (%s); indices stay in memory only. Set "
                "--data-cache-path to a writable folder to reuse them across runs",
                self.folder,
                exc,
            )
            return False
        return True

    def remove_stale_temporaries(self) -> None:
        """Remove what killed processes left half-written in the cache folder."""
        if self.folder is not None:
            remove_stale_temporaries(self.folder)


def load_or_build(
    cache: IndexCache,
    names: Iterable[str],
    build: Callable[[], Dict[str, np.ndarray]],
    what: str,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
    synchronize: Optional[Callable[[], None]] = None,
    validate: Optional[Validator] = None,
) -> Dict[str, np.ndarray]:
    """Read `names` from `cache`, or run `build()`, save its result and log how long it took.

    With `is_built_on_rank`, the ranks where it returns True do this first and then call
    `synchronize()` (also when building fails, so that no rank waits forever); the other ranks
    call `synchronize()` first and then load what was cached (building themselves on a miss).
    `validate(arrays)` checks cached arrays against the dataset (see `IndexCache.load`); the
    building ranks also remove stale temporaries from the cache folder.
    """
    names = list(names)
    if is_built_on_rank is None:
        return _load_or_build(cache, names, build, what, validate, True)
    if synchronize is None:
        raise ValueError("is_built_on_rank needs a synchronize callable (e.g. a barrier)")
    if is_built_on_rank():
        try:
            return _load_or_build(cache, names, build, what, validate, True)
        finally:
            synchronize()
    synchronize()
    return _load_or_build(cache, names, build, what, validate, False)


def _load_or_build(cache, names, build, what, validate, clean) -> Dict[str, np.ndarray]:
    if clean:
        cache.remove_stale_temporaries()
    arrays = cache.load(names, validate)
    if arrays is not None:
        logger.info("loaded %s indices from %s", what, cache.path("description"))
        return arrays
    start = time.perf_counter()
    arrays = build()
    elapsed = time.perf_counter() - start
    missing = set(names) - set(arrays)
    if missing:
        raise AssertionError(f"index build of {what} did not produce {sorted(missing)}")
    saved = cache.save(arrays)
    logger.info(
        "built %s indices in %.3f s%s",
        what,
        elapsed,
        f" (cached as {cache.path('description')})" if saved else "",
    )
    return arrays

"""Shared pieces of the GPT, BERT and blended datasets: split names and the on-disk index cache.

Index cache layout (one set per dataset and split, in `DatasetConfig.path_to_cache` or a `cache/`
folder beside the data):

    <hash>-<Class>-<split>-<name>.npy        one file per index array
    <hash>-<Class>-<split>-description.json  what the arrays were built from, plus their shapes

`<hash>` is the md5 of the JSON description of everything that affects the arrays, so a change
of any parameter, of the document split, or of the data file itself selects different files.
Every file is written under a temporary name and renamed when complete, the description last, so
concurrent writers never expose a partial file; a file that is unreadable or does not match its
description is reported with a warning and rebuilt.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
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


def file_signature(path: str) -> Optional[Dict[str, int]]:
    """Size and modification time of a file (None when it does not exist).

    Part of cache descriptions so that re-preprocessing a dataset invalidates its cached indices.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def default_cache_dir(path_prefix: Optional[str], class_name: str) -> Optional[str]:
    """`<folder of the data prefix>/cache/<class_name>_indices`, or None without a prefix."""
    if not path_prefix:
        return None
    folder = os.path.dirname(os.path.abspath(path_prefix))
    return os.path.join(folder, "cache", f"{class_name}_indices")


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it to `path`
    (a crash never leaves a half-written file under the final name)."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    """np.save (no pickles) to `path` atomically."""
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), "wb")


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text), "wt")


def atomic_write_json(path: str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), "wt")


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

    def load(self, names: Sequence[str]) -> Optional[Dict[str, np.ndarray]]:
        """The cached arrays (read-only memory maps), or None on a miss or a damaged entry."""
        if self.folder is None or not os.path.isfile(self.path("description")):
            return None
        try:
            with open(self.path("description"), "rt", encoding="utf-8") as f:
                stored = json.load(f)
            if stored.get("description") != self.description:
                raise ValueError("its description differs from the requested one")
            arrays = {}
            for name in names:
                array = np.load(self.path(name), mmap_mode="r", allow_pickle=False)
                meta = stored["arrays"][name]
                if list(array.shape) != meta["shape"] or array.dtype.str != meta["dtype"]:
                    raise ValueError(
                        f"{self.path(name)} holds {array.dtype.str}{list(array.shape)}, the "
                        f"description says {meta['dtype']}{meta['shape']}"
                    )
                arrays[name] = array
            return arrays
        except Exception as exc:  # unreadable, truncated or inconsistent: rebuild
            logger.warning(
                "ignoring damaged index cache entry %s (%s: %s); rebuilding it",
                self.path("description"),
                type(exc).__name__,
                exc,
            )
            return None

    def save(self, arrays: Dict[str, np.ndarray]) -> bool:
        """Write the arrays, then the description; False (with a warning) when it cannot."""
        if self.folder is None:
            return False
        try:
            os.makedirs(self.folder, exist_ok=True)
            for name, array in arrays.items():
                atomic_save_npy(self.path(name), array)
            meta = {n: {"shape": list(a.shape), "dtype": a.dtype.str} for n, a in arrays.items()}
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


def load_or_build(
    cache: IndexCache,
    names: Iterable[str],
    build: Callable[[], Dict[str, np.ndarray]],
    what: str,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
    synchronize: Optional[Callable[[], None]] = None,
) -> Dict[str, np.ndarray]:
    """Read `names` from `cache`, or run `build()`, save its result and log how long it took.

    With `is_built_on_rank`, the ranks where it returns True do this first and then call
    `synchronize()` (also when building fails, so that no rank waits forever); the other ranks
    call `synchronize()` first and then load what was cached (building themselves on a miss).
    """
    names = list(names)
    if is_built_on_rank is None:
        return _load_or_build(cache, names, build, what)
    if synchronize is None:
        raise ValueError("is_built_on_rank needs a synchronize callable (e.g. a barrier)")
    if is_built_on_rank():
        try:
            return _load_or_build(cache, names, build, what)
        finally:
            synchronize()
    synchronize()
    return _load_or_build(cache, names, build, what)


def _load_or_build(cache, names, build, what) -> Dict[str, np.ndarray]:
    arrays = cache.load(names)
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

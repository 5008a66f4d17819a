"""Files that are never half-written, never silently lost, and whose damage is detectable.

Every file the framework writes (checkpoint shards, index caches, preprocessed datasets, analysis
outputs) is first written under a temporary name beside its final path and renamed when complete:

    <final name>.tmp-<pid>-<8 hex digits>-<host>

A process that is killed (SIGKILL, out of memory, a lost node) cannot remove its temporary, which
may be as large as the file it was writing. The next start of a writer removes the temporaries of
processes that are gone (`remove_stale_temporaries`): written on this host by a pid that no longer
runs. Temporaries of other hosts are left alone (their pids mean nothing here); names of earlier
versions without a host (`.tmp-<pid>` and `.tmp-<pid>-<hex>`) count as this host's.

`atomic_write` reports a failed write with the path it was writing ("no space left on device while
writing ..."), also when the writer (torch.save) turned the operating system's error into its own,
and returns the sha256 of the bytes written, which `file_sha256` recomputes at load time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(
    r"\.tmp-(?P<pid>\d+)(?:-(?P<tag>[0-9a-f]{8})(?:-(?P<host>[A-Za-z0-9._-]+))?)?$"
)
_HASH_CHUNK = 8 << 20


def host_name() -> str:
    """This host's name as it appears in temporary file names (only [A-Za-z0-9._-])."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def temporary_path(path: str) -> str:
    """A fresh name, beside `path`, to write `path` under before renaming it into place."""
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{host_name()}"


def temporary_owner(name: str) -> Optional[Tuple[int, Optional[str]]]:
    """(pid, host) of a temporary's name (host None for names of earlier versions), or None when
    `name` is not a temporary."""
    match = _TEMPORARY.search(name)
    if match is None:
        return None
    return int(match.group("pid")), match.group("host")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temporary(name: str) -> bool:
    """A temporary left by a process of this host that no longer runs."""
    owner = temporary_owner(name)
    if owner is None:
        return False
    pid, host = owner
    if host is not None and host != host_name():
        return False
    return pid != os.getpid() and not pid_alive(pid)


def _size_of(path: str) -> int:
    if os.path.isdir(path) and not os.path.islink(path):
        return sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
        )
    return os.path.getsize(path)


def remove_stale_temporaries(folder: str, startswith: str = "") -> List[str]:
    """Remove the stale temporaries (files or folders) directly inside `folder` whose names start
    with `startswith`; returns their paths. Logs a warning naming them and the space freed;
    entries that vanish meanwhile (another process cleaning up) or cannot be removed are skipped.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed, freed = [], 0
    for name in sorted(names):
        if not name.startswith(startswith) or not is_stale_temporary(name):
            continue
        path = os.path.join(folder, name)
        try:
            size = _size_of(path)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("could not remove the stale temporary %s (%s)", path, exc)
            continue
        removed.append(path)
        freed += size
    if removed:
        logger.warning(
            "removed %d temporar%s left by killed processes (%.1f MB): %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            freed / 1e6,
            ", ".join(removed),
        )
    return removed


class _RecordingFile:
    """A file wrapper that hashes what is written, counts it and keeps the first OSError (a
    writer such as torch.save replaces it with a message of its own)."""

    def __init__(self, f, hashing: bool):
        self._f = f
        self.sha256 = hashlib.sha256() if hashing else None
        self.written = 0
        self.error: Optional[OSError] = None

    def write(self, data):
        try:
            n = self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise
        if self.sha256 is not None:
            self.sha256.update(data)
            self.written += memoryview(data).nbytes
        else:
            self.written += len(data)
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)


def write_error(err: OSError, path: str, written: int) -> OSError:
    """`err` restated with the path being written (and what to do when the disk is full)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return OSError(
            err.errno,
            f"{what} while writing {path} (the file system of {os.path.dirname(path) or '.'} is "
            f"full after {written} bytes of this file; the unfinished file was removed and "
            "nothing was replaced): free space there or write elsewhere",
        )
    return OSError(err.errno, f"{err.strerror or err} while writing {path}")


def atomic_write(
    path: str,
    write: Callable[[Any], None],
    mode: str = "wb",
    before_replace: Optional[Callable[[], None]] = None,
) -> Optional[str]:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it to `path`
    (a crash never leaves a half-written file under the final name).

    Returns the sha256 hex digest of the bytes written in binary modes (None in text modes).
    Raises OSError naming `path` when writing fails (full disk, quota, I/O error); the temporary
    is removed and an existing `path` is left as it was. `before_replace()` runs once the new
    file is complete, right before it replaces `path`.
    """
    tmp = temporary_path(path)
    out: Optional[_RecordingFile] = None
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            out = _RecordingFile(f, "b" in mode)
            write(out)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = out.error if out is not None and out.error is not None else exc
        if isinstance(cause, OSError):
            raise write_error(cause, path, out.written if out else 0) from exc
        raise
    return out.sha256.hexdigest() if out.sha256 is not None else None


def atomic_save_npy(path: str, array: np.ndarray) -> str:
    """np.save (no pickles) to `path` atomically; returns the file's sha256."""
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False), "wb")


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text), "wt")


def atomic_write_json(path: str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), "wt")


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file's bytes (what `atomic_write` returned when it wrote it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_HASH_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_temporaries_beside(path_prefix: str) -> List[str]:
    """`remove_stale_temporaries` for the outputs of one path prefix: the files
    `<prefix>*.tmp-...` and the work folders `.<prefix name>.*.tmp-...` beside it."""
    folder = os.path.dirname(os.path.abspath(path_prefix))
    name = os.path.basename(path_prefix)
    return remove_stale_temporaries(folder, name) + remove_stale_temporaries(folder, f".{name}.")

"""One job at a time writes into a --save folder.

Two jobs saving into one folder overwrite each other's shards and tracker file, and the folder
ends up a mix of both runs. The job's global rank 0 holds `<save>/.megatron-save.lock` (created
atomically with O_EXCL) while it runs; it records the holder's host, pid and start time. A second
job finds the file and fails at start, naming the holder. A lock left behind by a process that is
gone (it ran on this host and its pid no longer exists, or holds another program) is taken over
with a warning; a lock of another host cannot be checked and stops the job with the command to
remove it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, Dict, Optional

import torch.distributed as dist

from megatron.core.files import pid_alive

logger = logging.getLogger(__name__)

LOCK_NAME = ".megatron-save.lock"


class SaveFolderInUse(RuntimeError):
    """Another job holds the lock of a --save folder."""


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _holder_gone(holder: Optional[Dict[str, Any]]) -> bool:
    """Whether the recorded holder is provably gone (it ran on this host, its pid is dead)."""
    if holder is None:
        return False  # unreadable: being written right now, or damaged; do not guess
    if holder.get("host") != socket.gethostname():
        return False
    return not pid_alive(int(holder.get("pid", -1)))


class SaveLock:
    """The lock of one --save folder, held by this process (global rank 0 of the job).

    Args:
        folder: the --save folder (created when missing).
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False

    def acquire(self) -> "SaveLock":
        """Take the lock; SaveFolderInUse when a live job holds it."""
        os.makedirs(self.folder, exist_ok=True)
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):  # a second try after removing a dead holder's lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if not _holder_gone(holder):
                    raise SaveFolderInUse(self._in_use_message(holder)) from None
                logger.warning(
                    "--save %s: taking over the lock of pid %s on this host, which is gone",
                    self.folder,
                    holder.get("pid"),
                )
                os.remove(self.path)
                continue
            with os.fdopen(fd, "wt", encoding="utf-8") as f:
                json.dump(record, f)
            self.held = True
            return self
        raise SaveFolderInUse(self._in_use_message(_read(self.path)))

    def _in_use_message(self, holder: Optional[Dict[str, Any]]) -> str:
        if holder is None:
            who = "another job (its lock file cannot be read)"
        else:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
            who = f"the job of pid {holder.get('pid')} on host {holder.get('host')} (since {since})"
        return (
            f"--save {self.folder} is in use by {who}: two jobs would overwrite each other's "
            f"checkpoints. Stop that job, or save elsewhere; if it is gone, remove {self.path}"
        )

    def release(self) -> None:
        """Remove the lock file (only when this process holds it)."""
        if not self.held:
            return
        holder = _read(self.path)
        if holder is not None and holder.get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False


def acquire_save_lock(folder: Optional[str], rank: int) -> Optional[SaveLock]:
    """Global rank 0 takes the lock of --save `folder`; every rank raises SaveFolderInUse when
    it is held (collective when torch.distributed is initialised). None without --save."""
    if not folder:
        return None
    lock, error = None, None
    if rank == 0:
        try:
            lock = SaveLock(folder).acquire()
        except SaveFolderInUse as exc:
            error = str(exc)
        except OSError as exc:
            error = f"--save {folder}: cannot create its lock file ({exc}); check the folder"
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise SaveFolderInUse(error)
    return lock

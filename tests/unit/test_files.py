"""megatron.core.files: temporaries of killed writers are removed, write errors name the path."""

import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron.core import files
from megatron.core.files import (
    atomic_save_npy,
    atomic_write,
    file_sha256,
    host_name,
    remove_stale_temporaries,
    temporary_owner,
    temporary_path,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def killed_while_writing(path: str, nbytes: int = 1 << 20) -> str:
    """Run a process that is SIGKILLed halfway through atomic_write(path); its temporary."""
    code = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]);"
        "from megatron.core.files import atomic_write;"
        "atomic_write(sys.argv[2], lambda f: (f.write(b'x' * int(sys.argv[3])), f.flush(),"
        " os.kill(os.getpid(), signal.SIGKILL)))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, REPO, path, str(nbytes)])
    assert proc.wait() == -signal.SIGKILL
    left = [n for n in os.listdir(os.path.dirname(path)) if n.startswith(os.path.basename(path))]
    assert len(left) == 1 and temporary_owner(left[0])[0] == proc.pid, left
    return os.path.join(os.path.dirname(path), left[0])


def test_temporary_names_carry_pid_and_host():
    name = temporary_path("/x/model_optim_rng.pt")
    assert temporary_owner(name) == (os.getpid(), host_name())
    # names written by earlier versions have no host
    assert temporary_owner("a.bin.tmp-123") == (123, None)
    assert temporary_owner("a.pt.tmp-123-0123abcd") == (123, None)
    assert temporary_owner("a.pt") is None and temporary_owner("a.tmp-x") is None


def test_killed_writer_leftovers_are_removed_and_nothing_else(tmp_path):
    leftover = killed_while_writing(str(tmp_path / "shard.pt"))
    assert os.path.getsize(leftover) == 1 << 20  # a whole shard's worth of space, held forever
    alive = tmp_path / f"other.pt.tmp-{os.getppid()}-0123abcd-{host_name()}"  # a running writer
    remote = tmp_path / "other.pt.tmp-1-0123abcd-some-other-host"  # its pid means nothing here
    own = tmp_path / os.path.basename(temporary_path(str(tmp_path / "mine.pt")))
    user = tmp_path / "notes.tmp-1.txt"  # not a temporary name
    for p in (alive, remote, own, user):
        p.write_bytes(b"keep")
    os.mkdir(tmp_path / "old.parts.tmp-999999999")  # a dead pid's work folder (old-style name)
    (tmp_path / "old.parts.tmp-999999999" / "part.bin").write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(removed) == sorted([leftover, str(tmp_path / "old.parts.tmp-999999999")])
    assert all(p.read_bytes() == b"keep" for p in (alive, remote, own, user))
    assert remove_stale_temporaries(str(tmp_path)) == []


class _FullDisk:
    """A file whose device fills up after `room` bytes."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("room", [0, 4096])
def test_full_disk_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, room):
    path = str(tmp_path / "model_optim_rng.pt")
    atomic_write(path, lambda f: torch.save({"w": torch.zeros(4)}, f))
    before = open(path, "rb").read()
    real_open = open
    full = lambda *a, **k: _FullDisk(real_open(*a, **k), room)  # noqa: E731
    monkeypatch.setattr(files, "open", full, raising=False)
    with pytest.raises(OSError) as info:
        # torch.save turns the error into "unexpected pos ..." unless it is kept
        atomic_write(path, lambda f: torch.save({"w": torch.randn(100000)}, f))
    assert info.value.errno == errno.ENOSPC
    assert f"no space left on device while writing {path}" in str(info.value)
    assert "unexpected pos" not in str(info.value)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["model_optim_rng.pt"]  # the partial temporary is gone


def test_digest_of_the_write_is_the_digest_of_the_file(tmp_path):
    path = str(tmp_path / "a.npy")
    digest = atomic_save_npy(path, np.arange(100000))
    assert digest == file_sha256(path)

"""One job per --save folder (megatron/training/save_lock.py), and the job watch of the heartbeat
thread (megatron/training/liveness.py): each fault injected, the message and the outcome
asserted."""

import json
import os
import socket
import subprocess
import sys

import pytest

from megatron.training.liveness import PeerLiveness
from megatron.training.save_lock import (
    LOCK_NAME,
    SaveFolderInUse,
    SaveLock,
    acquire_save_lock,
)


def _foreign_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"host": host or socket.gethostname(), "pid": pid, "since": 0}
    (folder / LOCK_NAME).write_text(json.dumps(record))


@pytest.fixture
def live_pid():
    """The pid of a live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_the_lock_is_taken_and_released(tmp_path):
    folder = tmp_path / "save"
    lock = acquire_save_lock(str(folder), rank=0)
    held = json.loads((folder / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(SaveFolderInUse, match=f"pid {os.getpid()} on host"):
        SaveLock(str(folder)).acquire()  # a second job of this process's own
    lock.release()
    assert not (folder / LOCK_NAME).exists()
    assert acquire_save_lock(None, rank=0) is None  # no --save, no lock


def test_a_live_job_holding_the_folder_stops_the_second(tmp_path, live_pid):
    folder = tmp_path / "save"
    _foreign_lock(folder, live_pid)
    (folder / "latest_checkpointed_iteration.txt").write_text("20")
    with pytest.raises(SaveFolderInUse) as err:
        acquire_save_lock(str(folder), rank=0)
    message = str(err.value)
    assert f"pid {live_pid} on host {socket.gethostname()}" in message
    assert str(folder / LOCK_NAME) in message  # what to remove when that job is gone
    # nothing of the holder's was touched
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == live_pid
    assert (folder / "latest_checkpointed_iteration.txt").read_text() == "20"


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid of this host that is gone
    folder = tmp_path / "save"
    _foreign_lock(folder, proc.pid)
    lock = acquire_save_lock(str(folder), rank=0)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {proc.pid}" in caplog.text
    lock.release()


def test_a_lock_of_another_host_is_not_guessed_at(tmp_path):
    folder = tmp_path / "save"
    _foreign_lock(folder, 12345, host="some-other-node")
    with pytest.raises(SaveFolderInUse, match="pid 12345 on host some-other-node"):
        acquire_save_lock(str(folder), rank=0)


def test_only_the_holder_removes_the_lock(tmp_path, live_pid):
    folder = tmp_path / "save"
    lock = SaveLock(str(folder)).acquire()
    _foreign_lock(folder, live_pid)  # replaced behind our back (someone removed ours)
    lock.release()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == live_pid


class _DeadStore:
    def add(self, key, value):
        raise RuntimeError("Connection reset by peer")


def test_the_job_watch_notices_a_lost_agent_and_a_lost_store():
    alive = PeerLiveness(None, 0, 1, interval=0.05, agent_pid=os.getppid())
    assert alive.check_job() is None
    orphan = PeerLiveness(None, 0, 1, interval=0.05, agent_pid=os.getppid() + 1)
    assert "torchrun agent (pid" in orphan.check_job()
    lost_store = PeerLiveness(_DeadStore(), 0, 2, interval=0.05)
    assert "rendezvous store does not answer" in lost_store.check_job()
    orphan.start()
    orphan._thread.join(timeout=30)  # the thread stops once it has noticed
    assert not orphan._thread.is_alive() and "torchrun agent" in orphan.job_gone


def test_a_second_training_job_fails_at_start(tmp_path, live_pid):
    import pretrain_gpt
    from megatron.training.training import pretrain

    folder = tmp_path / "save"
    _foreign_lock(folder, live_pid)
    argv = (
        "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
        "--micro-batch-size 2 --global-batch-size 2 --lr 1e-3 --train-iters 2 --mock-data "
        "--tokenizer-type NullTokenizer --vocab-size 60 --eval-iters 0"
    ).split() + ["--save", str(folder)]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built although --save is in use")

    with pytest.raises(SaveFolderInUse, match=f"pid {live_pid}"):
        pretrain(pretrain_gpt.datasets_provider, no_model, pretrain_gpt.forward_step, argv=argv)
    assert sorted(os.listdir(folder)) == [LOCK_NAME]

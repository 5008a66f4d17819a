"""Multi-node launch with torchrun: two "nodes" on localhost (two torchrun agents with the same
--master-addr/--master-port, one process each) train a tensor-parallel GPT on mock data; when a
rank is killed, the survivor exits non-zero within a bounded time with an error naming the lost
rank (--distributed-timeout-minutes is honoured, see megatron/training/liveness.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import List

import pytest

from tests.distributed.launcher import free_port

TINY = (
    "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --micro-batch-size 2 "
    "--global-batch-size 4 --lr 1e-3 --mock-data --tokenizer-type NullTokenizer --vocab-size 60 "
    "--log-interval 1 --eval-iters 0 --num-workers 0 --distributed-backend gloo"
).split()


class Node:
    """One `torchrun --nnodes N --node-rank R` agent; its output is collected as it arrives.

    `script` is the training script (a path relative to the repository, or absolute)."""

    def __init__(
        self,
        repo_root,
        node_rank: int,
        port: int,
        args: List[str],
        nnodes: int = 2,
        nproc: int = 1,
        script: str = "pretrain_gpt.py",
    ):
        rendezvous = ["--master-addr", "127.0.0.1", "--master-port", str(port)]
        cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nnodes", str(nnodes)]
        cmd += ["--node-rank", str(node_rank), "--nproc-per-node", str(nproc)]
        cmd += [script, *args]
        self.marker = os.path.basename(script).encode()  # in the training processes' cmdline
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        # A session of its own: kill() ends the agent and the training process it started.
        self.proc = subprocess.Popen(
            cmd,
            cwd=repo_root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: List[str] = []
        self._workers = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        """SIGKILL what is left of this node: its training process (torchrun starts it in a
        session of its own, so it outlives a killed agent), then the agent's process group."""
        for pid in self._workers | set(self._children()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.marker in f.read():  # still ours, not a reused PID
                        os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def _children(self) -> List[int]:
        """PIDs of the agent's children running the training script."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if ppid == self.proc.pid and self.marker in cmdline:
                found.append(int(entry))
        return found

    def worker_pid(self) -> int:
        """PID of the training process this agent started (remembered for kill())."""
        children = self._children()
        if not children:
            raise RuntimeError(f"no training process under torchrun {self.proc.pid}")
        self._workers.update(children)
        return children[0]


def _launch(repo_root, args):
    port = free_port()
    return [Node(repo_root, r, port, args) for r in (0, 1)]


def _iterations(text: str) -> List[int]:
    return [int(m) for m in re.findall(r"iteration\s+(\d+)/", text)]


def test_two_nodes_train_tensor_parallel(repo_root):
    nodes = _launch(repo_root, TINY + ["--tensor-model-parallel-size", "2", "--train-iters", "4"])
    try:
        codes = [n.wait(180) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    out = nodes[0].output
    assert codes == [0, 0], out[-3000:] + nodes[1].output[-3000:]
    assert "TP 2, PP 1, DP 1" in out
    assert _iterations(out) == [1, 2, 3, 4]
    losses = [float(x) for x in re.findall(r"lm loss: ([0-9.eE+-]+)", out)]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_lost_rank_is_named_and_survivor_exits(repo_root, sig):
    """SIGKILL: the survivor's next exchange fails at once (connection reset). SIGSTOP: it times
    out after --distributed-timeout-minutes (6 s). Either way it names rank 1 and exits."""
    args = TINY + "--pipeline-model-parallel-size 2 --train-iters 100000".split()
    args += ["--distributed-timeout-minutes", "0.1"]
    nodes = _launch(repo_root, args)
    try:
        deadline = time.monotonic() + 120
        while len(_iterations(nodes[0].output)) < 3:
            assert time.monotonic() < deadline, (
                "training did not start:\n" + nodes[0].output[-3000:]
            )
            assert nodes[0].proc.poll() is None, nodes[0].output[-3000:]
            time.sleep(0.2)
        nodes[0].worker_pid()  # remembered, so that kill() can end it whatever happens
        os.kill(nodes[1].worker_pid(), sig)
        killed_at = time.monotonic()
        code = nodes[0].wait(90)
        elapsed = time.monotonic() - killed_at
        if sig == signal.SIGKILL:
            assert nodes[1].wait(60) != 0  # its agent reports the dead worker
    finally:
        for n in nodes:
            n.kill()
    out = nodes[0].output
    assert code != 0, out[-3000:]
    assert "lost rank(s) [1]" in out, out[-3000:]
    if sig == signal.SIGSTOP:
        assert "Timed out" in out or "timeout" in out.lower()
    # (Timeout of 6 s when frozen) + heartbeat diagnosis (3 beats of 1.5 s) + agent shutdown.
    assert elapsed < 60, f"the survivor took {elapsed:.0f} s to exit"


_DIES_WHILE_DATASETS_BUILD = """
import os, sys
sys.path.insert(0, {repo!r})
import torch.distributed
import pretrain_gpt
from megatron.training.training import pretrain

def datasets_provider(run, rt, num_samples):
    if rt.pstate.rank == 1:
        os._exit(3)  # dies while the datasets are built, before training starts
    datasets = pretrain_gpt.datasets_provider(run, rt, num_samples)
    torch.distributed.barrier()  # as after an index build: rank 0 waits for rank 1 here
    return datasets

pretrain(datasets_provider, pretrain_gpt.model_provider, pretrain_gpt.forward_step)
"""


@pytest.mark.slow
def test_a_rank_lost_during_start_up_is_named(repo_root, tmp_path):
    """Rank 1 dies while datasets are built (rank 0 waits for it in the data barrier): rank 0
    exits naming rank 1, not with a bare gloo error."""
    script = tmp_path / "pretrain_gpt_dies_at_start.py"
    script.write_text(_DIES_WHILE_DATASETS_BUILD.format(repo=str(repo_root)))
    args = TINY + ["--train-iters", "5", "--distributed-timeout-minutes", "0.1"]
    port = free_port()
    nodes = [Node(repo_root, r, port, args, script=str(script)) for r in (0, 1)]
    try:
        code = nodes[0].wait(120)
        assert nodes[1].wait(60) != 0
    finally:
        for n in nodes:
            n.kill()
    out = nodes[0].output
    assert code != 0, out[-3000:]
    assert "lost rank(s) [1]" in out, out[-3000:]
    assert not _iterations(out)  # it never trained


def _live_pids(pids) -> List[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":  # not a zombie
                    alive.append(pid)
        except OSError:
            pass
    return alive


@pytest.mark.slow
def test_training_stops_when_the_torchrun_agent_is_killed(repo_root, tmp_path):
    """Killing the agent orphans its two training processes: they stop at the end of the
    iteration (both, at the same one) instead of training and saving on; the checkpoint they
    leave is complete and the tracker stops moving."""
    save = tmp_path / "ckpt"
    args = TINY + "--train-iters 100000 --distributed-timeout-minutes 0.1".split()
    args += ["--save", str(save), "--save-interval", "5"]
    node = Node(repo_root, 0, free_port(), args, nnodes=1, nproc=2)
    try:
        deadline = time.monotonic() + 120
        while len(_iterations(node.output)) < 3:
            assert time.monotonic() < deadline, "training did not start:\n" + node.output[-3000:]
            assert node.proc.poll() is None, node.output[-3000:]
            time.sleep(0.2)
        workers = node._children()
        assert len(workers) == 2
        node._workers.update(workers)
        os.kill(node.proc.pid, signal.SIGKILL)  # the agent only: its workers are orphaned
        killed_at = time.monotonic()
        while _live_pids(workers) and time.monotonic() - killed_at < 60:
            time.sleep(0.2)
        left = _live_pids(workers)
        elapsed = time.monotonic() - killed_at
        node._reader.join(timeout=10)
    finally:
        node.kill()
    out = node.output
    assert not left, f"orphaned training processes {left} still running:\n" + out[-3000:]
    assert "torchrun agent" in out or "rendezvous store" in out, out[-3000:]
    assert "stopped at iteration" in out, out[-3000:]
    tracker = (save / "latest_checkpointed_iteration.txt").read_text().strip()
    stopped = int(re.findall(r"stopped at iteration (\d+)", out)[-1])
    assert int(tracker) == stopped  # the final state was saved, and nothing after it
    assert elapsed < 60


LAUNCHERS = [
    ("examples/gpt3/train_gpt3_125m.sh", "pretrain_gpt.py", (12, 768, 12, 2048, 256)),
    ("examples/gpt3/train_gpt3_350m.sh", "pretrain_gpt.py", (24, 1024, 16, 2048, 256)),
    ("examples/gpt3/train_gpt3_1.3b.sh", "pretrain_gpt.py", (24, 2048, 16, 2048, 512)),
    ("examples/bert/train_bert_large.sh", "pretrain_bert.py", (24, 1024, 16, 512, 1024)),
]


@pytest.mark.parametrize(
    "launcher,script,sizes", LAUNCHERS, ids=[x[0].split("/")[-1] for x in LAUNCHERS]
)
def test_launchers_build_valid_command_lines(repo_root, tokenizer_dir, launcher, script, sizes):
    """DRY_RUN=1 prints the torchrun command; its flags must parse and validate for the layout."""
    import shlex

    from megatron.training.arguments import parse_args

    env = dict(
        os.environ,
        DRY_RUN="1",
        NNODES="2",
        NODE_RANK="1",
        MASTER_ADDR="node0",
        NPROC_PER_NODE="4",
        TP="2",
        PP="2",
        VPP_LAYERS="3",
        MOCK_DATA="1",
        DATA_PATH="data/corpus",
        VOCAB_FILE=str(tokenizer_dir / "bert-base-uncased-vocab.txt"),
    )
    done = subprocess.run(
        ["bash", launcher], cwd=repo_root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)
    at = argv.index(script)
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    launch = argv[3:at]
    for flag, value in [
        ("--nnodes", "2"),
        ("--node-rank", "1"),
        ("--nproc-per-node", "4"),
        ("--master-addr", "node0"),
    ]:
        assert launch[launch.index(flag) + 1] == value
    run = parse_args(argv[at + 1 :], world_size=8, check_data_files=False)  # a dry run
    t = run.transformer
    assert (
        t.num_layers,
        t.hidden_size,
        t.num_attention_heads,
        run.model.seq_length,
        run.training.global_batch_size,
    ) == sizes
    layout = run.layout
    assert (layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size) == (2, 2)
    assert layout.virtual_pipeline_model_parallel_size == t.num_layers // 2 // 3
    assert run.optimizer.fp16 and run.optimizer.use_distributed_optimizer


def test_liveness_names_the_silent_rank():
    """Heartbeats in a store: the rank that stops beating is the one named (in-process)."""
    import torch.distributed as dist

    from megatron.training.liveness import PeerLiveness, is_communication_error

    store = dist.HashStore()
    beating = [PeerLiveness(store, r, 3, interval=0.05).start() for r in (0, 2)]
    silent = PeerLiveness(store, 1, 3, interval=0.05).start()
    silent.stop()  # rank 1 "dies": its counter stops
    try:
        assert beating[0].lost_ranks() == [1]
        assert beating[1].lost_ranks(wait=0.2) == [1]
    finally:
        for b in beating:
            b.stop()
    assert is_communication_error(RuntimeError("[gloo/transport/tcp/pair.cc:537] Connection reset"))
    assert not is_communication_error(ValueError("shape mismatch"))

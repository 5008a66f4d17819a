"""Checkpoints lose nothing and accept nothing silently: damaged files, a full disk, mismatched
architectures or layouts, missing state, misplaced files, a mistyped --load, killed saves."""

import errno
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from megatron.core import files
from megatron.training import checkpointing as ckpt
from megatron.training.checkpoint_convert import convert_checkpoint
from tests.distributed.launcher import run_distributed
from tests.integration.test_pretrain_gpt import TINY, run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESUME = TINY + ["--train-iters", "6", "--lr-warmup-iters", "1"]
WEIGHT = "decoder.layers.0.mlp.linear_fc1.weight"


def save_at_3(root, *extra):
    """A run of 6 iterations stopped (and saved) at 3; the path of its shard."""
    run(RESUME + ["--exit-interval", "3", "--save", str(root), *extra])
    return root / "iter_0000003" / "mp_rank_00" / "model_optim_rng.pt"


def iterations(argv):
    """The iterations a run trains (its log goes to stdout: read it with capsys)."""
    history = []
    run(argv, history)
    return [h["iteration"] for h in history]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pristine checkpoint at iteration 3; tests copy it."""
    root = tmp_path_factory.mktemp("pristine")
    save_at_3(root)
    return root


@pytest.fixture
def ckpt_dir(saved, tmp_path):
    root = tmp_path / "ckpt"
    shutil.copytree(saved, root)
    return root


def shard_of(root):
    return root / "iter_0000003" / "mp_rank_00" / "model_optim_rng.pt"


# ---- item 4: damage ----------------------------------------------------------------------
def flip_a_weight_bit(path):
    """Flip an exponent bit of one float of a weight tensor, inside the file's bytes."""
    raw = torch.load(path, weights_only=True)["model"][WEIGHT].numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(raw)
    assert at > 0
    data[at + 4 * 37 + 3] ^= 0x40
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_flipped_bit_stops_the_run_naming_the_file(ckpt_dir):
    path = shard_of(ckpt_dir)
    damaged = flip_a_weight_bit(path)
    # unverified (the old behaviour) the damage loads silently: the weight differs
    loaded = ckpt.load_checkpoint_file(str(path), verify=False)["model"][WEIGHT]
    assert not torch.isfinite(loaded).all() or loaded.abs().max() > 1e6
    with pytest.raises(ckpt.CheckpointError) as info:
        run(RESUME + ["--load", str(ckpt_dir)])
    message = str(info.value)
    assert f"{path} is damaged" in message and "--no-verify-checkpoint" in message
    assert path.read_bytes() == damaged  # nothing the user had is touched
    assert (ckpt_dir / ckpt.TRACKER_FILENAME).read_text() == "3"


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_unreadable_shards_are_errors_naming_the_file(ckpt_dir, tmp_path, damage):
    path = shard_of(ckpt_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncated" else os.urandom(len(data)))
    with pytest.raises(SystemExit) as info:  # the stored arguments are read before any work
        run(RESUME + ["--load", str(ckpt_dir)])
    assert f"{path} cannot be read as a checkpoint" in str(info.value.code)
    with pytest.raises(ckpt.CheckpointError, match=f"{path} cannot be read as a checkpoint"):
        ckpt.load_checkpoint_file(str(path), verify=False)
    with pytest.raises(ckpt.CheckpointError, match=str(path)):
        convert_checkpoint(str(ckpt_dir), str(tmp_path / "converted"), 1, 1)


class _FullDisk:
    """An open file whose device has `room` bytes left."""

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


def test_a_full_disk_during_save_names_the_path_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    real_open = open

    def disk_full_at_iteration_6(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        return _FullDisk(f, 4096) if "iter_0000006" in str(path) else f

    monkeypatch.setattr(files, "open", disk_full_at_iteration_6, raising=False)
    with pytest.raises(ckpt.CheckpointError) as info:
        run(RESUME + ["--save", str(tmp_path), "--save-interval", "3"])
    shard6 = tmp_path / "iter_0000006" / "mp_rank_00" / "model_optim_rng.pt"
    message = str(info.value)
    assert f"no space left on device while writing {shard6}" in message
    assert (
        "the latest complete checkpoint is still 3" in message and "unexpected pos" not in message
    )
    monkeypatch.undo()
    assert (tmp_path / ckpt.TRACKER_FILENAME).read_text() == "3"
    assert ckpt.verify_shard(str(shard_of(tmp_path)))
    assert not [n for _, _, names in os.walk(tmp_path) for n in names if ".tmp-" in n]
    assert iterations(RESUME + ["--load", str(tmp_path)]) == [4, 5, 6]


def test_a_checkpoint_without_checksums_loads_with_a_warning(ckpt_dir, capsys):
    os.remove(ckpt.checksum_path(str(shard_of(ckpt_dir))))
    assert iterations(RESUME + ["--load", str(ckpt_dir)]) == [4, 5, 6]
    assert f"{shard_of(ckpt_dir)} has no checksum file" in capsys.readouterr().out


def test_checksum_files_are_in_sha256sum_format(saved):
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum on this machine")
    check = subprocess.run(
        ["sha256sum", "-c", "model_optim_rng.pt.sha256"], cwd=shard_of(saved).parent
    )
    assert check.returncode == 0


def test_the_command_line_exits_with_the_message(ckpt_dir):
    flip_a_weight_bit(shard_of(ckpt_dir))
    proc = subprocess.run(
        [sys.executable, "pretrain_gpt.py", *RESUME, "--load", str(ckpt_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and f"{shard_of(ckpt_dir)} is damaged" in proc.stderr


# ---- item 5: mismatches on resume -------------------------------------------------------
def test_another_architecture_is_an_error_listing_the_differences(ckpt_dir, capsys):
    argv = list(RESUME)
    argv[argv.index("--num-attention-heads") + 1] = "8"
    with pytest.raises(SystemExit) as info:
        run(argv + ["--load", str(ckpt_dir), "--normalization", "RMSNorm"])
    message = str(info.value.code)
    assert "--num-attention-heads: checkpoint 4, this run 8" in message
    assert "--normalization: checkpoint LayerNorm, this run RMSNorm" in message
    assert "kv-channels" not in message  # it only follows the head count
    assert "--override-checkpoint-args num-attention-heads normalization" in message
    allowed = ["--load", str(ckpt_dir), "--override-checkpoint-args", "num-attention-heads"]
    assert iterations(argv + allowed) == [4, 5, 6]
    assert "--num-attention-heads is 4 in the checkpoint, 8 in this run" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="choose from .*num-attention-heads"):
        run(RESUME + ["--load", str(ckpt_dir), "--override-checkpoint-args", "num-heads"])


def test_an_overridden_option_that_changes_shapes_names_the_file(ckpt_dir):
    argv = RESUME + ["--load", str(ckpt_dir), "--hidden-size", "48"]
    with pytest.raises(ValueError, match=f"{shard_of(ckpt_dir)}: checkpoint tensor .* has shape"):
        run(argv + ["--override-checkpoint-args", "hidden-size"])


def test_another_parallel_layout_points_at_the_converter(ckpt_dir):
    path = shard_of(ckpt_dir)
    sd = torch.load(path, weights_only=True)
    sd["args"]["parallel"]["tensor_model_parallel_size"] = 2  # as if saved at TP 2
    ckpt.save_shard(sd, str(path))
    with pytest.raises(SystemExit) as info:
        run(RESUME + ["--load", str(ckpt_dir)])
    message = str(info.value.code)
    assert "saved with TP 2, PP 1, but this run uses TP 1, PP 1" in message
    assert "tools/checkpoint_util.py" in message and "--target-tensor-parallel-size 1" in message


def test_missing_optimizer_and_rng_state_are_warned_about(tmp_path, capsys):
    save_at_3(tmp_path, "--no-save-optim", "--no-save-rng")
    capsys.readouterr()
    assert iterations(RESUME + ["--load", str(tmp_path)]) == [4, 5, 6]
    out = capsys.readouterr().out
    assert "has no optimizer state (saved with --no-save-optim)" in out
    assert "WARNING: the checkpoint has no RNG state" in out


def test_a_shard_copied_from_another_iteration_is_refused(ckpt_dir):
    shutil.copytree(ckpt_dir / "iter_0000003", ckpt_dir / "iter_0000002")
    (ckpt_dir / ckpt.TRACKER_FILENAME).write_text("2")
    with pytest.raises(ckpt.CheckpointError, match="stores iteration 3 but lies in the folder of"):
        run(RESUME + ["--load", str(ckpt_dir)])


def test_a_load_folder_that_is_not_a_checkpoint_is_an_error(ckpt_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"--load \S+_typo: no such folder"):
        run(RESUME + ["--load", f"{ckpt_dir}_typo"])
    with pytest.raises(SystemExit, match=r"holds no latest_checkpointed_iteration.txt.*ckpt"):
        run(RESUME + ["--load", str(tmp_path)])  # the parent of the checkpoint folder
    with pytest.raises(SystemExit, match=r"iter_0000005 is missing \(iterations in \S+: 3\)"):
        run(RESUME + ["--load", str(ckpt_dir), "--ckpt-step", "5"])
    # --save X --load X: the first run of a restartable job starts from scratch
    fresh = str(tmp_path / "new")
    assert iterations(RESUME + ["--exit-interval", "2", "--load", fresh, "--save", fresh]) == [1, 2]
    assert iterations(RESUME + ["--exit-interval", "4", "--load", fresh, "--save", fresh]) == [3, 4]


# ---- item 10: leftovers of killed saves ---------------------------------------------------
def test_temporaries_of_a_killed_save_are_removed_at_the_next_start(ckpt_dir):
    target = str(ckpt_dir / "iter_0000006" / "mp_rank_00" / "model_optim_rng.pt")
    os.makedirs(os.path.dirname(target))
    code = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]);"
        "from megatron.core.files import atomic_write;"
        "atomic_write(sys.argv[2], lambda f: (f.write(b'x' * 2**20), f.flush(),"
        " os.kill(os.getpid(), signal.SIGKILL)))"
    )
    killed = subprocess.Popen([sys.executable, "-c", code, REPO, target])
    assert killed.wait() == -signal.SIGKILL
    (leftover,) = [n for n in os.listdir(os.path.dirname(target)) if ".tmp-" in n]
    assert iterations(RESUME + ["--load", str(ckpt_dir), "--save", str(ckpt_dir)]) == [4, 5, 6]
    assert leftover not in os.listdir(os.path.dirname(target))
    assert ckpt.verify_shard(target) and ckpt.verify_shard(str(shard_of(ckpt_dir)))


# ---- several ranks: one rank's problem stops every rank, with the same message ------------
def _run_reporting(rank, world_size, argv, full_disk_on_rank=None):
    """Run on one rank; the CheckpointError it ended with (None: it finished)."""
    if rank == full_disk_on_rank:
        real_open = open

        def full(path, *args, **kwargs):
            f = real_open(path, *args, **kwargs)
            return _FullDisk(f, 4096) if "iter_0000006" in str(path) else f

        files.open = full
    try:
        run(argv)
    except ckpt.CheckpointError as exc:
        return str(exc)
    return None


def test_one_ranks_bad_shard_or_full_disk_stops_every_rank(tmp_path):
    tp2 = RESUME + ["--tensor-model-parallel-size", "2", "--save", str(tmp_path)]
    errors = run_distributed(_run_reporting, 2, tp2 + ["--save-interval", "3"], 1, timeout=240)
    shard6 = tmp_path / "iter_0000006" / "mp_rank_01" / "model_optim_rng.pt"
    assert all(f"no space left on device while writing {shard6}" in e for e in errors), errors
    assert (tmp_path / ckpt.TRACKER_FILENAME).read_text() == "3"
    rank1 = tmp_path / "iter_0000003" / "mp_rank_01" / "model_optim_rng.pt"
    flip_a_weight_bit(rank1)
    errors = run_distributed(_run_reporting, 2, tp2 + ["--load", str(tmp_path)], timeout=240)
    assert all(f"{rank1} is damaged" in e for e in errors), errors

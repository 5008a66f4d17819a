"""A private virtual environment with megatron-core, used as an independent oracle.

megatron-core installs the same top-level package `megatron` as this project, so it cannot share
our interpreter: it lives in its own venv (no system site packages) under
`$MEGATRON_ORACLE_CACHE/mcore-venv` (default `~/.cache/megatron-de-oracles/mcore-venv`), made once
and reused, and oracle code runs there in a subprocess (`run_mcore_worker`).

torch is installed first and only from a local file (`pip install --no-index --no-deps
torch==2.13.0`, which finds the CPU wheel through pip's find-links; a plain PyPI install would pull
a multi-GB CUDA build), then megatron-core with torch pinned, so pip only adds torch's small
dependencies. When that or the megatron-core install fails (no wheel, no network),
`OracleUnavailable` says why and the tests skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

TORCH_VERSION = "2.13.0"
MCORE_VERSION = "0.16.1"
WORKER = pathlib.Path(__file__).with_name("mcore_worker.py")
_CHECK = (
    "import megatron.core.datasets.indexed_dataset as m, megatron.core.package_info as p, numpy; "
    "print(p.__version__)"
)


class OracleUnavailable(RuntimeError):
    """The megatron-core venv could not be made or does not work; the message says why."""


def cache_dir() -> pathlib.Path:
    """Folder holding the oracle venvs ($MEGATRON_ORACLE_CACHE or ~/.cache/megatron-de-oracles)."""
    root = os.environ.get("MEGATRON_ORACLE_CACHE")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "megatron-de-oracles"


def venv_python(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def _clean_env() -> dict:
    """Environment for venv subprocesses: none of our interpreter's paths leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _run(cmd, timeout: float) -> subprocess.CompletedProcess:
    # run outside the repository: `python -c` / `-m` put the working directory on sys.path, and
    # our own `megatron` package there would shadow megatron-core
    cache_dir().mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=_clean_env(),
        cwd=str(cache_dir()),
    )  # fmt: skip


def _works(python: pathlib.Path) -> bool:
    if not python.exists():
        return False
    try:
        r = _run([python, "-I", "-c", _CHECK], timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and r.stdout.strip().startswith(MCORE_VERSION)


def _build(venv: pathlib.Path) -> float:
    """Create the venv from scratch; returns the seconds it took."""
    start = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    steps = [
        ([sys.executable, "-m", "venv", venv], "create the venv"),
        ([venv_python(venv), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
          f"torch=={TORCH_VERSION}"], f"install torch {TORCH_VERSION} from a local wheel"),
        # torch stays pinned: pip only adds its small dependencies and megatron-core
        ([venv_python(venv), "-m", "pip", "install", "--quiet", f"torch=={TORCH_VERSION}",
          f"megatron-core=={MCORE_VERSION}", "numpy"], f"install megatron-core {MCORE_VERSION}"),
    ]  # fmt: skip
    for cmd, what in steps:
        try:
            r = _run(cmd, timeout=900)
        except subprocess.TimeoutExpired:
            raise OracleUnavailable(f"could not {what}: timed out") from None
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise OracleUnavailable(f"could not {what}: {' | '.join(tail)}")
    return time.monotonic() - start


def ensure_mcore_python() -> pathlib.Path:
    """Python of a working megatron-core venv, made on first use (under a file lock).

    Raises:
        OracleUnavailable: the venv cannot be made here.
    """
    root = cache_dir()
    venv = root / "mcore-venv"
    python = venv_python(venv)
    marker = venv / "megatron-de-oracle.json"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".mcore-venv.lock", "w")
    except OSError as e:
        raise OracleUnavailable(f"cannot write the oracle cache {root}: {e}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs share one venv
        if marker.exists() and _works(python):
            return python
        seconds = _build(venv)
        if not _works(python):
            raise OracleUnavailable(f"{venv}: megatron-core {MCORE_VERSION} does not import")
        marker.write_text(json.dumps({"mcore": MCORE_VERSION, "build_seconds": round(seconds, 1)}))
    return python


def build_seconds() -> float | None:
    """Seconds the cached venv took to build (recorded when it was made)."""
    marker = cache_dir() / "mcore-venv" / "megatron-de-oracle.json"
    try:
        return json.loads(marker.read_text())["build_seconds"]
    except (OSError, ValueError, KeyError):
        return None


def run_mcore_worker(python: pathlib.Path, jobs: list, workdir: pathlib.Path) -> list:
    """Run `mcore_worker.py` on a list of jobs inside the venv; returns its per-job results."""
    job_file = workdir / "mcore_jobs.json"
    out_file = workdir / "mcore_results.json"
    job_file.write_text(json.dumps(jobs))
    r = _run([python, "-I", WORKER, job_file, out_file], timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"megatron-core worker failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(out_file.read_text())

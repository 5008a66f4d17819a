"""Private virtual environments for peer projects used as oracles (megatron-core, DeepSpeed).

Each lives under `$MEGATRON_ORACLE_CACHE/<name>` (default `~/.cache/megatron-de-oracles/<name>`),
without system site packages, made once (under a file lock) and reused. torch is installed first
and only from a local file (`pip install --no-index --no-deps torch==2.13.0`, which finds the CPU
wheel through pip's find-links; a plain PyPI install would pull a multi-GB CUDA build). Commands
run outside the repository with a clean environment, so our own `megatron` package never shadows
a peer's. When a venv cannot be made (no wheel, no network) `OracleUnavailable` says why and the
tests skip.
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

TORCH_VERSION = "2.13.0"
MARKER = "megatron-de-oracle.json"


class OracleUnavailable(RuntimeError):
    """An oracle venv could not be made or does not work; the message says why."""


def cache_dir() -> pathlib.Path:
    """Folder holding the oracle venvs ($MEGATRON_ORACLE_CACHE or ~/.cache/megatron-de-oracles)."""
    root = os.environ.get("MEGATRON_ORACLE_CACHE")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "megatron-de-oracles"


def venv_python(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def run(
    cmd: Sequence, timeout: float, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """Run `cmd` in the cache folder (not the repository) with none of our interpreter's paths;
    `env` adds variables."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    clean.update(PYTHONNOUSERSITE="1", PYTHONWARNINGS="ignore", **(env or {}))
    cache_dir().mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean,
        cwd=str(cache_dir()),
    )


def _works(python: pathlib.Path, check: str, accept: Callable[[str], bool], env) -> bool:
    if not python.exists():
        return False
    try:
        r = run([python, "-I", "-c", check], timeout=300, env=env)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and accept(r.stdout.strip())


def _build(venv: pathlib.Path, packages: List[Tuple[List[str], str]], env, timeout: float) -> float:
    """Create the venv from scratch (torch first, from the local wheel); returns the seconds."""
    start = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    pip = [venv_python(venv), "-m", "pip", "install", "--quiet"]
    steps = [
        ([sys.executable, "-m", "venv", venv], "create the venv"),
        (
            pip + ["--no-index", "--no-deps", f"torch=={TORCH_VERSION}"],
            f"install torch {TORCH_VERSION} from a local wheel",
        ),
    ] + [(pip + args, what) for args, what in packages]
    for cmd, what in steps:
        try:
            r = run(cmd, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise OracleUnavailable(f"could not {what}: timed out") from None
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise OracleUnavailable(f"could not {what}: {' | '.join(tail)}")
    return time.monotonic() - start


def ensure_venv(
    name: str,
    packages: List[Tuple[List[str], str]],
    check: str,
    accept: Callable[[str], bool],
    env: Optional[Dict[str, str]] = None,
    timeout: float = 1200,
) -> pathlib.Path:
    """Python of the working venv `name`, built on first use.

    Args:
        packages: (pip install arguments, what they install) after torch, in order; keep
            `torch==2.13.0` among the arguments so pip never replaces it.
        check: code run with the venv's python to test it; `accept(stdout)` says it works.
        env: extra environment variables for every command.
    """
    root = cache_dir()
    venv = root / name
    python = venv_python(venv)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{name}.lock", "w")
    except OSError as e:
        raise OracleUnavailable(f"cannot write the oracle cache {root}: {e}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs share one venv
        if _works(python, check, accept, env):
            if not (venv / MARKER).exists():
                (venv / MARKER).write_text(json.dumps({"build_seconds": None}))
            return python
        seconds = _build(venv, packages, env, timeout)
        if not _works(python, check, accept, env):
            raise OracleUnavailable(f"{venv}: the oracle does not import after installing it")
        (venv / MARKER).write_text(json.dumps({"build_seconds": round(seconds, 1)}))
    return python


def build_seconds(name: str) -> Optional[float]:
    """Seconds the cached venv took to build (None when unknown)."""
    try:
        return json.loads((cache_dir() / name / MARKER).read_text())["build_seconds"]
    except (OSError, ValueError, KeyError):
        return None

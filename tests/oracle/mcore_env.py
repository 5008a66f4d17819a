"""megatron-core in its own virtual environment (see venvs.py), used as an independent oracle.

megatron-core installs the same top-level package `megatron` as this project, so it cannot share
our interpreter: oracle code runs in its venv in a subprocess (`run_mcore_worker`).
"""

from __future__ import annotations

import json
import pathlib

from tests.oracle.venvs import TORCH_VERSION, OracleUnavailable, ensure_venv, run  # noqa: F401
from tests.oracle.venvs import build_seconds as _build_seconds

MCORE_VERSION = "0.16.1"
VENV = "mcore-venv"
WORKER = pathlib.Path(__file__).with_name("mcore_worker.py")
_CHECK = (
    "import megatron.core.datasets.indexed_dataset as m, megatron.core.package_info as p, numpy; "
    "print(p.__version__)"
)


def ensure_mcore_python() -> pathlib.Path:
    """Python of a working megatron-core venv, made on first use.

    Raises:
        OracleUnavailable: the venv cannot be made here.
    """
    # torch stays pinned: pip only adds its small dependencies and megatron-core
    packages = [
        (
            [f"torch=={TORCH_VERSION}", f"megatron-core=={MCORE_VERSION}", "numpy"],
            f"install megatron-core {MCORE_VERSION}",
        )
    ]
    return ensure_venv(
        VENV, packages, _CHECK, lambda out: out.startswith(MCORE_VERSION), timeout=900
    )


def build_seconds() -> float | None:
    """Seconds the cached venv took to build (recorded when it was made)."""
    return _build_seconds(VENV)


def run_mcore_worker(python: pathlib.Path, jobs: list, workdir: pathlib.Path) -> list:
    """Run `mcore_worker.py` on a list of jobs inside the venv; returns its per-job results."""
    job_file = workdir / "mcore_jobs.json"
    out_file = workdir / "mcore_results.json"
    job_file.write_text(json.dumps(jobs))
    r = run([python, "-I", WORKER, job_file, out_file], timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"megatron-core worker failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(out_file.read_text())

"""lm-evaluation-harness in its own virtual environment (see venvs.py), for the `megatron_de`
backend's tests.

The venv holds lm-eval and our runtime dependencies, not our package: tests put the repository on
PYTHONPATH for the API checks, and install it (`pip install -e`) into a throwaway child venv that
reuses this one's packages for the `lm_eval` command-line check.
"""

from __future__ import annotations

import pathlib

from tests.oracle.venvs import TORCH_VERSION, OracleUnavailable, ensure_venv, run  # noqa: F401
from tests.oracle.venvs import build_seconds as _build_seconds

LM_EVAL_VERSION = "0.4.13"
VENV = "lm-eval-venv"
_CHECK = (
    "import lm_eval, lm_eval.api.registry, torch, regex, tokenizers, transformers; "
    "print(lm_eval.__version__)"
)


def ensure_lm_eval_python() -> pathlib.Path:
    """Python of a working lm-eval venv, made on first use.

    Raises:
        OracleUnavailable: the venv cannot be made here.
    """
    packages = [
        (
            [
                f"torch=={TORCH_VERSION}",
                f"lm-eval[hf]=={LM_EVAL_VERSION}",  # [hf]: `--model hf` on exported folders
                "numpy",
                "regex",
                "sentencepiece",
                "tokenizers",
                "pytest",
            ],
            f"install lm-eval {LM_EVAL_VERSION} and our runtime dependencies",
        )
    ]
    return ensure_venv(
        VENV, packages, _CHECK, lambda out: out.startswith(LM_EVAL_VERSION), timeout=1200
    )


def build_seconds() -> float | None:
    """Seconds the cached venv took to build (recorded when it was made)."""
    return _build_seconds(VENV)

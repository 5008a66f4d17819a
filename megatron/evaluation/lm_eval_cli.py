"""`lm_eval` with the `megatron_de` model registered, for checkouts that are not pip-installed:

    python -m megatron.evaluation.lm_eval_cli --model megatron_de --model_args load=CKPT \\
        --tasks lambada_austen --include_path megatron/evaluation/tasks

Takes exactly lm_eval's command-line arguments.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Register `megatron_de`, then run lm_eval's command line on sys.argv."""
    import lm_eval.models  # noqa: F401  (fills the registry first, as lm_eval itself would)
    from lm_eval.__main__ import cli_evaluate

    from .registration import register_megatron_de

    register_megatron_de()
    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())

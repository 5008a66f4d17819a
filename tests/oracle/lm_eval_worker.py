"""Runs the `megatron_de` backend inside the lm-eval venv (see lm_eval_env.py).

    python lm_eval_worker.py JOB.json OUT.json

JOB: {"model_args": {...}, "loglikelihood": [[context, continuation], ...],
"loglikelihood_rolling": [text, ...], "generate_until": [[context, gen_kwargs], ...]};
OUT holds each method's results for its requests, in order.
"""

import json
import sys

from lm_eval.api.instance import Instance

from megatron.evaluation.lm_eval_model import MegatronDELM


def main(job_file, out_file):
    with open(job_file) as f:
        job = json.load(f)
    lm = MegatronDELM(**job["model_args"])
    out = {}
    for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        args = [tuple(a) if isinstance(a, list) else (a,) for a in job.get(kind, [])]
        requests = [Instance(kind, {}, a, i) for i, a in enumerate(args)]
        out[kind] = getattr(lm, kind)(requests) if requests else []
    with open(out_file, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Datasets of the local tasks: JSONL files beside this module, found from its own path.

(`dataset_path: json` with `data_files` would resolve relative paths against the working
directory, so the tasks would only run from one folder.) Regenerate the files with
tools/make_lm_eval_tasks.py.
"""

from __future__ import annotations

import json
import pathlib

import datasets

HERE = pathlib.Path(__file__).resolve().parent


def load_jsonl(data_file: str, **unused) -> datasets.DatasetDict:
    """The records of HERE/data_file as the "test" split (lm_eval passes the task's metadata
    and dataset_kwargs as keywords; only `data_file` is used)."""
    with open(HERE / data_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

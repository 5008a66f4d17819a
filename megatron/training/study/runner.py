"""Running a study: the corpus prepared once, one analysis per seed, restartable runs.

Layout under the study folder:

    data/                     tokenizer and .bin/.idx (when the corpus was given as JSONL)
    seed<S>/index_cache/      the training index every run of seed S shares
    seed<S>/analysis/         the vocabulary-rarity analysis of that index (CL runs)
    runs/<variant>_<P>pct_seed<S>/
        command.json          the run's command line (a changed command is refused)
        ds_config.json        curriculum / random-LTD JSON (CL and random-LTD runs)
        train.log             the training output (appended by every attempt)
        metrics.jsonl         the scalars (--log-jsonl)
        checkpoints/          --save / --load: an interrupted run resumes from here
        status.json           written when the run finished ({"state": "done", ...})

A finished run is not redone; an unfinished one resumes from its last checkpoint (its metrics
file keeps the lines of every attempt, readers keep the last value per step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from megatron.core.files import atomic_write_json

from .grid import DataPaths, RunSpec, StudyConfig, data_args, ds_config_argv, grid, train_argv

logger = logging.getLogger(__name__)

REPO = pathlib.Path(__file__).resolve().parents[3]
"""The repository root (pretrain_*.py and tools/ live there)."""


class StudyError(RuntimeError):
    """A study step that failed; the message names the run or step, its log and the fix."""


RERUN_HINT = (
    "Fix the cause and run the study again: finished runs are kept and this one resumes from "
    "its last checkpoint"
)


@dataclasses.dataclass
class Study:
    """A study folder and how to run its steps.

    Args:
        cfg: what to run.
        folder: the study folder (see the module docstring).
        python: the interpreter for the steps (default: this one).
        dry_run: log the commands instead of running them.
        in_process: train single-process runs inside this process (no interpreter start-up
            per run; a small study's runs take seconds); the analysis and the data preparation
            still run as their own processes.
    """

    cfg: StudyConfig
    folder: pathlib.Path
    python: str = sys.executable
    dry_run: bool = False
    in_process: bool = False

    # ---- commands --------------------------------------------------------------------------
    def _launch(self, script: str) -> List[str]:
        """How a training or analysis script starts: plain python, or torchrun."""
        cfg = self.cfg
        if cfg.nproc <= 1 and not cfg.torchrun_args:
            return [self.python, str(REPO / script)]
        extra = cfg.torchrun_args.split()
        rdzv = [] if "--nnodes" in extra else ["--standalone"]
        return [self.python, "-m", "torch.distributed.run", *rdzv,
                "--nproc-per-node", str(max(cfg.nproc, 1)), *extra, str(REPO / script)]  # fmt: skip

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        per = max(1, (os.cpu_count() or 1) // max(self.cfg.nproc, 1))
        env.setdefault("OMP_NUM_THREADS", str(per))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def _call(self, argv: Sequence[str], log: pathlib.Path, what: str) -> None:
        """Run one step, its output appended to `log`; a failure raises naming the log."""
        if self.dry_run:
            logger.info("[dry run] %s", " ".join(argv))
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
            out.flush()
            res = subprocess.run(
                list(argv), stdout=out, stderr=subprocess.STDOUT, env=self._env(), cwd=REPO
            )
        if res.returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
            raise StudyError(
                f"{what} failed (exit {res.returncode}); its output is in {log}, last lines:\n"
                f"{tail}\n{RERUN_HINT}"
            )

    # ---- data ------------------------------------------------------------------------------
    def prepare_data(
        self, corpus: str, tokenizer_args: Sequence[str], vocab_size: int
    ) -> DataPaths:
        """The dataset prefix and tokenizer flags of `corpus`: a .bin/.idx prefix (then
        `tokenizer_args` are required) or a JSONL file, which is tokenized into data/ (with a
        tokenizer trained on it when no `tokenizer_args` are given)."""
        bert = self.cfg.preset.model_type == "bert"
        if not corpus.endswith((".jsonl", ".json")):
            if not pathlib.Path(corpus + ".idx").exists() and not self.dry_run:
                raise StudyError(
                    f"--data {corpus}: neither a JSONL file nor the prefix of {corpus}.bin/.idx"
                )
            if not tokenizer_args:
                raise StudyError(
                    f"--data {corpus} is a prepared dataset: give its tokenizer "
                    "(--tokenizer-type and --vocab-file, and --merge-file for GPT-2 BPE)"
                )
            return DataPaths(corpus, tuple(tokenizer_args))
        data = self.folder / "data"
        log = data / "prepare.log"
        if not tokenizer_args:
            tok = data / "tokenizer"
            if not (tok / ("vocab.txt" if bert else "vocab.json")).exists():
                self._call(
                    [self.python, str(REPO / "tools/train_tokenizer.py"), "--input", corpus,
                     "--type", "wordpiece" if bert else "bpe", "--vocab-size", str(vocab_size),
                     "--output-dir", str(tok)],
                    log, "training the tokenizer",
                )  # fmt: skip
            if bert:
                tokenizer_args = ["--tokenizer-type", "BertWordPieceLowerCase",
                                  "--vocab-file", str(tok / "vocab.txt")]  # fmt: skip
            else:
                tokenizer_args = ["--tokenizer-type", "GPT2BPETokenizer",
                                  "--vocab-file", str(tok / "vocab.json"),
                                  "--merge-file", str(tok / "merges.txt")]  # fmt: skip
        prefix = data / "corpus"
        out = f"{prefix}_text_{'sentence' if bert else 'document'}"
        if not pathlib.Path(out + ".idx").exists():
            layout = ["--split-sentences"] if bert else ["--append-eod"]
            self._call(
                [self.python, str(REPO / "tools/preprocess_data.py"), "--input", corpus,
                 "--output-prefix", str(prefix), *tokenizer_args, *layout, "--workers", "1"],
                log, "preprocessing the corpus",
            )  # fmt: skip
        return DataPaths(out, tuple(tokenizer_args))

    # ---- analysis and runs -----------------------------------------------------------------
    def seed_dir(self, seed: int) -> pathlib.Path:
        return self.folder / f"seed{seed}"

    def run_dir(self, spec: RunSpec) -> pathlib.Path:
        return self.folder / "runs" / spec.name

    def shared_data_args(self, data: DataPaths, seed: int) -> List[str]:
        return data_args(self.cfg, data, seed, str(self.seed_dir(seed) / "index_cache"))

    def analyze(self, data: DataPaths, seed: int) -> pathlib.Path:
        """The vocabulary-rarity analysis of seed `seed`'s training index (once; the analysis
        tool skips finished shards)."""
        out = self.seed_dir(seed) / "analysis"
        if (out / "vocab_rarity" / "vocab_rarity_index_to_sample_percentile_merged.idx").exists():
            return out
        p = self.cfg.preset
        argv = self._launch("tools/analyze_data.py") + [
            "--metric", "vocab_rarity", "--save", str(out),
            "--dataset-type", p.model_type.upper(),
            "--global-batch-size", str(p.global_batch_size),
            *self.shared_data_args(data, seed),
        ]  # fmt: skip
        self._call(argv, self.seed_dir(seed) / "analysis.log", f"the analysis of seed {seed}")
        return out

    def run(self, spec: RunSpec, data: DataPaths) -> str:
        """Train one run (or resume it); returns "done", "skipped" (finished before) or
        "dry-run"."""
        folder = self.run_dir(spec)
        status = folder / "status.json"
        shared = self.shared_data_args(data, spec.seed)
        ds_config = None
        if spec.uses_cl or spec.uses_ltd:
            ds_config = str(folder / "ds_config.json")
        script = "pretrain_bert.py" if self.cfg.preset.model_type == "bert" else "pretrain_gpt.py"
        argv = self._launch(script) + train_argv(self.cfg, spec, shared, str(folder), ds_config)
        self._check_command(folder, argv)
        if status.exists() and json.loads(status.read_text()).get("state") == "done":
            return "skipped"
        if self.dry_run:
            logger.info("[dry run] %s", " ".join(argv))
            return "dry-run"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(str(folder / "command.json"), argv)
        if ds_config is not None:
            analysis = str(self.seed_dir(spec.seed) / "analysis")
            self._call(
                [self.python, str(REPO / "tools/data_efficiency_config.py"),
                 *ds_config_argv(self.cfg, spec, analysis, ds_config)],
                folder / "train.log", f"writing {ds_config}",
            )  # fmt: skip
        self._check_index(spec, argv)
        start = time.time()
        if self.in_process and self.cfg.nproc <= 1 and not self.cfg.torchrun_args:
            self._train_in_process(script, argv[2:], folder / "train.log", spec.name)
        else:
            self._call(argv, folder / "train.log", f"run {spec.name}")
        record = {"state": "done", "process_wall_s": round(time.time() - start, 3)}
        atomic_write_json(str(status), record)
        return "done"

    def _train_in_process(self, script: str, flags: List[str], log: pathlib.Path, name: str):
        """`pretrain` of the script's module with `flags`, its output appended to `log`."""
        import contextlib
        import importlib

        from megatron.training.training import pretrain

        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        module = importlib.import_module(script[: -len(".py")])
        model_type = self.cfg.preset.model_type
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            with open(log, "a", encoding="utf-8") as out, contextlib.redirect_stdout(out):
                out.write(f"\n$ {script} {' '.join(flags)}\n")
                try:
                    pretrain(
                        module.datasets_provider,
                        module.model_provider,
                        module.forward_step,
                        argv=flags,
                        model_type=model_type,
                    )
                except (Exception, SystemExit) as exc:
                    logging.getLogger(__name__).exception("training failed: %s", exc)
                    raise StudyError(
                        f"run {name} failed ({type(exc).__name__}: {exc}); its output is in "
                        f"{log}. {RERUN_HINT}"
                    ) from exc
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)

    def _check_command(self, folder: pathlib.Path, argv: List[str]) -> None:
        """Refuse to resume or skip a run folder that was started with another command."""
        path = folder / "command.json"
        if not path.exists():
            return
        before = json.loads(path.read_text())
        if before != argv:
            diff = next(
                (f"{a!r} was {b!r}" for a, b in zip(argv, before) if a != b),
                f"{len(argv)} arguments, were {len(before)}",
            )
            raise StudyError(
                f"{folder} was started with another command ({diff}): the study's options "
                "changed since. Use another --output folder, or delete that run folder to "
                "train it again with the new options"
            )

    def _check_index(self, spec: RunSpec, argv: List[str]) -> None:
        """The shared index must hold every sample the run reads before its token budget ends
        (`--train-samples` is the index size; the run stops on `--train-tokens`)."""
        from megatron.training.arguments import parse_args
        from megatron.training.budget import StepAccounting, train_num_samples

        flags = argv[argv.index(next(a for a in argv if a.endswith(".py"))) + 1 :]
        i = flags.index("--train-samples")
        flags = flags[:i] + flags[i + 2 :]
        model_type = self.cfg.preset.model_type
        run = parse_args(flags, model_type=model_type)
        need = train_num_samples(run, StepAccounting.from_run(run, model_type))
        if need > self.cfg.index_samples:
            raise StudyError(
                f"run {spec.name} reads {need} training samples before its token budget ends, "
                f"but the shared index holds {self.cfg.index_samples}: raise --index-factor "
                f"to at least {need / (self.cfg.index_samples / self.cfg.index_factor):.2f}"
            )

    def run_all(self, data: DataPaths, only: Optional[Sequence[str]] = None) -> Dict[str, str]:
        """Every run of the grid (or the ones named in `only`), the analysis first where a CL
        run needs it; returns run name -> outcome."""
        specs = [s for s in grid(self.cfg) if not only or s.name in only]
        if only and len(specs) != len(set(only)):
            names = {s.name for s in grid(self.cfg)}
            raise StudyError(f"--only {sorted(set(only) - names)}: not in the grid {sorted(names)}")
        outcomes = {}
        for seed in sorted({s.seed for s in specs if s.uses_cl}):
            self.analyze(data, seed)
        for n, spec in enumerate(specs, 1):
            logger.info("run %d/%d: %s", n, len(specs), spec.name)
            outcomes[spec.name] = self.run(spec, data)
            logger.info("run %s: %s", spec.name, outcomes[spec.name])
        return outcomes

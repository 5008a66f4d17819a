#!/usr/bin/env python
"""Curriculum-learning data analysis: score every training sample with difficulty metrics and
write the index files DeepSpeed's curriculum sampler (and ours) read.

Single process:

    python tools/analyze_data.py --dataset-type GPT --data-path data/corpus_text_document \\
        --split 969,30,1 --seq-length 2048 --seed 1234 --train-samples 150000000 \\
        --metric vocab_rarity seqlen --save analysis/

torchrun (gloo): each rank is one worker, rank 0 merges after a barrier:

    torchrun --nproc-per-node 16 tools/analyze_data.py <same flags>

Several machines without torchrun: run worker w of K on each (`--worker-id w --num-workers K`,
map only), then once `--reduce-only --num-workers K`. A failed worker is re-run alone with the same
flags and its `--worker-id`; finished shards are kept (re-running skips them unless --overwrite).

The samples are those training reads: the dataset is built exactly as training builds it
(same --data-path / --split / --seq-length / --seed / sample count / cache), and sample i is the
item `dataset[i]` of the chosen split (`--split-name`, default train). BERT needs the tokenizer
flags (special ids) and the same --short-seq-prob / --bert-no-binary-head as training.

Metrics (`--metric`, several allowed): seqlen, vocab_rarity, seqlen_vocab_rarity,
total_vocab_freq, or user metrics `name=package.module:function[:single|accumulate]` (see
megatron/core/curriculum/metrics.py for the function contract; floats allowed). Rarity
metrics use the token-count files preprocessing wrote beside the data (recomputed from the .bin
when missing), or `--token-counts FILE` (a .npy, or a previous `total_vocab_freq_metric_value`
output for DeepSpeed's "frequencies of the analysed samples").

Outputs, per metric m, in DeepSpeed DataAnalyzer's layout (MMIDIDX, dtype codes 1-5):
`<save>/m/m_sample_to_metric`, `m_index_to_sample`, `m_index_to_metric`,
`m_index_to_sample_percentile_merged` (`m_metric_value` for accumulate metrics), plus
`m_analysis.json` (written last) and float64 `.npy` side files for float metrics; per-worker map
outputs stay in `<save>/m/map/`. Progress lines (samples/s, ETA) go to stderr.
"""

import argparse
import datetime
import logging
import os
import sys
import time

sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron.core.curriculum.analysis import (
    build_metrics,
    finished_workers,
    run_map,
    run_reduce,
    shard_range,
)
from megatron.core.curriculum.metrics import CurriculumMetricsConfig, parse_metric_spec
from megatron.core.curriculum.scoring import make_sample_source  # noqa: E402
from megatron.core.datasets.builder import (  # noqa: E402
    build_train_valid_test_datasets,
    parse_data_path,
)
from megatron.core.datasets.utils import Split  # noqa: E402

logger = logging.getLogger("analyze_data")


def _add_analysis_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis")
    g.add_argument(
        "--metric",
        "--analyzing-metric",
        nargs="+",
        required=True,
        dest="metric",
        help="metric specs: built-in names or name=module:function[:type]",
    )
    g.add_argument("--save", required=True, help="output folder (one sub-folder per metric)")
    g.add_argument(
        "--worker-id",
        "--analyzing-worker-id",
        type=int,
        dest="worker_id",
        help="this worker's id (default: torchrun's RANK, else 0)",
    )
    g.add_argument(
        "--num-workers",
        "--analyzing-num-workers",
        type=int,
        dest="num_workers",
        help="number of workers (default: torchrun's WORLD_SIZE, else 1)",
    )
    g.add_argument("--reduce-only", action="store_true", help="only merge finished map outputs")
    g.add_argument("--map-only", action="store_true", help="only score this worker's shard")
    g.add_argument("--overwrite", action="store_true", help="recompute finished shards")
    g.add_argument("--batch-size", type=int, default=1024, help="samples per user-metric call")
    g.add_argument("--token-counts", help="token frequencies (.npy or MMIDIDX prefix) for rarity")
    g.add_argument(
        "--log-interval", type=float, default=10.0, help="seconds between progress lines"
    )
    g.add_argument(
        "--analyzing-task",
        choices=["map", "reduce"],
        help="DeepSpeed's spelling: map is --map-only, reduce is --reduce-only",
    )
    for flag, kwargs in (
        ("--analyzing-num-threads", dict(type=int)),
        ("--analyzing-num-threads-reduce", dict(type=int)),
        ("--analyzing-specific-threads", dict(type=int, nargs="+")),
    ):
        g.add_argument(flag, help=_IGNORED_ANALYSIS[flag], **kwargs)
    g.add_argument(
        "--distributed-timeout-minutes",
        type=float,
        default=1440.0,
        help="gloo barrier timeout: the longest a worker may wait for the others",
    )


_IGNORED_ANALYSIS = {
    "--analyzing-num-threads": "no-op: a worker scores its shard in one process; run more "
    "workers (torchrun --nproc-per-node N, or --worker-id / --num-workers) to go faster",
    "--analyzing-num-threads-reduce": "no-op: the reduce step merges the workers' outputs in one "
    "process",
    "--analyzing-specific-threads": "no-op: re-running a worker skips its finished shards (re-run "
    "a failed one with its --worker-id)",
}
_RECIPE_FLAGS = {  # flags of the DeepSpeed analysis recipe that only training uses
    "--micro-batch-size": dict(type=int),
    "--max-position-embeddings": dict(type=int),
    "--num-layers": dict(type=int),
    "--hidden-size": dict(type=int),
    "--num-attention-heads": dict(type=int),
    "--distributed-backend": dict(choices=["gloo", "nccl"]),
    "--return-data-index": dict(action="store_true", default=None),
    "--save-interval": dict(type=int),
    "--data-impl": dict(choices=["mmap", "infer"]),
}


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accepted from the DeepSpeed analysis recipe (no-ops here)")
    for flag, kwargs in _RECIPE_FLAGS.items():
        dest = "recipe_" + flag[2:].replace("-", "_")
        g.add_argument(flag, dest=dest, help="accepted and ignored (a training flag)", **kwargs)


def _warn_ignored(args: argparse.Namespace) -> None:
    """One warning line per accepted no-op flag given (on the first torchrun rank only)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for flag, why in _IGNORED_ANALYSIS.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            logger.warning("%s: %s", flag, why)
    given = [f for f in _RECIPE_FLAGS if getattr(args, "recipe_" + f[2:].replace("-", "_"))]
    if given:
        logger.warning(
            "%s: training flags, ignored by the analysis (it reads only the data, split, "
            "sequence length, seed, sample count and tokenizer flags)",
            " ".join(given),
        )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (as in training)")
    g.add_argument(
        "--dataset-type",
        "--analyzing-data-type",
        choices=["GPT", "BERT"],
        dest="dataset_type",
        help="GPT (document) or BERT (sentence-split) data",
    )
    g.add_argument("--data-path", nargs="+", help="prefixes (optionally weighted), as --data-path")
    g.add_argument("--split", default="969,30,1", help="train,valid,test weights (969,30,1)")
    g.add_argument("--split-name", default="train", choices=[s.name for s in Split])
    g.add_argument("--seq-length", type=int, help="tokens per sample, as in training")
    g.add_argument("--seed", type=int, default=1234, help="data seed, as in training (1234)")
    g.add_argument(
        "--train-samples",
        "--num-samples",
        type=int,
        dest="num_samples",
        help="samples the split is built for (default: one epoch)",
    )
    g.add_argument("--train-iters", type=int, help="with --global-batch-size: samples = product")
    g.add_argument("--global-batch-size", type=int)
    g.add_argument("--train-data-exact-num-epochs", type=int)
    g.add_argument("--data-cache-path", help="index cache folder, as in training")
    g.add_argument(
        "--legacy-split-and-blend",
        action="store_true",
        help="the legacy --split rounding and blend order, as in training",
    )
    g = p.add_argument_group("tokenizer (vocabulary size; BERT special ids)")
    g.add_argument("--tokenizer-type")
    g.add_argument("--vocab-file")
    g.add_argument("--merge-file")
    g.add_argument("--tokenizer-model")
    g.add_argument("--vocab-size", type=int, help="number of token ids (overrides the tokenizer)")
    g = p.add_argument_group("BERT (as in training)")
    g.add_argument("--short-seq-prob", type=float, default=0.1)
    g.add_argument("--mask-prob", type=float, default=0.15)
    g.add_argument("--bert-no-binary-head", action="store_true")
    g.add_argument("--bert-binary-head-type", default="sop", choices=["sop", "nsp"])


def get_args(argv=None) -> argparse.Namespace:
    """Parse the flags (Megatron's data flags plus the analysis ones; DeepSpeed aliases)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_analysis_args(p)
    _add_data_args(p)
    _add_recipe_args(p)
    args = p.parse_args(argv)
    if args.analyzing_task == "map":
        args.map_only = True
    elif args.analyzing_task == "reduce":
        args.reduce_only = True
    if args.map_only and args.reduce_only:
        p.error("--map-only (--analyzing-task map) and --reduce-only exclude each other")
    if not args.reduce_only:
        missing = [
            f
            for f, v in (
                ("--dataset-type", args.dataset_type),
                ("--data-path", args.data_path),
                ("--seq-length", args.seq_length),
            )
            if v is None
        ]
        if missing:
            p.error(f"{', '.join(missing)} required (all but --reduce-only read the dataset)")
    if args.train_iters is not None:
        if args.global_batch_size is None or args.num_samples is not None:
            p.error("--train-iters needs --global-batch-size and excludes --train-samples")
        args.num_samples = args.train_iters * args.global_batch_size
    return args


def _tokenizer(args):
    if not args.tokenizer_type:
        return None
    from megatron.tokenizer import TokenizerConfig, build_tokenizer

    return build_tokenizer(
        TokenizerConfig(
            args.tokenizer_type,
            vocab_file=args.vocab_file,
            merge_file=args.merge_file,
            tokenizer_model=args.tokenizer_model,
            vocab_size=args.vocab_size,
        )
    )


def build_dataset(args, is_built_on_rank=None, synchronize=None):
    """The dataset of --split-name, built as training builds it."""
    tokenizer = _tokenizer(args)
    common = dict(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=parse_data_path(args.data_path),
        split=args.split,
        path_to_cache=args.data_cache_path,
        train_data_exact_num_epochs=args.train_data_exact_num_epochs,
        legacy_split_and_blend=args.legacy_split_and_blend,
    )
    if args.dataset_type == "GPT":
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        cls, config = GPTDataset, GPTDatasetConfig(**common, create_attention_mask=False)
    else:
        from megatron.core.datasets.bert_dataset import BertDataset, BertDatasetConfig

        if tokenizer is None:
            raise ValueError("BERT analysis needs the tokenizer flags (--tokenizer-type ...)")
        cls, config = (
            BertDataset,
            BertDatasetConfig(
                **common,
                tokenizer=tokenizer,
                masking_probability=args.mask_prob,
                short_sequence_probability=args.short_seq_prob,
                classification_head=not args.bert_no_binary_head,
                binary_head_type=args.bert_binary_head_type,
            ),
        )
    counts = [0, 0, 0]
    counts[Split[args.split_name].value] = args.num_samples
    datasets = build_train_valid_test_datasets(cls, counts, config, is_built_on_rank, synchronize)
    dataset = datasets[Split[args.split_name].value]
    if dataset is None:
        raise ValueError(f"the {args.split_name} split is empty; check --split and --data-path")
    # The tokenizer's size (NullTokenizer: --vocab-size + 1 for its end-of-document id), as in
    # training; --vocab-size alone only when no tokenizer is given.
    vocab_size = tokenizer.vocab_size if tokenizer is not None else args.vocab_size
    return dataset, vocab_size


class Progress:
    """Prints `[worker w/K] metrics: done/total samples, rate, ETA` every `interval` seconds."""

    def __init__(self, label: str, interval: float):
        self.label, self.interval, self.last = label, interval, -1e9

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        if done < total and elapsed - self.last < self.interval:
            return
        self.last = elapsed
        rate = done / max(elapsed, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        print(
            f"{self.label}: {done}/{total} samples ({100.0 * done / max(total, 1):.1f}%), "
            f"{rate:.0f} samples/s, ETA {eta:.1f} s",
            file=sys.stderr,
            flush=True,
        )


def _distributed(args):
    """(worker_id, num_workers, barrier or None) from the flags and torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "0"))
    if world >= 1 and "RANK" in os.environ and not args.reduce_only:
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        for flag, given, env in (
            ("--worker-id", args.worker_id, rank),
            ("--num-workers", args.num_workers, world),
        ):
            if given is not None and given != env:
                raise ValueError(f"{flag} {given} disagrees with torchrun's value {env}")
        timeout = datetime.timedelta(minutes=args.distributed_timeout_minutes)
        dist.init_process_group("gloo", timeout=timeout)
        return rank, world, dist.barrier
    return args.worker_id or 0, args.num_workers or 1, None


def _reduce(args, names, num_workers) -> None:
    if num_workers is None:
        found = {w for name in names for w in finished_workers(args.save, name)}
        if len(found) != 1:
            raise ValueError(
                f"cannot tell the number of workers from {args.save} (map outputs for "
                f"{sorted(found) or 'none'}); pass --num-workers"
            )
        num_workers = found.pop()
    for name in names:
        start = time.perf_counter()
        run_reduce(args.save, name, num_workers)
        print(
            f"reduced {name} from {num_workers} worker(s) into {os.path.join(args.save, name)} "
            f"in {time.perf_counter() - start:.2f} s",
            file=sys.stderr,
            flush=True,
        )


def _save_train_index(args, dataset) -> None:
    """With --train-data-exact-num-epochs, the analysed train index next to the data under
    Megatron-DeepSpeed's names (its training recipes force them with --train-doc-idx-path ...)."""
    from megatron.core.datasets.forced_index import save_train_index

    epochs = args.train_data_exact_num_epochs
    if args.split_name != "train" or not epochs or not hasattr(dataset, "dataset_path"):
        return
    for what, path in save_train_index(dataset, epochs).items():
        print(f"train index {what}: {path}", file=sys.stderr)


def _map(args, worker_id, num_workers, barrier) -> None:
    is_built_on_rank = (lambda: worker_id == 0) if barrier is not None else None
    dataset, vocab_size = build_dataset(args, is_built_on_rank, barrier)
    if worker_id == 0:
        _save_train_index(args, dataset)
    source = make_sample_source(dataset)
    config = CurriculumMetricsConfig(args.metric, vocab_size, args.token_counts, args.batch_size)
    metrics = build_metrics(source, config)
    begin, end = shard_range(source.num_samples, worker_id, num_workers)
    label = f"[worker {worker_id}/{num_workers}] {','.join(m.name for m in metrics)}"
    print(f"{label}: samples [{begin}, {end}) of {source.num_samples}", file=sys.stderr)
    results = run_map(
        source,
        metrics,
        args.save,
        worker_id,
        num_workers,
        args.batch_size,
        args.overwrite,
        Progress(label, args.log_interval),
    )
    done = [r for r in results if not r.skipped]
    skipped = [r.name for r in results if r.skipped]
    if done:
        seconds = done[0].seconds  # the metrics of one shard are scored together
        print(
            f"{label}: {end - begin} samples in {seconds:.2f} s "
            f"({(end - begin) / max(seconds, 1e-9):.0f} samples/s)",
            file=sys.stderr,
        )
    if skipped:
        print(
            f"{label}: {skipped} already done for this shard, skipped (--overwrite redoes them)",
            file=sys.stderr,
        )


def main(argv=None) -> int:
    args = get_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _warn_ignored(args)
    try:
        names = [parse_metric_spec(s).name for s in args.metric]
        if args.reduce_only:
            _reduce(args, names, args.num_workers)
            return 0
        worker_id, num_workers, barrier = _distributed(args)
        _map(args, worker_id, num_workers, barrier)
        if args.map_only:
            return 0
        if barrier is None:
            if num_workers > 1:
                print(
                    f"worker {worker_id} of {num_workers} done; when all are, run with "
                    "--reduce-only",
                    file=sys.stderr,
                )
                return 0
            _reduce(args, names, num_workers)
            return 0
        import torch.distributed as dist

        barrier()
        try:
            if worker_id == 0:
                _reduce(args, names, num_workers)
        finally:
            barrier()
            dist.destroy_process_group()
        return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Curriculum sampler: DeepSpeed's cluster semantics, pure-function draws, exact resume."""

import numpy as np
import pytest
import torch

from megatron.core.curriculum.config import (
    CurriculumLearningConfig,
    CurriculumMetricConfig,
    DataSamplingConfig,
    ScheduleConfig,
)
from megatron.core.curriculum.metric_data import SortedMetric, resolve_metrics
from megatron.core.curriculum.sampler import CurriculumSampler
from megatron.core.datasets.indexed_dataset import write_array_dataset
from megatron.core.deepspeed_config import DataEfficiencyConfig
from megatron.training.microbatches import MicroBatchCalculator


def discrete(difficulties, max_steps, **kw):
    """A metric whose difficulty is difficulties[i] up to step max_steps[i]."""
    kw.setdefault("difficulty_type", "value")
    return CurriculumMetricConfig(
        min_difficulty=min(difficulties),
        max_difficulty=max(difficulties),
        schedule_type="fixed_discrete",
        schedule_config=ScheduleConfig(difficulty=list(difficulties), max_step=list(max_steps)),
        **kw,
    )


def make_config(metrics=None, seed=7, num_epochs=1000):
    cl = CurriculumLearningConfig(enabled=metrics is not None, curriculum_metrics=metrics or {})
    return DataEfficiencyConfig(
        enabled=True,
        seed=seed,
        data_sampling=DataSamplingConfig(
            enabled=True, num_epochs=num_epochs, curriculum_learning=cl
        ),
    )


def sampler(config, n, values=None, mbs=2, rank=0, dp=1, gbs=8, **kw):
    return CurriculumSampler(config, n, mbs, rank, dp, gbs, metric_values=values, **kw)


def draw(s, steps):
    return [s.next_global_batch() for _ in range(steps)]


N = 60
VALUES = np.arange(N) % 10  # ten samples of each value 0..9, interleaved


def test_value_clusters_and_batches_follow_the_schedule():
    config = make_config({"m": discrete([2, 5, 9], [3, 6])})
    s = sampler(config, N, {"m": VALUES})
    batches = draw(s, 9)
    assert [len(c) for c in s.clusters] == [18, 18, 24]
    assert set(s.clusters[0]) == set(np.flatnonzero(VALUES <= 2))
    assert set(s.clusters[1]) == set(np.flatnonzero((VALUES > 2) & (VALUES <= 5)))
    assert set(s.clusters[2]) == set(np.flatnonzero(VALUES > 5))
    for step, batch in enumerate(batches, start=1):
        limit = 2 if step <= 3 else 5 if step <= 6 else 9
        assert batch.shape == (8,) and VALUES[batch].max() <= limit
    assert VALUES[np.concatenate(batches[6:])].max() > 5  # the hardest cluster is drawn from
    assert s.difficulties_at(4) == {"m": 5}


def test_percentile_clusters_are_positions_in_ascending_order():
    rs = np.random.RandomState(0)
    values = rs.randint(0, 30, size=200)
    config = make_config({"m": discrete([10, 35, 100], [2, 4], difficulty_type="percentile")})
    s = sampler(config, 200, {"m": values})
    draw(s, 5)
    order = np.argsort(values, kind="stable")
    assert [list(c) for c in s.clusters] == [
        list(order[0:20]),
        list(order[20:70]),
        list(order[70:200]),
    ]


def brute_force_clusters(change_points, allowed):
    """Clusters by definition: allowed(step) minus all earlier clusters, empty ones skipped."""
    seen, clusters = set(), []
    for step in change_points:
        new = sorted(set(np.flatnonzero(allowed(step))) - seen)
        seen |= set(new)
        if new:
            clusters.append(new)
    return clusters


def test_two_metrics_intersect_and_subtract_earlier_clusters():
    rs = np.random.RandomState(1)
    a, b = rs.randint(0, 10, size=300), rs.randint(0, 1000, size=300)
    ma = discrete([3, 6, 9], [2, 5])
    mb = discrete([20, 60, 100], [3, 4], difficulty_type="percentile")
    s = sampler(make_config({"a": ma, "b": mb}), 300, {"a": a, "b": b})
    draw(s, 6)
    rank_b = np.empty(300, int)
    rank_b[np.argsort(b, kind="stable")] = np.arange(300)

    def allowed(step):
        da, db = s.difficulties_at(step)["a"], s.difficulties_at(step)["b"]
        return (a <= da) & (rank_b < 300 * db // 100)

    expected = brute_force_clusters([1, 3, 4, 5, 6], allowed)
    assert [sorted(c.tolist()) for c in s.clusters] == expected


def test_schedules_going_down_with_two_metrics():
    rs = np.random.RandomState(2)
    a, b = rs.randint(0, 10, size=120), rs.randint(0, 10, size=120)
    ma = CurriculumMetricConfig(
        0, 9, "custom", custom_callable=lambda t: [0, 5, 9, 2, 9][min(t, 5) - 1]
    )
    mb = discrete([9, 3, 9], [2, 4])
    s = sampler(make_config({"a": ma, "b": mb}), 120, {"a": a, "b": b})
    draw(s, 6)

    def allowed(step):
        d = s.difficulties_at(step)
        return (a <= d["a"]) & (b <= d["b"])

    assert [sorted(c.tolist()) for c in s.clusters] == brute_force_clusters(range(1, 7), allowed)


def test_single_cluster_metrics_do_not_filter():
    trunc = CurriculumMetricConfig(
        8, 64, "fixed_linear", ScheduleConfig(20, 8), clustering_type="single_cluster"
    )
    only = sampler(make_config({"seqlen_truncate": trunc}), N)  # no data needed
    draw(only, 25)
    assert len(only.clusters) == 1 and sorted(only.clusters[0]) == list(range(N))
    with_metric = sampler(
        make_config({"m": discrete([2, 9], [10]), "seqlen_truncate": trunc}), N, {"m": VALUES}
    )
    draw(with_metric, 25)
    assert [len(c) for c in with_metric.clusters] == [18, 42]  # seqlen changes add nothing


def test_each_epoch_of_a_cluster_draws_every_sample_once():
    s = sampler(make_config(), 64, gbs=16)  # no curriculum: one cluster of everything
    batches = draw(s, 8)
    first, second = np.concatenate(batches[:4]), np.concatenate(batches[4:])
    assert sorted(first) == list(range(64)) == sorted(second)
    assert not np.array_equal(first, second)  # reshuffled
    assert s.state_dict()["cluster_epochs"] == [2] and s.state_dict()["cluster_cursors"] == [0]


def test_draws_are_proportional_to_cluster_size():
    config = make_config({"m": discrete([0, 9], [1])})
    values = np.r_[np.zeros(100, int), np.full(900, 9)]  # clusters of 100 and 900
    s = sampler(config, 1000, {"m": values}, gbs=100)
    draw(s, 1)
    share = np.mean([np.mean(values[b] == 0) for b in draw(s, 200)])
    assert 0.08 < share < 0.12


def test_deterministic_and_seeded():
    config = make_config({"m": discrete([2, 5, 9], [3, 6])})
    one, two = (draw(sampler(config, N, {"m": VALUES}), 12) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(one, two))
    other = draw(
        sampler(make_config({"m": discrete([2, 5, 9], [3, 6])}, seed=8), N, {"m": VALUES}), 12
    )
    assert not all(np.array_equal(x, y) for x, y in zip(one, other))


def gpt_like_config():
    voc = CurriculumMetricConfig(
        1, 100, "fixed_root", ScheduleConfig(60, 1, 2), difficulty_type="percentile"
    )
    trunc = CurriculumMetricConfig(
        16, 128, "fixed_linear", ScheduleConfig(60, 8), clustering_type="single_cluster"
    )
    return make_config({"voc": voc, "seqlen_truncate": trunc})


RARITY = np.random.RandomState(3).randint(0, 500, size=400)


@pytest.mark.parametrize("k", [0, 1, 7, 33, 64])
def test_exact_resume_at_any_step_and_dp_size(k):
    config = gpt_like_config()
    ref = sampler(config, 400, {"voc": RARITY}, mbs=2, dp=2, gbs=24)
    batches = draw(ref, 80)
    state = ref.state_dict(k)  # the sampler itself is ahead (as with a prefetching loader)
    assert state["step"] == k
    for mbs, dp in ((2, 2), (3, 4), (1, 1)):
        ranks = [
            sampler(config, 400, {"voc": RARITY}, mbs=mbs, rank=r, dp=dp, gbs=24) for r in range(dp)
        ]
        for s in ranks:
            s.load_state_dict(state)
        iters = [s.iter_micro_batches() for s in ranks]
        for expected in batches[k : k + 6]:
            per_rank = [next(it)[1] for it in iters]
            rebuilt = [i for micro in zip(*per_rank) for part in micro for i in part]
            assert rebuilt == expected.tolist()


def test_fast_forward_and_global_batch_at_are_pure_functions_of_the_step():
    config = gpt_like_config()
    ref = sampler(config, 400, {"voc": RARITY}, gbs=24, anchor_interval=10)
    batches = draw(ref, 50)
    jumped = sampler(config, 400, {"voc": RARITY}, gbs=24)
    jumped.fast_forward(37)
    assert np.array_equal(jumped.next_global_batch(), batches[37])
    for step in (1, 9, 10, 23, 50):
        assert np.array_equal(ref.global_batch_at(step), batches[step - 1])
    assert ref.step == 50


def test_batch_size_rampup_and_resume():
    calc = MicroBatchCalculator(32, 2, 2, [8, 8, 96])
    config = gpt_like_config()
    ref = sampler(config, 400, {"voc": RARITY}, mbs=2, dp=2, gbs=calc.global_batch_at)
    batches = draw(ref, 20)
    assert [len(b) for b in batches[:8]] == [8] * 4 + [16] * 2 + [24] * 2
    resumed = sampler(config, 400, {"voc": RARITY}, mbs=2, dp=2, gbs=calc.global_batch_at)
    resumed.load_state_dict(ref.state_dict(5))
    assert resumed.consumed_samples == sum(len(b) for b in batches[:5])
    assert all(np.array_equal(x, y) for x, y in zip(draw(resumed, 15), batches[5:]))


class IndexDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def loader_indices(s, workers, count):
    loader = torch.utils.data.DataLoader(IndexDataset(400), batch_sampler=s, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch.tolist())
        if len(out) == count:
            break
    return out


def test_dataloader_workers_get_the_same_index_lists_and_checkpoint_the_trained_step():
    config = gpt_like_config()

    def make():
        return sampler(config, 400, {"voc": RARITY}, mbs=4, rank=1, dp=2, gbs=16)

    serial = loader_indices(make(), 0, 40)
    prefetching = make()
    assert loader_indices(prefetching, 2, 40) == serial
    assert prefetching.step > 20  # 2 micro-batches per step: the workers ran ahead
    state = prefetching.state_dict(step=10)  # what the training loop consumed
    resumed = make()
    resumed.load_state_dict(state)
    assert loader_indices(resumed, 2, 20) == serial[20:]


def test_state_is_plain_and_checked(tmp_path):
    config = gpt_like_config()
    s = sampler(config, 400, {"voc": RARITY}, gbs=24)
    draw(s, 30)
    state = s.state_dict()
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded == state and set(state) >= {"step", "consumed_samples", "cluster_cursors"}
    other_seed = sampler(
        make_config(gpt_like_config().curriculum_learning.curriculum_metrics, seed=99),
        400,
        {"voc": RARITY},
        gbs=24,
    )
    with pytest.raises(ValueError, match="another seed"):
        other_seed.load_state_dict(state)
    other_seed.load_state_dict(state, strict=False)
    other_data = sampler(config, 400, {"voc": RARITY[::-1].copy()}, gbs=24)
    with pytest.raises(ValueError, match="metric data"):
        other_data.load_state_dict(state)


def test_num_epochs_limits_the_samples():
    s = sampler(make_config(num_epochs=2), 40, gbs=8)
    assert sum(len(b) for _, b in s.iter_global_batches()) == 80


def test_errors():
    config = make_config({"m": discrete([-5, 9], [2])})
    s = sampler(config, N, {"m": VALUES})
    with pytest.raises(ValueError, match="no sample is eligible at curriculum step 1"):
        s.next_global_batch()
    with pytest.raises(ValueError, match="no per-sample values named 'm'"):
        sampler(config, N, {})
    with pytest.raises(ValueError, match="holds sample ids in"):
        sampler(config, 10, {"m": SortedMetric(np.arange(N), np.sort(VALUES))})
    with pytest.raises(ValueError, match="not a positive multiple"):
        sampler(make_config(), N, mbs=3, dp=2, gbs=8).next_global_batch()


def test_index_files_give_the_same_batches_as_arrays(tmp_path):
    """DeepSpeed-layout analysis files: rows of sample ids per distinct value, and the values."""
    values = np.random.RandomState(4).randint(0, 40, size=300)
    distinct = np.unique(values)
    rows = [np.flatnonzero(values == v) for v in distinct]
    prefix = str(tmp_path / "m")
    write_array_dataset(prefix + "_index_to_sample", rows, np.int32)
    write_array_dataset(prefix + "_index_to_metric", [np.array([v]) for v in distinct], np.int64)
    merged = [np.concatenate(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    write_array_dataset(prefix + "_index_to_sample_percentile_merged", merged, np.int32)
    from_files = SortedMetric.from_index_files(
        prefix + "_index_to_sample", prefix + "_index_to_metric"
    )
    from_values = SortedMetric.from_values(values)
    assert np.array_equal(from_files.order, from_values.order)
    assert np.array_equal(from_files.sorted_values, from_values.sorted_values)
    for kind, path in (
        ("value", "_index_to_sample"),
        ("percentile", "_index_to_sample_percentile_merged"),
    ):
        hi = 39 if kind == "value" else 100
        metric = discrete([hi // 4, hi // 2, hi], [3, 6], difficulty_type=kind)
        metric.index_to_sample_path, metric.index_to_metric_path = (
            prefix + path,
            prefix + "_index_to_metric",
        )
        config = make_config({"m": metric})
        from_files = sampler(config, 300)
        a = draw(from_files, 10)  # read from the files
        from_arrays = sampler(config, 300, {"m": values.astype(np.int32)})
        b = draw(from_arrays, 10)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        from_arrays.load_state_dict(from_files.state_dict(4))  # same data: same fingerprint
    config.curriculum_learning.curriculum_metrics[
        "m"
    ].index_to_sample_path = "/nowhere/m_index_to_sample"
    assert "m" in resolve_metrics(config.curriculum_learning, 300, {"m": values})
    metric.index_to_sample_path = (
        "/nowhere/vocab_rarity/vocab_rarity_index_to_sample_percentile_merged"
    )
    assert "m" in resolve_metrics(config.curriculum_learning, 300, {"vocab_rarity": values})


def test_reads_the_analysis_tool_output(tmp_path):
    output = pytest.importorskip("megatron.core.curriculum.analysis_output")
    values = np.random.RandomState(5).randint(0, 1000, size=500)
    output.write_metric_index(str(tmp_path), "m", output.MetricIndex.from_values(values), {})
    prefix = output.metric_prefix(str(tmp_path), "m", "")
    data = SortedMetric.from_index_files(prefix + "index_to_sample", prefix + "index_to_metric")
    ref = SortedMetric.from_values(values)
    assert np.array_equal(data.order, ref.order) and np.array_equal(
        data.sorted_values, ref.sorted_values
    )
    merged = SortedMetric.from_index_files(prefix + "index_to_sample_percentile_merged")
    assert np.array_equal(merged.order, ref.order)

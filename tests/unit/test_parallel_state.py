"""RankLayout arithmetic for world sizes up to 8192 ranks, without starting any process, and the
stage queries of ParallelState built from it."""

from __future__ import annotations

import pytest

from megatron.core.parallel_state import ParallelState, RankLayout

LAYOUTS = [
    (8192, 8, 16),  # 1024 nodes x 8 GPUs
    (8192, 4, 8),
    (8192, 8, 1),
    (8192, 1, 64),
    (8192, 1, 1),
    (4096, 2, 2048),
    (96, 4, 3),
    (12, 2, 3),
    (6, 3, 2),
    (1, 1, 1),
]


def _groups(layout: RankLayout):
    tp, pp, dp = (
        layout.tensor_model_parallel_size,
        layout.pipeline_model_parallel_size,
        layout.data_parallel_size,
    )
    return {
        "tp": (layout.tensor_parallel_groups(), tp),
        "dp": (layout.data_parallel_groups(), dp),
        "pp": (layout.pipeline_parallel_groups(), pp),
        "mp": (layout.model_parallel_groups(), tp * pp),
    }


@pytest.mark.parametrize("world,tp,pp", LAYOUTS)
def test_every_rank_in_exactly_one_group_of_each_kind(world, tp, pp):
    layout = RankLayout(world, tp, pp)
    assert layout.data_parallel_size == world // (tp * pp)
    for kind, (groups, size) in _groups(layout).items():
        assert len(groups) == world // size, kind
        assert all(len(g) == size for g in groups), kind
        assert sorted(r for g in groups for r in g) == list(range(world)), kind


@pytest.mark.parametrize("world,tp,pp", LAYOUTS)
def test_ordering_tp_fastest_then_dp_then_pp(world, tp, pp):
    layout = RankLayout(world, tp, pp)
    dp = layout.data_parallel_size
    for rank in range(world):
        c = layout.coords(rank)
        assert rank == c["pp"] * tp * dp + c["dp"] * tp + c["tp"]
        assert layout.rank_of(**c) == rank
    groups = _groups(layout)
    for g in groups["tp"][0]:
        assert g == list(range(g[0], g[0] + tp)) and g[0] % tp == 0  # contiguous blocks
    for axis in ("tp", "dp", "pp"):
        others = [a for a in ("tp", "dp", "pp") if a != axis]
        for g in groups[axis][0]:
            cs = [layout.coords(r) for r in g]
            assert [c[axis] for c in cs] == list(range(len(g))), axis  # ordered along the axis
            assert len({tuple(c[o] for o in others) for c in cs}) == 1, axis  # the rest fixed
    for g in groups["mp"][0]:
        assert len({layout.coords(r)["dp"] for r in g}) == 1  # one full model replica


@pytest.mark.parametrize("world,tp,pp", LAYOUTS)
def test_embedding_groups_are_first_and_last_stage(world, tp, pp):
    layout = RankLayout(world, tp, pp)
    pipelines = layout.pipeline_parallel_groups()
    emb = layout.embedding_groups()
    assert emb == [sorted({g[0], g[-1]}) for g in pipelines]
    assert all(len(g) == (2 if pp > 1 else 1) for g in emb)
    members = [r for g in emb for r in g]
    assert len(members) == len(set(members))  # each end rank in exactly one group
    assert {layout.coords(r)["pp"] for r in members} == {0, pp - 1}
    assert layout.position_embedding_groups() == [[g[0]] for g in pipelines]


def test_golden_16_ranks_tp2_pp4():
    """The layout Megatron documents for 16 GPUs with TP 2 and PP 4 (so DP 2)."""
    layout = RankLayout(16, 2, 4)
    assert layout.tensor_parallel_groups() == [[2 * i, 2 * i + 1] for i in range(8)]
    assert layout.data_parallel_groups() == [
        [0, 2],
        [1, 3],
        [4, 6],
        [5, 7],
        [8, 10],
        [9, 11],
        [12, 14],
        [13, 15],
    ]
    assert layout.pipeline_parallel_groups() == [
        [0, 4, 8, 12],
        [1, 5, 9, 13],
        [2, 6, 10, 14],
        [3, 7, 11, 15],
    ]
    assert layout.embedding_groups() == [[0, 12], [1, 13], [2, 14], [3, 15]]
    assert layout.model_parallel_groups() == [
        [0, 1, 4, 5, 8, 9, 12, 13],
        [2, 3, 6, 7, 10, 11, 14, 15],
    ]


@pytest.mark.parametrize(
    "kwargs,numbers",
    [
        (dict(world_size=10, tensor_model_parallel_size=4), ["10", "4"]),
        (
            dict(world_size=12, tensor_model_parallel_size=2, pipeline_model_parallel_size=4),
            ["12", "2", "4", "8"],
        ),
        (dict(world_size=8192, tensor_model_parallel_size=3), ["8192", "3"]),
        (dict(world_size=0), ["0"]),
        (dict(world_size=8, tensor_model_parallel_size=0), ["TP 0"]),
        (dict(world_size=8, pipeline_model_parallel_size=-2), ["PP -2"]),
        (
            dict(
                world_size=8, tensor_model_parallel_size=2, virtual_pipeline_model_parallel_size=2
            ),
            ["2", "1"],
        ),
        (
            dict(
                world_size=8, pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=0
            ),
            ["0"],
        ),
    ],
)
def test_invalid_sizes_raise_with_the_numbers(kwargs, numbers):
    with pytest.raises(ValueError) as info:
        RankLayout(**kwargs)
    for n in numbers:
        assert n in str(info.value)


def test_coords_out_of_range():
    layout = RankLayout(8, 2, 2)
    for bad in (-1, 8):
        with pytest.raises(ValueError, match=f"rank {bad} outside"):
            layout.coords(bad)


def _state(layout: RankLayout, rank: int) -> ParallelState:
    """A ParallelState with this rank's group members but no process groups (pure queries)."""
    kinds = {
        "tp": layout.tensor_parallel_groups(),
        "dp": layout.data_parallel_groups(),
        "pp": layout.pipeline_parallel_groups(),
        "mp": layout.model_parallel_groups(),
        "embd": layout.embedding_groups(),
    }
    ranks = {k: next((g for g in groups if rank in g), None) for k, groups in kinds.items()}
    # Like ParallelState.initialize: a middle stage belongs to no embedding group.
    return ParallelState(layout, rank, {}, {k: g for k, g in ranks.items() if g is not None})


def test_stage_queries_with_virtual_stages():
    layout = RankLayout(16, 2, 4, virtual_pipeline_model_parallel_size=2)
    first, middle, last = _state(layout, 1), _state(layout, 6), _state(layout, 13)
    assert (first.pp_rank, middle.pp_rank, last.pp_rank) == (0, 1, 3)
    assert (middle.tp_rank, middle.dp_rank) == (0, 1)
    assert first.next_pipeline_rank() == 5 and first.prev_pipeline_rank() == 13  # wraps around
    assert last.next_pipeline_rank() == 1 and last.prev_pipeline_rank() == 9
    assert first.is_in_embedding_group() and last.is_in_embedding_group()
    assert not middle.is_in_embedding_group()
    for vp, first_ok, last_ok in [(0, True, False), (1, False, True)]:
        assert first.is_pipeline_first_stage(vp) is first_ok
        assert last.is_pipeline_last_stage(vp) is last_ok
        assert first.is_pipeline_first_stage()  # the rank, whichever chunk
        assert last.is_pipeline_last_stage()
        assert not middle.is_pipeline_first_stage()
    assert (first.tp_size, first.pp_size, first.dp_size, first.vpp_size) == (2, 4, 2, 2)


def test_single_process_state():
    ps = ParallelState.single()
    assert (ps.tp_size, ps.pp_size, ps.dp_size, ps.vpp_size) == (1, 1, 1, None)
    assert ps.tp_group is None and ps.pp_group is None and ps.dp_group is None
    assert ps.is_pipeline_first_stage() and ps.is_pipeline_last_stage()
    assert ps.next_pipeline_rank() == 0 == ps.prev_pipeline_rank()

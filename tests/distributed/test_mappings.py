"""Every tensor-parallel mapping, forward and backward, on 2 and 4 gloo ranks against the
analytic result. Rank r's input is a known function of r, so each rank can compute what every
other rank holds and check the collective's result exactly (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megatron.core.tensor_parallel import mappings as mp
from tests.distributed.launcher import run_distributed

SHAPE = (4, 3, 8)  # [s, b, h]: first and last dims divisible by 2 and 4


def _value(rank: int, salt: float, shape=SHAPE) -> torch.Tensor:
    """A tensor every rank can reproduce for any other rank."""
    n = torch.tensor(shape).prod().item()
    return (
        torch.arange(n, dtype=torch.float64).reshape(shape) * (rank + 1) + salt * 100 + rank
    ).sin()


def _run(fn, x, grad, *args):
    """(output, input gradient) of fn(x) under the upstream gradient `grad`."""
    x = x.clone().requires_grad_()
    y = fn(x, *args)
    y.backward(grad.clone())  # copy_to's backward all-reduces the incoming gradient in place
    return y.detach(), x.grad


def _check(name, got, want):
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


def _check_last_dim_group(group, ranks):
    """Split / all-gather along the hidden (last) dimension over `group`."""
    n, r = len(ranks), ranks.index(dist.get_rank())
    xs = [_value(i, 1.0) for i in range(n)]
    gs = [_value(i, 4.0) for i in range(n)]
    gather_last = [_value(i, 2.0, SHAPE[:2] + (SHAPE[2] * n,)) for i in range(n)]

    y, dx = _run(mp.scatter_to_tensor_parallel_region, xs[r], gs[r].chunk(n, -1)[r], group)
    _check("scatter last fwd", y, xs[r].chunk(n, -1)[r])
    _check("scatter last bwd", dx, torch.cat([g.chunk(n, -1)[i] for i, g in enumerate(gs)], -1))

    y, dx = _run(mp.gather_from_tensor_parallel_region, xs[r], gather_last[r], group)
    _check("gather last fwd", y, torch.cat(xs, -1))
    _check("gather last bwd", dx, gather_last[r].chunk(n, -1)[r])


def _check_group(group, ranks):
    """The mappings over `group` (whose members are the global `ranks`) other than the
    last-dimension split / gather."""
    n, r = len(ranks), ranks.index(dist.get_rank())
    xs = [_value(i, 1.0) for i in range(n)]  # every member's input
    gather_first = [_value(i, 3.0, (SHAPE[0] * n,) + SHAPE[1:]) for i in range(n)]
    gs = [_value(i, 4.0) for i in range(n)]  # upstream gradients of same-shape outputs

    y, dx = _run(mp.copy_to_tensor_parallel_region, xs[r], gs[r], group)
    _check("copy fwd", y, xs[r])
    _check("copy bwd", dx, sum(gs))

    y, dx = _run(mp.reduce_from_tensor_parallel_region, xs[r], gs[r], group)
    _check("reduce fwd", y, sum(xs))
    _check("reduce bwd", dx, gs[r])

    y, dx = _run(mp.scatter_to_sequence_parallel_region, xs[r], gs[r].chunk(n, 0)[r], group)
    _check("scatter seq fwd", y, xs[r].chunk(n, 0)[r])
    _check("scatter seq bwd", dx, torch.cat([g.chunk(n, 0)[i] for i, g in enumerate(gs)], 0))

    for partial in (True, False):
        y, dx = _run(
            mp.gather_from_sequence_parallel_region, xs[r], gather_first[r], group, partial
        )
        _check("gather seq fwd", y, torch.cat(xs, 0))
        want = sum(gather_first) if partial else gather_first[r]
        _check(f"gather seq bwd partial={partial}", dx, want.chunk(n, 0)[r])

    y, dx = _run(mp.reduce_scatter_to_sequence_parallel_region, xs[r], gs[r].chunk(n, 0)[r], group)
    _check("reduce-scatter fwd", y, sum(xs).chunk(n, 0)[r])
    _check("reduce-scatter bwd", dx, torch.cat([g.chunk(n, 0)[i] for i, g in enumerate(gs)], 0))

    t = xs[r].clone()
    assert mp.all_reduce_tensor(t, group) is t
    _check("all_reduce_tensor", t, sum(xs))
    t = xs[r].clone()
    _check(
        "all_reduce_tensor max",
        mp.all_reduce_tensor(t, group, op=dist.ReduceOp.MAX),
        torch.stack(xs).amax(0),
    )
    assert mp.group_size(group) == n and mp.group_rank(group) == r

    odd = torch.zeros(n + 1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"sequence dimension {n + 1} is not divisible"):
        mp.scatter_to_sequence_parallel_region(odd, group)
    with pytest.raises(ValueError, match=f"last dimension {n + 1} is not divisible"):
        mp.scatter_to_tensor_parallel_region(odd.t().contiguous(), group)


def _identity_without_group():
    x = _value(0, 5.0)
    for fn in (
        mp.copy_to_tensor_parallel_region,
        mp.reduce_from_tensor_parallel_region,
        mp.scatter_to_tensor_parallel_region,
        mp.gather_from_tensor_parallel_region,
        mp.scatter_to_sequence_parallel_region,
        mp.gather_from_sequence_parallel_region,
        mp.reduce_scatter_to_sequence_parallel_region,
    ):
        assert fn(x, None) is x
    assert mp.group_size(None) == 1 and mp.group_rank(None) == 0


def _body(rank, world_size, check):
    _identity_without_group()
    check(dist.group.WORLD, list(range(world_size)))
    checked = 1
    if world_size == 4:
        # Two tensor-parallel groups side by side, as with TP 2 x DP 2.
        pairs = [[0, 1], [2, 3]]
        groups = [dist.new_group(p) for p in pairs]
        mine = rank // 2
        check(groups[mine], pairs[mine])
        checked += 1
    return checked


@pytest.mark.parametrize("world_size", [2, 4])
def test_mappings_match_analytic(world_size):
    results = run_distributed(_body, world_size, _check_group, timeout=120)
    assert results == [2 if world_size == 4 else 1] * world_size


def test_last_dim_split_and_gather_match_analytic():
    results = run_distributed(_body, 2, _check_last_dim_group, timeout=120)
    assert results == [1, 1]

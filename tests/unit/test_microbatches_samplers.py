import pytest

from megatron.training.data_samplers import CyclicSampler, PretrainingSampler
from megatron.training.microbatches import MicroBatchCalculator


def test_constant_micro_batches():
    c = MicroBatchCalculator(64, 4, 2)
    assert c.num_micro_batches_at(0) == 8 and c.global_batch_at(10**9) == 64


def test_rampup():
    c = MicroBatchCalculator(64, 4, 2, [16, 16, 300])  # 3 increments of 100 samples each
    assert [c.global_batch_at(x) for x in (0, 99, 100, 250, 300, 10**6)] == [16, 16, 32, 48, 64, 64]


@pytest.mark.parametrize(
    "args,match", [((60, 4, 2, None), "not divisible"), ((64, 4, 2, [12, 16, 100]), "multiples")]
)
def test_invalid_batches(args, match):
    with pytest.raises(ValueError, match=match):
        MicroBatchCalculator(*args)


def _global_batches(sampler_cls, total, consumed, mbs, dp, gbs, steps, **kw):
    """Concatenate all DP ranks' micro-batches into global batches."""
    iters = [iter(sampler_cls(total, consumed, mbs, r, dp, **kw)) for r in range(dp)]
    out = []
    for _ in range(steps):
        batch = []
        for _ in range(gbs // (mbs * dp)):
            parts = [next(it) for it in iters]
            batch.extend(i for p in parts for i in p)
        out.append(sorted(batch))
    return out


@pytest.mark.parametrize("cls,kw", [(PretrainingSampler, {}), (CyclicSampler, {"seed": 7})])
def test_global_batches_independent_of_dp_and_resume(cls, kw):
    ref = _global_batches(cls, 100, 0, 2, 1, 8, 10, **kw)
    assert _global_batches(cls, 100, 0, 2, 2, 8, 10, **kw) == ref
    assert _global_batches(cls, 100, 0, 1, 4, 8, 10, **kw) == ref
    # resume after 3 steps with another DP size
    assert _global_batches(cls, 100, 24, 2, 4, 8, 7, **kw) == ref[3:]


def test_pretraining_sampler_is_sequential_and_stops():
    batches = list(PretrainingSampler(10, 0, 2, 1, 2))
    assert batches == [[2, 3], [6, 7]]


def test_cyclic_sampler_epochs_are_permutations():
    it = iter(CyclicSampler(10, 0, 5, 0, 1, seed=3))
    first = next(it) + next(it)
    second = next(it) + next(it)
    assert (
        sorted(first) == list(range(10)) and sorted(second) == list(range(10)) and first != second
    )

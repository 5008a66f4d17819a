"""Random-LTD CUDA token kernels against the pure-torch references on a CUDA device.

Skipped without a GPU (conftest) or when the optional CUDA extension is not built.
"""

import pytest
import torch

from megatron.core import kernels
from megatron.core.random_ltd import token_ops as T
from tests.kernel_parity import assert_parity, needs_kernel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    needs_kernel(kernels.TOKEN_OPS_CUDA),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (s, b, h, k): odd H (2- and 4-byte copy units), H = 1, 16-byte rows, K = 1, K = S, S > 2048
SIZES = [(9, 1, 7, 1), (9, 3, 7, 9), (64, 2, 1024, 32), (16, 4, 1, 5), (4099, 2, 33, 2500)]


def kept_indices(seq, batch, kept, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(seq, generator=gen)[:kept] for _ in range(batch)]
    return torch.sort(torch.stack(rows), dim=1).values.cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("s,b,h,k", SIZES)
def test_gather_scatter_match_reference(s, b, h, k, batch_first, dtype):
    shape = (b, s, h) if batch_first else (s, b, h)
    x = torch.randn(shape, device="cuda").to(dtype)
    idx = kept_indices(s, b, k)
    y_ref = assert_parity(T.token_gather, x, idx, batch_first)
    part = torch.randn_like(y_ref)
    assert_parity(T.token_scatter, x, part, idx, batch_first)

    def input_grads(backend):
        xg, pg = x.clone().requires_grad_(), part.clone().requires_grad_()
        gathered = T.token_gather(xg, idx, batch_first, backend=backend)
        merged = T.token_scatter(xg, pg * 1, idx, batch_first, backend=backend)
        gen = torch.Generator(device="cuda").manual_seed(2)
        g1 = torch.randn(gathered.shape, generator=gen, device="cuda").to(dtype)
        g2 = torch.randn(merged.shape, generator=gen, device="cuda").to(dtype)
        torch.autograd.backward([gathered, merged], [g1, g2])
        return xg.grad, pg.grad

    assert_parity(input_grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_misaligned_views(dtype):
    s, b, h, k = 100, 3, 64, 40
    base = torch.randn(b + 1, s, 2 * h, device="cuda").to(dtype)
    views = {
        "transposed": base[:b, :, :h].transpose(0, 1),
        "strided hidden": base[:b].transpose(0, 1)[..., ::2],
        "misaligned start": base.view(-1)[1 : 1 + s * b * h].view(s, b, h),
        "broadcast batch": base[:1, :, :h].transpose(0, 1).expand(s, b, h),
    }
    idx = kept_indices(s, b, k)
    for name, x in views.items():
        ref = assert_parity(T.token_gather, x, idx, where=name)
        part = torch.randn_like(ref)
        assert_parity(T.token_scatter, x, part, idx, where=name)


def test_attention_mask_and_positions():
    seq, batch, kept = 300, 3, 120
    pos = torch.arange(seq, device="cuda")
    causal = (pos[None, :] > pos[:, None])[None, None]
    lengths = torch.tensor([seq, 200, 17], device="cuda")
    pad = (pos[None, None, :] >= lengths[:, None, None])[:, None] | causal
    additive = torch.randn(batch, 2, seq, seq, device="cuda").transpose(2, 3)
    idx = kept_indices(seq, batch, kept, seed=3)
    for mask in (causal, pad, additive, additive.half()):
        assert_parity(T.gather_attention_mask, mask, idx)
    tri = torch.ones(kept, kept, dtype=torch.bool, device="cuda").triu(1)
    assert torch.equal(T.gather_attention_mask(causal, idx)[:, 0], tri.expand(batch, -1, -1))
    assert torch.equal(assert_parity(T.gather_position_ids, pos[None], idx), idx)
    freqs = torch.randn(seq, 1, 1, 16, device="cuda")
    rot = assert_parity(T.gather_rotary_table, freqs, idx)
    assert torch.equal(rot, freqs[idx.t(), 0])


@pytest.mark.parametrize(
    "seq,kept", [(3, 1), (2048, 2048), (5000, 3000), (4096, 4096), (9000, 5000)]
)
def test_token_sort_any_length(seq, kept):
    gen = torch.Generator().manual_seed(seq)
    idx = torch.stack([torch.randperm(seq, generator=gen)[:kept] for _ in range(4)]).cuda()
    got = assert_parity(T.token_sort, idx)
    assert torch.equal(got, torch.sort(idx, dim=1).values)
    dup = torch.randint(0, 5, (3, 700), device="cuda")
    assert torch.equal(T.token_sort(dup, backend="kernel"), torch.sort(dup, dim=1).values)


def test_side_stream_and_out_of_range_indices():
    x = torch.randn(50, 2, 33, device="cuda")
    idx = kept_indices(50, 2, 20)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = T.token_gather(x, idx, backend="kernel")
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(got, T.token_gather(x, idx, backend="reference"))
    bad = idx.clone()
    bad[1, 3] = 50  # documented: the CUDA kernel gathers zeros instead of reading out of bounds
    out = T.token_gather(x, bad, backend="kernel")
    assert torch.equal(out[3, 1], torch.zeros(33, device="cuda"))
    assert torch.equal(out[3, 0], x[idx[0, 3], 0])

"""Random-LTD token ops: the C++ kernels against the pure-torch references.

Gather and scatter are raw row copies, so kernel and reference must agree bit for bit in every
dtype, layout and stride pattern, forward and backward.
"""

import pytest
import torch

from megatron.core import kernels
from megatron.core.random_ltd import token_ops as T
from tests.kernel_parity import assert_parity, extension_hidden, needs_kernel

needs_cpp = needs_kernel(kernels.TOKEN_OPS_CPU)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (s, b, h, k): K = 1, K = S, odd H, H = 1, S > 2048, b = 1 and several.
SIZES = [(9, 1, 7, 1), (9, 3, 7, 9), (33, 2, 12, 17), (16, 4, 1, 5), (2101, 2, 33, 1000)]


def kept_indices(seq, batch, kept, seed=0):
    """[b, k] distinct sorted positions per sample, as random-LTD draws them."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(seq, generator=gen)[:kept] for _ in range(batch)]
    return torch.sort(torch.stack(rows), dim=1).values


def hidden(seq, batch, h, dtype, batch_first, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, seq, h) if batch_first else (seq, batch, h)
    return torch.randn(shape, generator=gen).to(dtype)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("s,b,h,k", SIZES)
def test_gather_scatter_forward_backward_match_reference(s, b, h, k, batch_first, dtype):
    x = hidden(s, b, h, dtype, batch_first)
    idx = kept_indices(s, b, k)
    y_ref = assert_parity(T.token_gather, x, idx, batch_first)
    assert y_ref.shape == ((b, k, h) if batch_first else (k, b, h))

    part = torch.randn(y_ref.shape).to(dtype)
    assert_parity(T.token_scatter, x, part, idx, batch_first)

    # backward: same upstream gradient through both paths, compare every input gradient
    def input_grads(backend):
        xg, pg = x.clone().requires_grad_(), part.clone().requires_grad_()
        gathered = T.token_gather(xg, idx, batch_first, backend=backend)
        merged = T.token_scatter(xg, pg * 1, idx, batch_first, backend=backend)
        gen = torch.Generator().manual_seed(2)
        g1 = torch.randn(gathered.shape, generator=gen).to(dtype)
        g2 = torch.randn(merged.shape, generator=gen).to(dtype)
        torch.autograd.backward([gathered, merged], [g1, g2])
        return xg.grad, pg.grad

    assert_parity(input_grads)


@needs_cpp
def test_gather_backward_zeroes_dropped_and_scatter_backward_splits():
    s, b, h, k = 6, 2, 3, 2
    idx = torch.tensor([[1, 4], [0, 5]])
    x = torch.randn(s, b, h, requires_grad=True)
    T.token_gather(x, idx, backend="kernel").sum().backward()
    expected = torch.zeros(s, b)
    expected[[1, 4], 0] = 1
    expected[[0, 5], 1] = 1
    assert torch.equal(x.grad, expected[:, :, None].expand(s, b, h))

    x = torch.randn(s, b, h, requires_grad=True)
    y = torch.randn(k, b, h, requires_grad=True)
    grad = torch.randn(s, b, h)
    T.token_scatter(x, y, idx, backend="kernel").backward(grad)
    assert torch.equal(x.grad, grad * (1 - expected)[:, :, None])
    assert torch.equal(y.grad, grad[idx.t(), torch.arange(b)[None, :]])


@needs_cpp
def test_autograd_wrappers_pass_gradcheck():
    idx = torch.tensor([[0, 2, 3], [1, 3, 4]])
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: T.token_gather(t, idx, backend="kernel"), (x,))
    assert torch.autograd.gradcheck(
        lambda a, c: T.token_scatter(a, c, idx, backend="kernel"), (x, y)
    )


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype):
    s, b, h, k = 40, 3, 10, 13
    base = torch.randn(b, s, 2 * h).to(dtype)
    views = {
        "transposed": base[..., :h].transpose(0, 1),  # [s, b, h] view of a [b, s, h] buffer
        "strided hidden": base.transpose(0, 1)[..., ::2],  # element stride 2
        "broadcast batch": base[:1, :, :h].transpose(0, 1).expand(s, b, h),  # batch stride 0
        "4-D hidden": base.transpose(0, 1).reshape(s, b, 2, h),  # [s, b, 2, h], two merged dims
    }
    wide = kept_indices(s, b, k)[:, :, None].expand(b, k, 2).reshape(b, 2 * k)
    idx = wide[:, ::2]  # non-contiguous indices (stride 2)
    for name, x in views.items():
        ref = assert_parity(T.token_gather, x, idx, where=name)
        part = torch.randn(ref.shape).to(dtype).transpose(0, 1).contiguous().transpose(0, 1)
        assert_parity(T.token_scatter, x, part, idx, where=name)
    # a non-contiguous upstream gradient in backward
    grad = torch.randn(b, k, h).to(dtype).transpose(0, 1)

    def input_grad(backend):
        x = views["transposed"].clone().requires_grad_()
        T.token_gather(x, idx, backend=backend).backward(grad)
        return x.grad

    assert_parity(input_grad)


def _masks(seq, batch):
    """Causal, padding (+causal) and document (block-causal) bool masks, True = masked."""
    pos = torch.arange(seq)
    causal = pos[None, :] > pos[:, None]  # [s, s]
    lengths = torch.tensor([seq, seq - 7, 3][:batch])
    limit = lengths[:, None, None]  # [b, 1, 1]
    pad = (pos[None, None, :] >= limit) | (pos[None, :, None] >= limit)  # [b, s, s]
    bounds = torch.tensor([[0, 10, 11, 30], [0, 5, 25, 26], [0, 1, 2, 3]][:batch])
    doc = torch.searchsorted(bounds, pos.expand(batch, seq).contiguous(), right=True)  # [b, s]
    other_doc = doc[:, :, None] != doc[:, None, :]
    return {
        "causal": causal[None, None],  # [1, 1, s, s]
        "padding": (pad | causal)[:, None],  # [b, 1, s, s]
        "document": (other_doc | causal)[:, None],
    }, doc


@needs_cpp
def test_attention_mask_gather_rows_and_columns():
    seq, batch, kept = 40, 3, 15
    masks, doc = _masks(seq, batch)
    idx = kept_indices(seq, batch, kept, seed=3)
    for name, mask in masks.items():
        got = assert_parity(T.gather_attention_mask, mask, idx, where=name)
        assert got.shape == (batch, 1, kept, kept) and got.dtype == torch.bool
    # semantics: causal stays causal; document ids of the kept tokens decide the blocks
    tri = torch.ones(kept, kept, dtype=torch.bool).triu(1)
    causal = T.gather_attention_mask(masks["causal"], idx)
    assert torch.equal(causal[:, 0], tri.expand(batch, -1, -1))
    kept_doc = doc.gather(1, idx)  # [b, k]
    expected = (kept_doc[:, :, None] != kept_doc[:, None, :]) | tri
    assert torch.equal(T.gather_attention_mask(masks["document"], idx)[:, 0], expected)
    # an additive float mask with several heads, viewed transposed (non-contiguous)
    additive = torch.randn(batch, 2, seq, seq).transpose(2, 3)
    assert_parity(T.gather_attention_mask, additive, idx)
    assert T.gather_attention_mask(None, idx) is None


@needs_cpp
@pytest.mark.parametrize("seq,kept", [(5000, 5000), (5000, 2500), (3, 1)])
def test_token_sort_any_length(seq, kept):
    gen = torch.Generator().manual_seed(seq + kept)
    idx = torch.stack([torch.randperm(seq, generator=gen)[:kept] for _ in range(3)])
    got = assert_parity(T.token_sort, idx)
    assert torch.equal(got, torch.sort(idx, dim=1).values)
    dup = torch.randint(0, 7, (2, 300), generator=gen, dtype=torch.int32).t()  # repeats, strided
    assert torch.equal(T.token_sort(dup, backend="kernel"), torch.sort(dup.long(), 1).values)


@needs_cpp
def test_position_ids_and_rotary_table_follow_kept_tokens():
    seq, batch, kept, dim = 30, 3, 8, 6
    idx = kept_indices(seq, batch, kept, seed=4)
    pos = torch.arange(seq)[None]  # [1, s]
    assert torch.equal(assert_parity(T.gather_position_ids, pos, idx), idx)
    freqs = torch.randn(seq, 1, 1, dim)  # Megatron's rotary table [s, 1, 1, d]
    rot = assert_parity(T.gather_rotary_table, freqs, idx)
    assert rot.shape == (kept, batch, 1, dim)
    assert torch.equal(rot, freqs[idx.t(), 0])  # freqs[idx[i, j], 0] -> [k, b, 1, d]


@needs_cpp
def test_kernel_errors_name_the_bad_index():
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"indices\[1\]\[0\] = 5 is outside"):
        T.token_gather(x, torch.tensor([[0], [5]]), backend="kernel")
    with pytest.raises(ValueError, match="repeats"):
        T.token_scatter(x, torch.randn(2, 2, 3), torch.tensor([[1, 1], [0, 2]]), backend="kernel")
    with pytest.raises(ValueError, match="y must be"):
        T.token_scatter(x, torch.randn(2, 2, 4), torch.tensor([[1, 2], [0, 2]]))
    with pytest.raises(ValueError, match="indices must be"):
        T.token_gather(x, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="attention mask"):
        T.gather_attention_mask(torch.ones(2, 1, 5, 4, dtype=torch.bool), torch.tensor([[0], [1]]))


def test_backend_selection(monkeypatch):
    x, idx = torch.randn(4, 2, 3), torch.tensor([[0, 3], [1, 2]])
    with pytest.raises(ValueError, match="backend must be one of"):
        T.token_gather(x, idx, backend="cuda")
    monkeypatch.setenv(kernels.BACKEND_ENV, "reference")
    assert T.active_backend("cpu") == "reference"
    assert torch.equal(T.token_gather(x, idx), T.token_gather_reference(x, idx))
    monkeypatch.setenv(kernels.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=kernels.BACKEND_ENV):
        T.token_gather(x, idx)
    monkeypatch.delenv(kernels.BACKEND_ENV)
    assert T.active_backend("cpu") == ("kernel" if T.kernels_available("cpu") else "reference")
    assert not T.kernels_available("meta")
    # a device without kernels: "auto" falls back to the reference, "kernel" refuses
    meta_x, meta_idx = x.to("meta"), idx.to("meta")
    assert T.token_gather(meta_x, meta_idx).shape == (2, 2, 3)
    with pytest.raises(RuntimeError, match="no random-LTD kernel"):
        T.token_gather(meta_x, meta_idx, backend="kernel")


@needs_cpp
def test_empty_selection():
    x = torch.randn(6, 2, 4)
    idx = torch.empty(2, 0, dtype=torch.int64)
    assert T.token_gather(x, idx, backend="kernel").shape == (0, 2, 4)
    out = T.token_scatter(x, torch.empty(0, 2, 4), idx, backend="kernel")
    assert torch.equal(out, x)


def test_missing_kernel_falls_back_to_reference():
    x, idx = torch.randn(4, 2, 3), torch.tensor([[0, 3], [1, 2]])
    with extension_hidden(kernels.TOKEN_OPS_CPU):  # as if csrc/random_ltd were not built
        assert T.active_backend("cpu") == "reference"
        assert torch.equal(T.token_gather(x, idx), T.token_gather_reference(x, idx))
        with pytest.raises(RuntimeError, match="no random-LTD kernel"):
            T.token_sort(idx, backend="kernel")

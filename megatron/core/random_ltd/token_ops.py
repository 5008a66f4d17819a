"""Random-LTD token ops: gather the kept tokens of a layer's input, scatter them back, and gather
the attention mask, position ids and rotary table that go with them.

Every op exists twice: a compiled kernel (C++/OpenMP for CPU tensors, from
csrc/random_ltd/token_ops_cpu.cpp; CUDA for CUDA tensors, from csrc/random_ltd/token_ops_cuda.cu
when that optional extension is built) and a pure-torch reference (`<op>_reference`), which is the
oracle of tests/unit/test_token_ops.py and the fallback when a kernel is missing. Both give the
same bits for every dtype: rows are copied as raw bytes.

Layouts: hidden states are `[s, b, *h]` (`batch_first=False`, Megatron's layout) or `[b, s, *h]`
(`batch_first=True`); any strides are accepted (a transposed view is read in place, no copy).
`indices` is an integer `[b, k]` tensor on the same device: row i lists the positions in
`[0, s)` of the k tokens sample i keeps, distinct within the row (random-LTD draws them without
replacement and sorts them with `token_sort`, which keeps causal order).

Dispatch: the tensors' device picks the extension (`extension_for`: CPU tensors
`kernels.TOKEN_OPS_CPU`, CUDA tensors `kernels.TOKEN_OPS_CUDA`), and `megatron.core.kernels` loads
it and applies `backend` as for every op: "auto" (the kernel when built, else the reference with
one logged warning), "kernel" (the kernel or an error naming the fix) or "reference". When the
argument is None the environment variable MEGATRON_KERNEL_BACKEND decides, default "auto".

Index validation: the C++ kernels raise ValueError for an index outside `[0, s)` (and the scatter
for a repeated one); the CUDA kernels do not check (that needs a device sync) but never touch
memory outside the tensors: such a token gathers zeros and is not scattered.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from megatron.core import kernels as core_kernels

_NO_VIEW = (0, 0, 0, 0)  # an absent row view: the kernel reads zeros

# ----------------------------------------------------------------------------------------------
# Kernel adapters and dispatch


class _CpuKernels:
    """The C++ module with torch's intra-op thread count."""

    max_sort_length = None

    def __init__(self, module: ModuleType):
        self.module = module

    def gather_rows(self, src, dst, indices, shape, device):
        self.module.gather_rows(src, dst, indices, shape, torch.get_num_threads())

    def merge_rows(self, full, part, out, indices, shape, device):
        self.module.merge_rows(full, part, out, indices, shape, torch.get_num_threads())

    def gather_mask(self, src, dst, indices, shape, device):
        self.module.gather_mask(src, dst, indices, shape, torch.get_num_threads())

    def sort_rows(self, indices, out, batch, kept, device):
        self.module.sort_rows(indices, out, batch, kept, torch.get_num_threads())


class _CudaKernels:
    """The CUDA module, launching on the current torch stream of the tensors' device."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.max_sort_length = module.MAX_SORT_LENGTH

    @staticmethod
    def _stream(device: torch.device) -> Tuple[int, int]:
        return device.index, torch.cuda.current_stream(device).cuda_stream

    def gather_rows(self, src, dst, indices, shape, device):
        self.module.gather_rows(src, dst, indices, shape, *self._stream(device))

    def merge_rows(self, full, part, out, indices, shape, device):
        slots = torch.empty(shape[0] * shape[2], dtype=torch.int32, device=device)
        self.module.merge_rows(
            full, part, out, indices, shape, slots.data_ptr(), *self._stream(device)
        )

    def gather_mask(self, src, dst, indices, shape, device):
        self.module.gather_mask(src, dst, indices, shape, *self._stream(device))

    def sort_rows(self, indices, out, batch, kept, device):
        self.module.sort_rows(indices, out, batch, kept, *self._stream(device))


_EXTENSIONS = {"cpu": core_kernels.TOKEN_OPS_CPU, "cuda": core_kernels.TOKEN_OPS_CUDA}
_ADAPTERS = {"cpu": _CpuKernels, "cuda": _CudaKernels}


def extension_for(device) -> Optional[core_kernels.Extension]:
    """The compiled extension that serves tensors on `device` (None: no kernel for that device
    type, e.g. "meta"), whether or not it is built."""
    return _EXTENSIONS.get(torch.device(device).type)


@functools.lru_cache(maxsize=None)
def _adapter(device_type: str, module: ModuleType):
    return _ADAPTERS[device_type](module)


def _kernels_for(device: torch.device, backend: Optional[str]):
    """The kernel adapter to use for tensors on `device`, or None for the torch reference."""
    ext = extension_for(device)
    if ext is None:
        if core_kernels.resolve_backend(backend) == "kernel":
            raise core_kernels.KernelUnavailableError(
                f"backend='kernel' requested but there is no random-LTD kernel for {device} "
                "tensors (kernels exist for CPU and CUDA tensors); use backend='auto' / "
                "'reference'"
            )
        return None
    module = core_kernels.resolve(ext, backend)
    return None if module is None else _adapter(device.type, module)


def kernels_available(device) -> bool:
    """Whether compiled kernels exist for tensors on `device`, whatever the backend setting."""
    ext = extension_for(device)
    return ext is not None and core_kernels.available(ext)


def active_backend(device, backend: Optional[str] = None) -> str:
    """What serves tensors on `device` for `backend`: "kernel" or "reference"."""
    return "reference" if _kernels_for(torch.device(device), backend) is None else "kernel"


# ----------------------------------------------------------------------------------------------
# Argument checks and raw views


def _batch_seq(x: torch.Tensor, batch_first: bool, what: str) -> Tuple[int, int]:
    if x.dim() < 2:
        layout = "[b, s, ...]" if batch_first else "[s, b, ...]"
        raise ValueError(f"{what} must be at least 2-D {layout}, got shape {list(x.shape)}")
    return (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])


def _checked_indices(indices: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if indices.dim() != 2 or indices.shape[0] != batch:
        raise ValueError(
            f"indices must be [b, k] with b = {batch} (the batch size of the tensor), got shape "
            f"{list(indices.shape)}"
        )
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.device != device:
        raise ValueError(f"indices are on {indices.device} but the tensor is on {device}")
    return indices.to(torch.int64)


def _merged_stride(sizes, strides) -> Optional[int]:
    """Element stride of the trailing dims seen as one dimension, or None when they are not."""
    dims = [(n, st) for n, st in zip(sizes, strides) if n != 1]
    for (_, outer), (n_inner, inner) in zip(dims, dims[1:]):
        if outer != inner * n_inner:
            return None
    return dims[-1][1] if dims else 1


def _row_view(t: torch.Tensor, batch_first: bool):
    """(t or a contiguous copy, (addr, batch, token, elem strides in bytes), row elements)."""
    elem_stride = _merged_stride(t.shape[2:], t.stride()[2:])
    if elem_stride is None:
        t = t.contiguous()  # trailing dims not one strided run; rare (a permuted hidden dim)
        elem_stride = 1
    size = t.element_size()
    batch_stride, token_stride = (
        (t.stride(0), t.stride(1)) if batch_first else (t.stride(1), t.stride(0))
    )
    view = (t.data_ptr(), batch_stride * size, token_stride * size, elem_stride * size)
    return t, view, math.prod(t.shape[2:])


def _index_view(indices: torch.Tensor) -> Tuple[int, int, int]:
    return indices.data_ptr(), indices.stride(0), indices.stride(1)


def _rows_shape(batch: int, seq: int, rest, batch_first: bool) -> Tuple[int, ...]:
    return (batch, seq, *rest) if batch_first else (seq, batch, *rest)


# ----------------------------------------------------------------------------------------------
# Kernel calls (no autograd)


def _gather_kernel(kernels, x, indices, batch_first, out=None):
    """The gathered rows in a new tensor, or in `out` (contiguous, right shape; benchmarks)."""
    batch, seq = _batch_seq(x, batch_first, "x")
    kept = indices.shape[1]
    y = (
        out
        if out is not None
        else torch.empty(
            _rows_shape(batch, kept, x.shape[2:], batch_first), dtype=x.dtype, device=x.device
        )
    )  # [b, k, *h] or [k, b, *h]
    x, x_view, hidden = _row_view(x, batch_first)
    _, y_view, _ = _row_view(y, batch_first)
    shape = (batch, kept, seq, hidden, x.element_size())
    if y.numel():
        kernels.gather_rows(x_view, y_view, _index_view(indices), shape, x.device)
    return y


def _merge_kernel(kernels, full, part, indices, batch_first, seq, out=None):
    """full with the rows at `indices` replaced by `part` (None = zeros), in a new tensor or
    in `out` (contiguous, right shape, not aliasing the inputs; benchmarks)."""
    like = full if full is not None else part
    batch, _ = _batch_seq(like, batch_first, "x")
    if out is None:
        out = torch.empty(
            _rows_shape(batch, seq, like.shape[2:], batch_first),
            dtype=like.dtype,
            device=like.device,
        )  # [b, s, *h] or [s, b, *h]
    out, out_view, hidden = _row_view(out, batch_first)
    keep_alive, views = [], []
    for t in (full, part):
        if t is None:
            views.append(_NO_VIEW)
        else:
            t, view, _ = _row_view(t, batch_first)
            keep_alive.append(t)
            views.append(view)
    if out.numel():
        shape = (batch, indices.shape[1], seq, hidden, out.element_size())
        kernels.merge_rows(views[0], views[1], out_view, _index_view(indices), shape, out.device)
    return out


class _TokenGather(torch.autograd.Function):
    """y = x at the kept positions; backward scatters the gradient into zeros."""

    @staticmethod
    def forward(ctx, x, indices, batch_first, kernels):
        ctx.save_for_backward(indices)
        ctx.batch_first, ctx.kernels = batch_first, kernels
        ctx.seq = _batch_seq(x, batch_first, "x")[1]
        return _gather_kernel(kernels, x, indices, batch_first)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        grad_x = _merge_kernel(ctx.kernels, None, grad, indices, ctx.batch_first, ctx.seq)
        return grad_x, None, None, None


class _TokenScatter(torch.autograd.Function):
    """out = x with the kept positions replaced by y; backward splits the gradient."""

    @staticmethod
    def forward(ctx, x, y, indices, batch_first, kernels):
        ctx.save_for_backward(indices)
        ctx.batch_first, ctx.kernels = batch_first, kernels
        ctx.seq = _batch_seq(x, batch_first, "x")[1]
        return _merge_kernel(kernels, x, y, indices, batch_first, ctx.seq)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:  # dropped tokens pass through; kept ones were replaced
            grad_x = _merge_kernel(ctx.kernels, grad, None, indices, ctx.batch_first, ctx.seq)
        if ctx.needs_input_grad[1]:
            grad_y = _gather_kernel(ctx.kernels, grad, indices, ctx.batch_first)
        return grad_x, grad_y, None, None, None


def _mask_kernel(kernels, mask, indices):
    batch, kept = indices.shape
    heads, seq = mask.shape[1], mask.shape[2]
    out = torch.empty((batch, heads, kept, kept), dtype=mask.dtype, device=mask.device)
    size = mask.element_size()
    src = (mask.data_ptr(), *(st * size for st in mask.stride()))
    if mask.shape[0] == 1:
        src = (src[0], 0, *src[2:])  # one mask broadcast over the batch
    dst = (out.data_ptr(), *(st * size for st in out.stride()))
    if out.numel():
        shape = (batch, heads, kept, seq, size)
        kernels.gather_mask(src, dst, _index_view(indices), shape, mask.device)
    return out


def _sort_kernel(kernels, indices):
    batch, kept = indices.shape
    if kernels.max_sort_length is not None and kept > kernels.max_sort_length:
        return torch.sort(indices, dim=1).values  # beyond the CUDA shared-memory sort
    out = torch.empty((batch, kept), dtype=torch.int64, device=indices.device)
    if out.numel():
        kernels.sort_rows(_index_view(indices), out.data_ptr(), batch, kept, indices.device)
    return out


# ----------------------------------------------------------------------------------------------
# Pure-torch references (the oracle, and the fallback without kernels)


def token_sort_reference(indices: torch.Tensor) -> torch.Tensor:
    """Each row of `indices` [b, k] sorted ascending (torch.sort)."""
    return torch.sort(indices.to(torch.int64), dim=1).values


def token_gather_reference(
    x: torch.Tensor, indices: torch.Tensor, batch_first: bool = False
) -> torch.Tensor:
    """`token_gather` by advanced indexing; differentiable through torch autograd."""
    batch, _ = _batch_seq(x, batch_first, "x")
    indices = _checked_indices(indices, batch, x.device)
    rows = torch.arange(batch, device=x.device)[:, None]  # [b, 1]
    if batch_first:
        return x[rows, indices]  # [b, k, *h]
    return x[indices.t(), rows.t()]  # [k, b, *h]


def token_scatter_reference(
    x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, batch_first: bool = False
) -> torch.Tensor:
    """`token_scatter` by index_put (out of place); differentiable through torch autograd."""
    batch, _ = _batch_seq(x, batch_first, "x")
    indices = _checked_indices(indices, batch, x.device)
    rows = torch.arange(batch, device=x.device)[:, None]  # [b, 1]
    if batch_first:
        return x.index_put((rows, indices), y)
    return x.index_put((indices.t(), rows.t()), y)


def gather_attention_mask_reference(mask: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`gather_attention_mask` with two torch.gather calls (rows, then columns)."""
    mask = _checked_mask(mask, indices)
    batch, kept = indices.shape
    heads, seq = mask.shape[1], mask.shape[2]
    indices = indices.to(torch.int64)
    full = mask.expand(batch, heads, seq, seq)
    row_idx = indices[:, None, :, None].expand(batch, heads, kept, seq)
    rows = full.gather(2, row_idx)  # [b, n, k, s]
    col_idx = indices[:, None, None, :].expand(batch, heads, kept, kept)
    return rows.gather(3, col_idx)  # [b, n, k, k]


def _checked_mask(mask: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    batch = indices.shape[0] if indices.dim() == 2 else -1
    if mask.dim() != 4 or mask.shape[2] != mask.shape[3] or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"attention mask must be [b or 1, heads, s, s] for b = {batch}, got shape "
            f"{list(mask.shape)}"
        )
    _checked_indices(indices, batch, mask.device)
    return mask


# ----------------------------------------------------------------------------------------------
# Public ops


def token_sort(indices: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Each row of the integer tensor `indices` [b, k] sorted ascending, as int64 [b, k].

    No length limit (DeepSpeed's CUDA counting sort of random-LTD overflows above 2048 tokens).
    """
    if indices.dim() != 2:
        raise ValueError(f"indices must be [b, k], got shape {list(indices.shape)}")
    indices = _checked_indices(indices, indices.shape[0], indices.device)
    kernels = _kernels_for(indices.device, backend)
    if kernels is None:
        return token_sort_reference(indices)
    return _sort_kernel(kernels, indices)


def token_gather(
    x: torch.Tensor,
    indices: torch.Tensor,
    batch_first: bool = False,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The kept tokens of `x`, in the order of `indices`; differentiable in x.

    Args:
        x: [s, b, *h] (batch_first False) or [b, s, *h], any dtype and strides.
        indices: integer [b, k], positions in [0, s).
        batch_first: layout of x and of the result.
        backend: "auto", "kernel" or "reference"; None reads MEGATRON_KERNEL_BACKEND.

    Returns:
        A new contiguous tensor y, [k, b, *h] with y[j, i] = x[indices[i, j], i] (or [b, k, *h]
        with y[i, j] = x[i, indices[i, j]]). Backward: the gradient scattered into zeros.
    """
    batch, _ = _batch_seq(x, batch_first, "x")
    indices = _checked_indices(indices, batch, x.device)
    kernels = _kernels_for(x.device, backend)
    if kernels is None:
        return token_gather_reference(x, indices, batch_first)
    return _TokenGather.apply(x, indices, batch_first, kernels)


def token_scatter(
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    batch_first: bool = False,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """A copy of the full sequence `x` with the kept positions replaced by `y`.

    Args:
        x: [s, b, *h] (or [b, s, *h]): the layer input; dropped tokens pass through unchanged.
        y: [k, b, *h] (or [b, k, *h]): the layer output for the kept tokens, same dtype as x.
        indices: integer [b, k], distinct positions in [0, s) within each row.
        batch_first: layout of x, y and the result.
        backend: "auto", "kernel" or "reference"; None reads MEGATRON_KERNEL_BACKEND.

    Returns:
        A new contiguous tensor shaped like x. Backward: x gets the gradient with the kept
        positions zeroed, y gets the gradient gathered at the kept positions.
    """
    batch, _ = _batch_seq(x, batch_first, "x")
    indices = _checked_indices(indices, batch, x.device)
    expected = _rows_shape(batch, indices.shape[1], x.shape[2:], batch_first)
    if tuple(y.shape) != expected or y.dtype != x.dtype or y.device != x.device:
        raise ValueError(
            f"token_scatter: y must be {list(expected)} {x.dtype} on {x.device} to match x "
            f"{list(x.shape)} and indices {list(indices.shape)}, got {list(y.shape)} {y.dtype} "
            f"on {y.device}"
        )
    kernels = _kernels_for(x.device, backend)
    if kernels is None:
        return token_scatter_reference(x, y, indices, batch_first)
    return _TokenScatter.apply(x, y, indices, batch_first, kernels)


def gather_attention_mask(
    mask: Optional[torch.Tensor], indices: torch.Tensor, *, backend: Optional[str] = None
) -> Optional[torch.Tensor]:
    """The attention mask among the kept tokens: rows and columns gathered per sample.

    Args:
        mask: [b or 1, heads, s, s] (True = masked for bool masks; any dtype), or None.
        indices: integer [b, k] kept positions, sorted ascending so a causal mask stays causal.
        backend: "auto", "kernel" or "reference"; None reads MEGATRON_KERNEL_BACKEND.

    Returns:
        [b, heads, k, k] with out[i, n, r, c] = mask[i or 0, n, indices[i, r], indices[i, c]], so
        padding and document masks stay right; None when mask is None. Not differentiable
        through the kernel: a mask that requires grad takes the torch reference.
    """
    if mask is None:
        return None
    mask = _checked_mask(mask, indices)
    indices = indices.to(torch.int64)
    kernels = _kernels_for(mask.device, backend)
    needs_grad = mask.requires_grad and torch.is_grad_enabled()
    if kernels is None or needs_grad or mask.element_size() not in (1, 2, 4, 8):
        return gather_attention_mask_reference(mask, indices)
    return _mask_kernel(kernels, mask, indices)


def gather_position_ids(
    position_ids: torch.Tensor, indices: torch.Tensor, *, backend: Optional[str] = None
) -> torch.Tensor:
    """Position ids [b or 1, s] of the kept tokens: [b, k] with out[i, j] = pos[i, indices[i, j]].

    Keeps learned and rotary position embeddings right after dropping tokens.
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be [b or 1, s], got {list(position_ids.shape)}")
    batch = indices.shape[0] if indices.dim() == 2 else -1
    full = position_ids.expand(batch, position_ids.shape[1])  # [b, s], no copy
    return token_gather(full, indices, batch_first=True, backend=backend)


def gather_rotary_table(
    freqs: torch.Tensor, indices: torch.Tensor, *, backend: Optional[str] = None
) -> torch.Tensor:
    """A rotary table [s, b or 1, *r] (Megatron: [s, 1, 1, d]) at the kept positions: [k, b, *r].

    out[j, i] = freqs[indices[i, j], i or 0]: each sample's kept tokens keep their own angles.
    Differentiable in freqs like `token_gather`.
    """
    if freqs.dim() < 2:
        raise ValueError(f"rotary table must be [s, b or 1, ...], got {list(freqs.shape)}")
    batch = indices.shape[0] if indices.dim() == 2 else -1
    full = freqs.expand(freqs.shape[0], batch, *freqs.shape[2:])  # [s, b, *r], no copy
    return token_gather(full, indices, batch_first=False, backend=backend)

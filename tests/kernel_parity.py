"""One parity check for every kernel: an op run with backend="kernel" and backend="reference".

Every dispatching op of the library takes `backend=` ("auto", "kernel", "reference"; see
megatron/core/kernels.py). `assert_parity(op, *args, **kwargs)` calls the op both ways on the same
inputs and asserts that the results are identical: same structure (tuples, lists, dicts), same
types, dtypes and shapes, and the same bytes (bitwise; NaN payloads and the sign of zero
included). A tolerance (`rtol` / `atol`) is for ops whose kernel legitimately rounds differently;
none of the current ones needs it. When the kernel is not usable (not built, or a stale build) the
kernel call raises `KernelUnavailableError` and the test is skipped with that message, which
names the fix.

`needs_kernel(ext)` is the matching skip mark for tests that exercise a kernel on its own (its
errors, its gradients), and `extension_hidden(ext)` makes an extension look unbuilt for the
duration of a `with` block (the "auto" fallback tests).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pytest

from megatron.core import kernels

try:
    import torch
except ImportError:  # the dataset ops need numpy only
    torch = None

_ABSENT = object()


def needs_kernel(ext: kernels.Extension):
    """A skipif mark: the test needs the compiled module of `ext` (the reason names the fix)."""
    reason = kernels.unavailable_reason(ext)
    return pytest.mark.skipif(
        reason is not None,
        reason=f"{ext.module} {reason}; build it with {ext.build}",
    )


@contextlib.contextmanager
def extension_hidden(ext: kernels.Extension) -> Iterator[None]:
    """Within the block the compiled module of `ext` cannot be imported (as if never built), and
    `megatron.core.kernels` has forgotten what it loaded; both are restored afterwards."""
    saved = sys.modules.get(ext.module, _ABSENT)
    sys.modules[ext.module] = None  # importing it raises ImportError
    kernels.reset()
    try:
        yield
    finally:
        if saved is _ABSENT:
            sys.modules.pop(ext.module, None)
        else:
            sys.modules[ext.module] = saved
        kernels.reset()


def assert_parity(
    op: Callable[..., Any],
    *args: Any,
    rtol: float = 0.0,
    atol: float = 0.0,
    where: str = "result",
    **kwargs: Any,
) -> Any:
    """Runs `op(*args, backend=..., **kwargs)` with the kernel and with the reference and asserts
    identical results (within rtol / atol when given; `where` names the case in failures).
    Returns the reference result.

    Skips the test when the kernel is unavailable. Exceptions other than that propagate, so an
    op that raises on one path only fails the test.
    """
    try:
        got = op(*args, backend="kernel", **kwargs)
    except kernels.KernelUnavailableError as exc:
        pytest.skip(str(exc))
    expected = op(*args, backend="reference", **kwargs)
    assert_same(got, expected, rtol=rtol, atol=atol, where=where)
    return expected


def assert_same(got: Any, expected: Any, rtol: float = 0.0, atol: float = 0.0, where="result"):
    """Recursive equality of kernel and reference results: arrays and tensors bitwise (or within
    rtol / atol when either is non-zero), containers element by element, anything else by ==."""
    exact = rtol == 0.0 and atol == 0.0
    if torch is not None and isinstance(expected, torch.Tensor):
        _same_tensor(got, expected, exact, rtol, atol, where)
    elif isinstance(expected, np.ndarray):
        _same_array(got, expected, exact, rtol, atol, where)
    elif isinstance(expected, (tuple, list)):
        assert type(got) is type(expected), f"{where}: {type(got)} vs {type(expected)}"
        assert len(got) == len(expected), f"{where}: length {len(got)} vs {len(expected)}"
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, rtol, atol, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(got, dict), f"{where}: {type(got)} vs dict"
        assert got.keys() == expected.keys(), f"{where}: keys {got.keys()} vs {expected.keys()}"
        for key in expected:
            assert_same(got[key], expected[key], rtol, atol, f"{where}[{key!r}]")
    else:
        assert got == expected, f"{where}: {got!r} (kernel) != {expected!r} (reference)"


def _same_array(got, expected, exact, rtol, atol, where):
    assert isinstance(got, np.ndarray), f"{where}: {type(got)} vs numpy array"
    assert got.dtype == expected.dtype, f"{where}: dtype {got.dtype} vs {expected.dtype}"
    assert got.shape == expected.shape, f"{where}: shape {got.shape} vs {expected.shape}"
    if exact:
        a, b = np.ascontiguousarray(got), np.ascontiguousarray(expected)
        if a.tobytes() != b.tobytes():
            np.testing.assert_array_equal(got, expected, err_msg=where)  # shows the difference
            raise AssertionError(f"{where}: equal values but different bits (-0.0 / NaN payload)")
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=where)


def _tensor_bytes(t: "torch.Tensor") -> "torch.Tensor":
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)


def _same_tensor(got, expected, exact, rtol, atol, where):
    assert isinstance(got, torch.Tensor), f"{where}: {type(got)} vs torch.Tensor"
    assert got.dtype == expected.dtype, f"{where}: dtype {got.dtype} vs {expected.dtype}"
    assert got.shape == expected.shape, f"{where}: shape {got.shape} vs {expected.shape}"
    assert got.device == expected.device, f"{where}: device {got.device} vs {expected.device}"
    if exact:
        if not torch.equal(_tensor_bytes(got), _tensor_bytes(expected)):
            difference: Optional[str] = None
            if not torch.equal(got, expected):
                mismatch = (got != expected).nonzero()
                difference = f"first differing element at {mismatch[0].tolist()}"
            raise AssertionError(f"{where}: kernel and reference differ ({difference or 'bits'})")
    else:
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, msg=where)

"""The one place that loads compiled extensions and chooses between a kernel and its reference.

Every accelerated op of the library exists twice: a compiled kernel (a pybind11 module built from
csrc/ by setup.py) and a pure numpy / torch reference named `<op>_reference`, which defines the
result and is the oracle of the parity tests (tests/kernel_parity.py). This module owns:

- the description of every extension (`Extension`: module name, API version, the symbols the
  Python side calls, what it accelerates, how to build it), listed in `EXTENSIONS`;
- loading them (`load`): cached per process; an extension that cannot be used (not importable,
  a stale build whose `KERNEL_API` or symbols do not match, a CUDA module the driver rejects) is
  reported by ONE logged warning that says why and how to fix it, then treated as absent;
- the backend vocabulary of every op (`BACKENDS`): "auto" (the kernel when it is usable, else the
  reference), "kernel" (the kernel, or `KernelUnavailableError` naming the fix) and "reference"
  (the pure reference, without loading anything). `backend=None` reads the environment variable
  `BACKEND_ENV` (MEGATRON_KERNEL_BACKEND), default "auto";
- the queries `available`, `unavailable_reason` and `active_backend`.

Every dispatching op follows one pattern::

    module = kernels.resolve(kernels.DATASET_HELPERS, backend)
    if module is None:
        return build_sample_idx_reference(...)
    return module.build_sample_idx(...)

Ops whose kernel depends on the inputs (the random-LTD token ops: CPU tensors run the C++ module,
CUDA tensors the CUDA one) pick the `Extension` themselves and then call `resolve` the same way.

Nothing else in `megatron` imports a compiled module. This module imports only the standard
library (torch is imported lazily, and only to check a CUDA extension), so the dataset code that
uses it does not depend on torch.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
from types import ModuleType
from typing import Dict, Optional, Tuple, Union

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "kernel", "reference")
"""Accepted `backend` arguments of every dispatching op (and values of BACKEND_ENV)."""

BACKEND_ENV = "MEGATRON_KERNEL_BACKEND"
"""Environment variable that decides the backend when an op gets `backend=None`."""

BUILD_CPP = (
    "`pip install -e .` or `python setup.py build_ext --inplace` from the repository root "
    "(needs a C++17 compiler and pybind11)"
)
"""How to build (or rebuild) the C++ extensions."""

BUILD_CUDA = (
    "`pip install --no-build-isolation -e .` from the repository root on a machine with nvcc and "
    "a CUDA build of torch (MEGATRON_BUILD_CUDA=1 forces the CUDA build)"
)
"""How to build (or rebuild) the optional CUDA extensions."""


@dataclasses.dataclass(frozen=True)
class Extension:
    """Description of one compiled extension module (one entry of csrc/build_config.py).

    Attributes:
        module: importable module name, e.g. "megatron.core.datasets.helpers_cpp".
        api_version: the `KERNEL_API` attribute the module must export; the Python side and the
            C++ side bump it together whenever a signature or a semantic changes, so an old
            build is detected instead of being called with the wrong arguments.
        kernel: what the module is, as a noun phrase for messages ("C++ dataset helpers").
        accelerates: the ops it accelerates, for messages ("the GPT and blending index ...").
        symbols: attributes the Python side calls; a missing one marks a stale build.
        build: the command that builds it (shown in warnings and errors).
        needs_cuda_torch: the module only makes sense with a CUDA build of torch; with a
            CPU-only torch it is silently absent (there are no CUDA tensors to run it on).
        probe: name of a function of the module called once after import; an exception from it
            marks the module unusable (a CUDA module whose driver is too old, say).
    """

    module: str
    api_version: int
    kernel: str
    accelerates: str
    symbols: Tuple[str, ...] = ()
    build: str = BUILD_CPP
    needs_cuda_torch: bool = False
    probe: Optional[str] = None


DATASET_HELPERS = Extension(
    module="megatron.core.datasets.helpers_cpp",
    api_version=1,
    kernel="C++ dataset helpers",
    accelerates=(
        "the GPT sample index, the blending indices, the BERT sample mapping and replay and the "
        "curriculum metric kernels"
    ),
    symbols=(
        "build_sample_idx",
        "build_blending_indices",
        "build_blending_indices_largest_error",
        "build_mapping",
        "token_table_sums",
        "token_bincount",
        "bert_segment_replay",
    ),
)
"""csrc/data_helpers/: index builders, BERT mapping and replay, curriculum metric kernels."""

TOKEN_OPS_CPU = Extension(
    module="megatron.core.random_ltd.token_ops_cpp",
    api_version=1,
    kernel="random-LTD kernel for CPU tensors",
    accelerates="the random-LTD token ops on CPU tensors",
    symbols=("gather_rows", "merge_rows", "gather_mask", "sort_rows"),
)
"""csrc/random_ltd/ (C++/OpenMP): random-LTD token gather / scatter / mask gather / sort."""

TOKEN_OPS_CUDA = Extension(
    module="megatron.core.random_ltd.token_ops_cuda",
    api_version=1,
    kernel="random-LTD kernel for CUDA tensors",
    accelerates="the random-LTD token ops on CUDA tensors",
    symbols=(
        "gather_rows",
        "merge_rows",
        "gather_mask",
        "sort_rows",
        "device_count",
        "MAX_SORT_LENGTH",
    ),
    build=BUILD_CUDA,
    needs_cuda_torch=True,
    probe="device_count",
)
"""csrc/random_ltd/ (CUDA, optional): the same token ops on CUDA tensors."""

EXTENSIONS = (DATASET_HELPERS, TOKEN_OPS_CPU, TOKEN_OPS_CUDA)
"""Every compiled extension of the package (the modules of csrc/build_config.py)."""

ExtensionLike = Union[Extension, str]


class KernelUnavailableError(ImportError, RuntimeError):
    """backend="kernel" was requested but the kernel cannot be used; the message names the fix.

    An ImportError (a compiled module is missing) and a RuntimeError (the requested
    configuration cannot run), so callers of either older error type keep working.
    """


def _extension(ext: ExtensionLike) -> Extension:
    if isinstance(ext, Extension):
        return ext
    for known in EXTENSIONS:
        if ext == known.module:
            return known
    names = ", ".join(e.module for e in EXTENSIONS)
    raise ValueError(f"unknown compiled extension {ext!r}; the known ones are {names}")


def resolve_backend(backend: Optional[str]) -> str:
    """The backend to use: `backend`, or when it is None the value of BACKEND_ENV ("auto" when
    unset). Raises ValueError naming the valid values for anything else."""
    if backend is None:
        name = os.environ.get(BACKEND_ENV, "").strip() or "auto"
        if name not in BACKENDS:
            raise ValueError(
                f"${BACKEND_ENV} must be one of {', '.join(BACKENDS)} (or unset), got {name!r}"
            )
        return name
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
    return backend


def _cuda_torch_missing() -> Optional[str]:
    """Why CUDA extensions cannot apply in this process, or None when torch is a CUDA build."""
    try:
        import torch
    except ImportError:
        return "cannot be used: torch is not importable"
    if torch.version.cuda is None:
        return f"cannot be used: torch {torch.__version__} is a CPU-only build"
    return None


def _try_load(ext: Extension) -> Tuple[Optional[ModuleType], Optional[str], bool]:
    """(module or None, why not, whether to warn about it)."""
    if ext.needs_cuda_torch:
        why = _cuda_torch_missing()
        if why is not None:
            return None, why, False  # nothing to run it on: not worth a warning
    try:
        module = importlib.import_module(ext.module)
    except ImportError as exc:
        return None, f"is not importable ({exc})", True
    found = getattr(module, "KERNEL_API", None)
    if found != ext.api_version:
        return (
            None,
            f"is a stale build (KERNEL_API {found}, this checkout needs {ext.api_version})",
            True,
        )
    missing = [name for name in ext.symbols if not hasattr(module, name)]
    if missing:
        return None, f"is a stale build (it has no {', '.join(missing)})", True
    if ext.probe is not None:
        try:
            getattr(module, ext.probe)()
        except Exception as exc:  # any failure of the probe means the module cannot run
            return None, f"is unusable ({ext.probe}() failed: {exc})", True
    return module, None, False


@functools.lru_cache(maxsize=None)
def _load(ext: Extension) -> Tuple[Optional[ModuleType], Optional[str]]:
    module, why, warn = _try_load(ext)
    if why is not None:
        log = logger.warning if warn else logger.debug
        log(
            "%s %s; %s use the slower reference implementation. (Re)build it with %s.",
            ext.module,
            why,
            ext.accelerates,
            ext.build,
        )
    return module, why


def load(ext: ExtensionLike) -> Optional[ModuleType]:
    """The compiled module of `ext` when it is usable, else None.

    Cached per process: the import, the API-version and symbol checks run once, and a module that
    cannot be used is reported by one logged warning (why, and the build command that fixes it).
    """
    return _load(_extension(ext))[0]


def available(ext: ExtensionLike) -> bool:
    """Whether the compiled module of `ext` is built, current and usable in this process."""
    return load(ext) is not None


def unavailable_reason(ext: ExtensionLike) -> Optional[str]:
    """Why the compiled module of `ext` cannot be used (e.g. "is not importable (...)"), or None
    when it can."""
    return _load(_extension(ext))[1]


def unavailable_message(ext: ExtensionLike, reason: Optional[str] = None) -> str:
    """The error of backend="kernel" for an unusable `ext`: what is missing, why, and the fix."""
    ext = _extension(ext)
    why = reason if reason is not None else unavailable_reason(ext)
    return (
        f"backend='kernel' requested but there is no {ext.kernel}: {ext.module} {why}. (Re)build "
        f"it with {ext.build}, or use backend='auto' / 'reference' (or ${BACKEND_ENV})."
    )


def resolve(ext: ExtensionLike, backend: Optional[str]) -> Optional[ModuleType]:
    """The compiled module to run for `backend`, or None to run the reference.

    "auto": the module when usable (else None, after one warning per process); "kernel": the
    module, or KernelUnavailableError with the reason and the build command; "reference": None,
    without loading anything; None: the value of BACKEND_ENV (default "auto").
    """
    ext = _extension(ext)
    name = resolve_backend(backend)
    if name == "reference":
        return None
    module = load(ext)
    if module is None and name == "kernel":
        raise KernelUnavailableError(unavailable_message(ext))
    return module


def active_backend(ext: ExtensionLike, backend: Optional[str] = None) -> str:
    """What an op of `ext` called with `backend` runs: "kernel" or "reference" (the same
    resolution as `resolve`, so backend="kernel" without the module raises)."""
    return "kernel" if resolve(ext, backend) is not None else "reference"


def status() -> Dict[str, Optional[str]]:
    """{module name: None when usable, else why not} for every extension (loads them)."""
    return {ext.module: unavailable_reason(ext) for ext in EXTENSIONS}


def reset() -> None:
    """Forget the loaded modules and logged warnings (tests that hide or fake an extension)."""
    _load.cache_clear()

"""megatron/core/kernels.py: loading of compiled extensions (stale builds, one warning, the fix in
the message), the backend vocabulary and its environment variable, and the rule that no other
module imports a compiled extension."""

import ast
import importlib.util
import logging
import pathlib
import runpy
import sys
import types

import numpy as np
import pytest

from megatron.core import kernels
from megatron.core.curriculum import metrics_kernels
from megatron.core.datasets import helpers
from megatron.core.datasets.token_pieces import TokenPieces
from tests.kernel_parity import extension_hidden

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
FAKE = kernels.Extension(
    module="megatron_test_fake_kernels",
    api_version=3,
    kernel="fake test kernel",
    accelerates="the fake test op",
    symbols=("twice",),
)


@pytest.fixture(autouse=True)
def default_backend(monkeypatch):
    """These tests pass backend=None for "auto": an exported MEGATRON_KERNEL_BACKEND must not
    change what they test (the variable's own test sets it)."""
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)


@pytest.fixture
def fake_modules(monkeypatch):
    """install(name, **attributes): puts a fake compiled module in sys.modules; everything is
    restored (and the loader cache cleared) after the test."""

    def install(name, **attributes):
        module = types.ModuleType(name)
        for key, value in attributes.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
        kernels.reset()
        return module

    kernels.reset()
    yield install
    monkeypatch.undo()
    kernels.reset()


def fake_op(x, backend=None):
    """An op dispatching like the library's: the kernel doubles, the reference too."""
    module = kernels.resolve(FAKE, backend)
    if module is None:
        return 2 * x
    return module.twice(x)


def warnings_of(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_current_module_is_used(fake_modules):
    fake_modules(FAKE.module, KERNEL_API=3, twice=lambda x: ("kernel", 2 * x))
    assert kernels.available(FAKE)
    assert kernels.unavailable_reason(FAKE) is None
    assert fake_op(4) == ("kernel", 8) and fake_op(4, backend="kernel") == ("kernel", 8)
    assert fake_op(4, backend="reference") == 8
    assert kernels.active_backend(FAKE) == "kernel"
    assert kernels.active_backend(FAKE, "reference") == "reference"


@pytest.mark.parametrize(
    "attributes, why",
    [
        (dict(KERNEL_API=2, twice=abs), "stale build (KERNEL_API 2, this checkout needs 3)"),
        (dict(twice=abs), "stale build (KERNEL_API None"),
        (dict(KERNEL_API=3), "stale build (it has no twice)"),
    ],
)
def test_stale_module_falls_back_once_under_auto_and_raises_under_kernel(
    fake_modules, caplog, attributes, why
):
    fake_modules(FAKE.module, **attributes)
    with caplog.at_level(logging.WARNING, logger="megatron.core.kernels"):
        assert fake_op(5) == 10 and fake_op(6, backend="auto") == 12
        assert not kernels.available(FAKE)
    warned = warnings_of(caplog, FAKE.module)
    assert len(warned) == 1  # one warning per process, however many calls
    message = warned[0].getMessage()
    assert why in message and "build_ext --inplace" in message and "the fake test op" in message
    with pytest.raises(kernels.KernelUnavailableError, match="stale build") as info:
        fake_op(5, backend="kernel")
    assert isinstance(info.value, ImportError) and isinstance(info.value, RuntimeError)
    assert "pip install -e ." in str(info.value) and "build_ext --inplace" in str(info.value)
    assert "fake test kernel" in str(info.value)
    assert kernels.active_backend(FAKE, "auto") == "reference"
    assert len(warnings_of(caplog, FAKE.module)) == 1


def test_missing_module_and_reference_backend_do_not_load(fake_modules, caplog):
    with caplog.at_level(logging.WARNING, logger="megatron.core.kernels"):
        assert fake_op(1, backend="reference") == 2
        assert not warnings_of(caplog, FAKE.module)  # "reference" never tries the import
        assert fake_op(1) == 2
    assert len(warnings_of(caplog, "is not importable")) == 1
    with pytest.raises(ImportError, match="is not importable"):
        fake_op(1, backend="kernel")
    assert set(kernels.status()) == {ext.module for ext in kernels.EXTENSIONS}


def test_failing_probe_and_cuda_only_extensions(fake_modules, monkeypatch, caplog):
    def broken():
        raise RuntimeError("driver too old")

    probed = kernels.Extension(
        module=FAKE.module, api_version=3, kernel="k", accelerates="a", probe="probe"
    )
    fake_modules(FAKE.module, KERNEL_API=3, probe=broken)
    with caplog.at_level(logging.WARNING, logger="megatron.core.kernels"):
        assert kernels.load(probed) is None
    assert "probe() failed: driver too old" in kernels.unavailable_reason(probed)
    assert len(warnings_of(caplog, "driver too old")) == 1

    cuda_only = kernels.Extension(
        module=FAKE.module + "_cuda",
        api_version=3,
        kernel="k",
        accelerates="a",
        needs_cuda_torch=True,
    )
    fake_modules(cuda_only.module, KERNEL_API=3)
    monkeypatch.setattr(kernels, "_cuda_torch_missing", lambda: "cannot be used: CPU torch")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="megatron.core.kernels"):
        assert kernels.load(cuda_only) is None
    assert not warnings_of(caplog, cuda_only.module)  # nothing to run it on: no warning
    with pytest.raises(RuntimeError, match="CPU torch"):
        kernels.resolve(cuda_only, "kernel")


def test_backend_strings_are_validated():
    for bad in ("cpp", "python", "torch", "cuda", ""):
        with pytest.raises(ValueError, match="auto, kernel, reference") as info:
            kernels.resolve_backend(bad)
        assert "backend" in str(info.value)
    helpers_name = kernels.DATASET_HELPERS.module  # extensions may be named by module too
    assert kernels.available(helpers_name) == kernels.available(kernels.DATASET_HELPERS)
    with pytest.raises(ValueError, match="unknown compiled extension"):
        kernels.load("megatron.core.no_such_extension")
    assert [kernels.resolve_backend(b) for b in kernels.BACKENDS] == list(kernels.BACKENDS)


def test_environment_variable_decides_when_backend_is_none(fake_modules, monkeypatch):
    fake_modules(FAKE.module, KERNEL_API=3, twice=lambda x: ("kernel", 2 * x))
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    assert kernels.resolve_backend(None) == "auto" and fake_op(1) == ("kernel", 2)
    monkeypatch.setenv(kernels.BACKEND_ENV, "reference")
    assert kernels.resolve_backend(None) == "reference"
    assert fake_op(1) == 2 and kernels.active_backend(FAKE) == "reference"
    assert fake_op(1, backend="kernel") == ("kernel", 2)  # an explicit argument wins
    monkeypatch.setenv(kernels.BACKEND_ENV, "kernel")
    assert fake_op(1) == ("kernel", 2)
    monkeypatch.setenv(kernels.BACKEND_ENV, "python")
    with pytest.raises(ValueError, match=kernels.BACKEND_ENV) as info:
        fake_op(1)
    assert "auto, kernel, reference" in str(info.value)


def test_library_ops_share_one_stale_warning(fake_modules, caplog):
    """A stale helpers_cpp: the index builders and the metric kernels fall back with one warning
    between them under "auto" and raise under "kernel"."""
    fake_modules(kernels.DATASET_HELPERS.module, KERNEL_API=0)
    sizes, doc_idx = np.array([4, 9, 3], np.int32), np.array([2, 0, 1], np.int32)
    pieces = TokenPieces.from_samples([np.array([1, 2, 2]), np.array([3])])
    with caplog.at_level(logging.WARNING, logger="megatron.core.kernels"):
        got = helpers.build_sample_idx(sizes, doc_idx, 3, 1, 16)
        helpers.build_blending_indices(np.array([0.2, 0.8]), 20)
        counts = metrics_kernels.token_bincount(pieces, 4)
    assert len(warnings_of(caplog, "stale build")) == 1
    np.testing.assert_array_equal(got, helpers.build_sample_idx_reference(sizes, doc_idx, 3, 1, 16))
    assert counts.tolist() == [0, 1, 2, 1]
    with pytest.raises(kernels.KernelUnavailableError, match="KERNEL_API 0.*build_ext"):
        metrics_kernels.token_table_sums(pieces, np.ones(4), backend="kernel")
    with pytest.raises(ImportError, match="pip install -e ."):
        helpers.build_mapping(np.array([0, 3]), sizes, 1, 10, 8, 0.0, 0, 1, backend="kernel")


def test_extension_hidden_restores_the_module():
    ext = kernels.DATASET_HELPERS
    before = kernels.available(ext)
    with extension_hidden(ext):
        assert not kernels.available(ext)
        assert "is not importable" in kernels.unavailable_reason(ext)
    assert kernels.available(ext) == before


def test_every_extension_of_the_build_is_described():
    config = runpy.run_path(str(REPO_ROOT / "csrc" / "build_config.py"))
    built = {e["name"] for e in config["CPP_EXTENSIONS"] + config["CUDA_EXTENSIONS"]}
    assert built == {ext.module for ext in kernels.EXTENSIONS}
    for ext in kernels.EXTENSIONS:
        assert ext.api_version >= 1 and ext.symbols and ext.kernel and ext.accelerates


@pytest.mark.parametrize(
    "ext", [e for e in kernels.EXTENSIONS if not e.needs_cuda_torch], ids=lambda e: e.module
)
def test_built_extensions_are_current(ext):
    """A compiled module on disk must match this checkout (else: rebuild it)."""
    if importlib.util.find_spec(ext.module) is None:
        pytest.skip(f"{ext.module} is not built")
    assert kernels.unavailable_reason(ext) is None, kernels.unavailable_message(ext)


def test_only_kernels_py_imports_compiled_modules():
    names = {ext.module for ext in kernels.EXTENSIONS}
    short = {name.rpartition(".")[2] for name in names}
    offenders = []
    for path in sorted((REPO_ROOT / "megatron").rglob("*.py")):
        if path.name == "kernels.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                targets = [node.value] if node.value in names else []
            else:
                continue
            if any(t in names or t.rpartition(".")[2] in short for t in targets):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, "compiled extensions imported outside megatron/core/kernels.py: " + str(
        offenders
    )

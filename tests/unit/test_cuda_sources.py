"""The CUDA sources in csrc/ compile wherever a CUDA toolkit exists, GPU or not.

Compiles every .cu file of build_config.CUDA_EXTENSIONS with nvcc (the flags setup.py uses, for
sm_80 and sm_90), the pybind11 bindings with the host compiler, links the module against the
static CUDA runtime and imports it in a subprocess. Skipped when no toolkit is found.
"""

import os
import pathlib
import runpy
import subprocess
import sys
import sysconfig

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_CONFIG = runpy.run_path(str(REPO_ROOT / "csrc" / "build_config.py"))
CUDA_HOME = BUILD_CONFIG["find_cuda_home"]()

needs_nvcc = pytest.mark.skipif(CUDA_HOME is None, reason="no CUDA toolkit (nvcc) found")


def _run_all(commands):
    """Runs the commands concurrently; returns their CompletedProcess-like (cmd, rc, output)."""
    pipe = dict(cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    procs = [(cmd, subprocess.Popen(cmd, **pipe)) for cmd in commands]
    return [(cmd, p.wait(), p.stdout.read().decode(errors="replace")) for cmd, p in procs]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{extension name: (module .so path, [compile results])} for every CUDA extension."""
    import pybind11

    out = tmp_path_factory.mktemp("cuda_build")
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    arch = BUILD_CONFIG["cuda_arch_flags"]("8.0;9.0")
    cxx = os.environ.get("CXX", "g++")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    results = {}
    for spec in BUILD_CONFIG["CUDA_EXTENSIONS"]:
        short = spec["name"].rsplit(".", 1)[-1]
        includes = [f"-I{REPO_ROOT / d}" for d in spec["include_dirs"]]
        commands, objects = [], []
        for source in spec["cuda_sources"]:
            objects.append(str(out / (pathlib.Path(source).stem + ".cu.o")))
            commands.append(
                [
                    nvcc,
                    "-c",
                    source,
                    "-o",
                    objects[-1],
                    *BUILD_CONFIG["NVCC_FLAGS"],
                    *arch,
                    *includes,
                ]
            )
        for source in spec["sources"]:
            objects.append(str(out / (pathlib.Path(source).stem + ".o")))
            commands.append(
                [
                    cxx,
                    "-c",
                    source,
                    "-o",
                    objects[-1],
                    "-fPIC",
                    "-fvisibility=hidden",
                    *BUILD_CONFIG["CXX_FLAGS"],
                    *includes,
                    f"-I{pybind11.get_include()}",
                    f"-I{sysconfig.get_paths()['include']}",
                ]
            )
        compiled = _run_all(commands)
        library = str(out / (short + suffix))
        link = [
            cxx,
            "-shared",
            *objects,
            "-o",
            library,
            f"-L{BUILD_CONFIG['cuda_library_dir'](CUDA_HOME)}",
            *(f"-l{lib}" for lib in BUILD_CONFIG["CUDA_LIBRARIES"]),
        ]
        if all(rc == 0 for _, rc, _ in compiled):
            compiled += _run_all([link])
        results[spec["name"]] = (library, compiled)
    return results


@needs_nvcc
@pytest.mark.slow  # nvcc for two architectures + a pybind11 translation unit: ~25 s of CPU
def test_every_cuda_source_compiles_and_links(built):
    assert built, "build_config.CUDA_EXTENSIONS lists no extension"
    for name, (library, compiled) in built.items():
        for cmd, rc, output in compiled:
            assert rc == 0, f"{name}: `{' '.join(cmd)}` failed:\n{output}"
        assert os.path.isfile(library)


@needs_nvcc
@pytest.mark.slow
def test_cuda_module_imports_without_a_gpu(built):
    from megatron.core import kernels

    for name, (library, _) in built.items():
        short = name.rsplit(".", 1)[-1]
        ext = next(e for e in kernels.EXTENSIONS if e.module == name)  # what the loader checks
        probe = (
            f"import {short} as m\n"
            f"assert m.KERNEL_API == {ext.api_version} and m.MAX_SORT_LENGTH >= 2048\n"
            f"missing = [s for s in {ext.symbols!r} if not hasattr(m, s)]\n"
            "assert not missing, missing\n"
            "try:\n    print('devices', m.device_count())\n"
            "except RuntimeError as exc:\n    print('no usable device:', exc)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=os.path.dirname(library),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "devices" in result.stdout or "no usable device" in result.stdout


def test_native_sources_include_no_torch_headers():
    """The kernels build without torch (isolated env) and the bindings without CUDA headers."""
    sources = sorted((REPO_ROOT / "csrc" / "random_ltd").iterdir())
    assert any(p.suffix == ".cu" for p in sources)
    for path in sources:
        includes = [line for line in path.read_text().splitlines() if line.startswith("#include")]
        assert not [line for line in includes if "torch" in line or "ATen" in line], path
        if path.suffix != ".cu":
            assert not [line for line in includes if "<cuda" in line], path

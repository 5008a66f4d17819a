"""Build script: installs the `megatron` package and compiles the native helpers in csrc/.

The list of native sources lives in csrc/build_config.py (one source of truth). A machine without
a working C++ compiler fails here, at install time, with the command that fixes it; set
MEGATRON_SKIP_NATIVE=1 to install anyway and run on the (slower) pure-Python reference paths.

CUDA extensions (build_config.CUDA_EXTENSIONS) are optional: they are built only when a CUDA
toolkit is found (build_config.find_cuda_home) and the installed torch is a CUDA build, which in
pip's isolated build environment means `pip install --no-build-isolation -e .`; a failed CUDA build
is a warning, never an install failure. MEGATRON_BUILD_CUDA=0 skips them, =1 builds them without
checking torch. Architectures: MEGATRON_CUDA_ARCHS or TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX").
"""

import os
import runpy
import shutil
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_CONFIG = runpy.run_path(os.path.join(ROOT, "csrc", "build_config.py"))
SKIP_NATIVE = os.environ.get("MEGATRON_SKIP_NATIVE", "0") == "1"

NO_COMPILER_HELP = (
    "Building the native dataset helpers in csrc/ needs a C++17 compiler, and {what}.\n"
    "  Fix: install one (Debian/Ubuntu: `apt-get install g++`; conda: `conda install "
    "gxx_linux-64`)\n"
    "  and re-run `pip install -e .`; or set MEGATRON_SKIP_NATIVE=1 to install without them and\n"
    "  run on the slower pure-Python reference implementations."
)


def _cpp_extensions():
    if SKIP_NATIVE:
        return []
    from pybind11.setup_helpers import Pybind11Extension

    exts = []
    for spec in BUILD_CONFIG["CPP_EXTENSIONS"]:
        compile_args = list(BUILD_CONFIG["CXX_FLAGS"])
        link_args = []
        if spec.get("openmp"):
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
        exts.append(
            Pybind11Extension(
                spec["name"],
                sources=spec["sources"],
                include_dirs=spec.get("include_dirs", []),
                extra_compile_args=compile_args,
                extra_link_args=link_args,
                cxx_std=17,
            )
        )
    return exts


def _torch_has_cuda():
    """(whether the importable torch is a CUDA build, why not)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not importable here (pip's isolated build env?)"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    return True, ""


def _cuda_extensions():
    force = os.environ.get("MEGATRON_BUILD_CUDA")
    if SKIP_NATIVE or force == "0" or not BUILD_CONFIG["CUDA_EXTENSIONS"]:
        return []
    cuda_home = BUILD_CONFIG["find_cuda_home"]()
    if cuda_home is None:
        ok, why = False, "no CUDA toolkit found (set CUDA_HOME)"
    else:
        ok, why = (True, "") if force == "1" else _torch_has_cuda()
    if not ok:
        print(
            f"setup.py: skipping the optional CUDA kernels: {why}; torch reference paths are used "
            "for CUDA tensors. Build them with `pip install --no-build-isolation -e .` on a "
            "machine with nvcc and a CUDA torch, or MEGATRON_BUILD_CUDA=1.",
            file=sys.stderr,
        )
        return []
    from pybind11.setup_helpers import Pybind11Extension

    lib_dir = BUILD_CONFIG["cuda_library_dir"](cuda_home)
    exts = []
    for spec in BUILD_CONFIG["CUDA_EXTENSIONS"]:
        ext = Pybind11Extension(
            spec["name"],
            sources=spec["sources"],
            include_dirs=spec.get("include_dirs", []),
            extra_compile_args=list(BUILD_CONFIG["CXX_FLAGS"]),
            library_dirs=[lib_dir] if lib_dir else [],
            libraries=list(BUILD_CONFIG["CUDA_LIBRARIES"]),
            cxx_std=17,
        )
        ext.optional = True  # a failed CUDA build warns; the torch reference stays usable
        ext.cuda_sources = spec["cuda_sources"]
        ext.cuda_home = cuda_home
        exts.append(ext)
    return exts


class BuildExtWithClearErrors(build_ext):
    """build_ext that turns a missing or broken compiler into one actionable message."""

    def build_extensions(self):
        compiler = getattr(self.compiler, "compiler_cxx", None) or getattr(
            self.compiler, "compiler_so", None
        )
        if compiler and shutil.which(compiler[0]) is None:
            raise SystemExit(NO_COMPILER_HELP.format(what=f"`{compiler[0]}` was not found on PATH"))
        try:
            super().build_extensions()
        except Exception as exc:  # CompileError / LinkError / DistutilsExecError
            msg = NO_COMPILER_HELP.format(what=f"the build failed: {exc}")
            print(msg, file=sys.stderr)
            raise

    def build_extension(self, ext):
        cuda_sources = getattr(ext, "cuda_sources", None)
        if cuda_sources:
            ext.extra_objects = list(ext.extra_objects or []) + self._nvcc_objects(ext)
        super().build_extension(ext)

    def _nvcc_objects(self, ext):
        """nvcc-compiles ext.cuda_sources into build_temp objects (CompileError on failure)."""
        nvcc = os.path.join(ext.cuda_home, "bin", "nvcc")
        flags = list(BUILD_CONFIG["NVCC_FLAGS"]) + BUILD_CONFIG["cuda_arch_flags"]()
        includes = [f"-I{d}" for d in ext.include_dirs]
        headers = [
            os.path.join(d, name)
            for d in ext.include_dirs
            if os.path.isdir(d)
            for name in os.listdir(d)
            if name.endswith((".h", ".cuh"))
        ]
        objects = []
        for source in ext.cuda_sources:
            obj = os.path.join(self.build_temp, "cuda", os.path.splitext(source)[0] + ".o")
            objects.append(obj)
            if not self.force and _up_to_date(obj, [source] + headers):
                continue
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            cmd = [nvcc, "-c", source, "-o", obj] + flags + includes
            print(" ".join(cmd), file=sys.stderr)
            if subprocess.run(cmd).returncode != 0:
                raise CompileError(f"nvcc failed on {source}: {' '.join(cmd)}")
        return objects


def _up_to_date(target, sources):
    if not os.path.exists(target):
        return False
    return all(os.path.getmtime(target) >= os.path.getmtime(src) for src in sources)


# The lm-evaluation-harness startup hook: a .pth file at the root of site-packages that imports
# megatron_de_lm_eval_hook.py (see that module), so that `lm_eval --model megatron_de` works.
LM_EVAL_PTH = "megatron_de_lm_eval.pth"


class BuildPyWithStartupHook(build_py):
    """build_py that also puts LM_EVAL_PTH at the root of the build (so of the wheel)."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(ROOT, LM_EVAL_PTH), os.path.join(self.build_lib, LM_EVAL_PTH))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs + [os.path.join(self.build_lib, LM_EVAL_PTH)]


class _StrategyWithStartupHook:
    """Wraps setuptools' editable-install strategy: writes LM_EVAL_PTH into the editable wheel
    too (the strategies write only their own .pth / finder files, none of build_py's)."""

    def __init__(self, strategy):
        self._strategy = strategy

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self._strategy.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self._strategy(wheel, files, mapping)
        with open(os.path.join(ROOT, LM_EVAL_PTH), encoding="utf-8") as f:
            wheel.writestr(LM_EVAL_PTH, f.read())


def _cmdclass():
    cmds = {"build_ext": BuildExtWithClearErrors, "build_py": BuildPyWithStartupHook}
    try:  # setuptools >= 64 (PEP 660 editable installs)
        from setuptools.command.editable_wheel import editable_wheel
    except ImportError:
        return cmds

    class EditableWheelWithStartupHook(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _StrategyWithStartupHook(super()._select_strategy(*args, **kwargs))

    cmds["editable_wheel"] = EditableWheelWithStartupHook
    return cmds


setup(
    packages=find_packages(include=["megatron", "megatron.*"]),
    py_modules=["megatron_de_lm_eval_hook"],
    ext_modules=_cpp_extensions() + _cuda_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)

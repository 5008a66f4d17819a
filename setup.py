"""Build script: installs the `megatron` package and compiles the native helpers in csrc/.

The list of native sources lives in csrc/build_config.py (one source of truth). A machine without
a working C++ compiler fails here, at install time, with the command that fixes it; set
MEGATRON_SKIP_NATIVE=1 to install anyway and run on the (slower) pure-Python reference paths.
"""

import os
import runpy
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_CONFIG = runpy.run_path(os.path.join(ROOT, "csrc", "build_config.py"))
SKIP_NATIVE = os.environ.get("MEGATRON_SKIP_NATIVE", "0") == "1"

NO_COMPILER_HELP = (
    "Building the native dataset helpers in csrc/ needs a C++17 compiler, and {what}.\n"
    "  Fix: install one (Debian/Ubuntu: `apt-get install g++`; conda: `conda install gxx_linux-64`)\n"
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


setup(
    packages=find_packages(include=["megatron", "megatron.*"]),
    ext_modules=_cpp_extensions(),
    cmdclass={"build_ext": BuildExtWithClearErrors},
    zip_safe=False,
)

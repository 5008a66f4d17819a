"""The one list of native sources, read by setup.py (and by tests that compile them directly).

Each entry names a Python extension module and the C++ sources it is built from. Keep this file
free of imports beyond the standard library: it is executed inside pip's isolated build
environment, where neither torch nor the `megatron` package is importable.
"""

import os

CSRC = os.path.dirname(os.path.abspath(__file__))

#: C++ extensions built with pybind11 at install time. They take raw pointers / numpy buffers and
#: never include torch headers, so they build in an isolated environment and do not depend on the
#: torch ABI. Paths are relative to the repository root.
CPP_EXTENSIONS = [
    {
        "name": "megatron.core.datasets.helpers_cpp",
        "sources": [
            "csrc/data_helpers/module.cpp",
            "csrc/data_helpers/gpt_helpers.cpp",
            "csrc/data_helpers/blending.cpp",
            "csrc/data_helpers/bert_helpers.cpp",
            "csrc/data_helpers/metric_helpers.cpp",
        ],
        "include_dirs": ["csrc/data_helpers"],
        "openmp": False,
    },
    {
        # Random-LTD token gather / scatter / mask gather / sort on CPU tensors (raw addresses).
        "name": "megatron.core.random_ltd.token_ops_cpp",
        "sources": [
            "csrc/random_ltd/module_cpu.cpp",
            "csrc/random_ltd/token_ops_cpu.cpp",
        ],
        "include_dirs": ["csrc/random_ltd"],
        "openmp": True,
    },
]

#: Flags shared by every C++ extension.
CXX_FLAGS = ["-O3", "-std=c++17", "-Wall", "-Wno-sign-compare"]

#: CUDA extensions: built only where a CUDA toolkit (nvcc) and a CUDA-enabled torch are both present
#: (setup.py decides; MEGATRON_BUILD_CUDA=0/1 forces), never required. Each "cuda_sources" file is
#: compiled by nvcc into an object linked with the host "sources" (a pybind11 binding built by the
#: host compiler; neither includes torch headers) and the static CUDA runtime.
CUDA_EXTENSIONS = [
    {
        "name": "megatron.core.random_ltd.token_ops_cuda",
        "sources": ["csrc/random_ltd/module_cuda.cpp"],
        "cuda_sources": ["csrc/random_ltd/token_ops_cuda.cu"],
        "include_dirs": ["csrc/random_ltd"],
    },
]

#: nvcc flags for every .cu file; the -gencode flags come from cuda_arch_flags().
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC"]

#: Libraries every CUDA extension links: the static CUDA runtime, so the module does not depend on
#: which libcudart.so (if any) the installed torch wheel ships.
CUDA_LIBRARIES = ["cudart_static", "dl", "rt", "pthread"]

#: GPU architectures when neither MEGATRON_CUDA_ARCHS nor TORCH_CUDA_ARCH_LIST is set (same
#: syntax): A100 and H100 machine code, plus H100 PTX that the driver compiles for newer GPUs.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def cuda_arch_flags(arch_list=None):
    """nvcc -gencode flags for an arch list such as "8.0;9.0+PTX" (';' or ' ' separated).

    Without an argument the list comes from MEGATRON_CUDA_ARCHS, then TORCH_CUDA_ARCH_LIST, then
    DEFAULT_CUDA_ARCHS. "+PTX" also embeds PTX for that architecture; suffixes such as "9.0a" are
    kept ("sm_90a").
    """
    if arch_list is None:
        arch_list = (
            os.environ.get("MEGATRON_CUDA_ARCHS")
            or os.environ.get("TORCH_CUDA_ARCH_LIST")
            or DEFAULT_CUDA_ARCHS
        )
    flags = []
    for entry in arch_list.replace(";", " ").split():
        ptx = entry.upper().endswith("+PTX")
        number = entry[: -len("+PTX")] if ptx else entry
        number = number.replace(".", "")
        if not number[:2].isdigit():
            raise ValueError(
                f"CUDA architecture {entry!r} in {arch_list!r} is not like '8.0' or '9.0+PTX'; fix "
                "MEGATRON_CUDA_ARCHS / TORCH_CUDA_ARCH_LIST"
            )
        flags += ["-gencode", f"arch=compute_{number},code=sm_{number}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{number},code=compute_{number}"]
    return flags


def find_cuda_home():
    """The CUDA toolkit root (has bin/nvcc and include/cuda_runtime.h), or None.

    Tries $CUDA_HOME, $CUDA_PATH, the parent of the `nvcc` on PATH, then /usr/local/cuda.
    """
    import shutil

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if (
            home
            and os.path.isfile(os.path.join(home, "bin", "nvcc"))
            and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))
        ):
            return home
    return None


def cuda_library_dir(cuda_home):
    """The folder of libcudart_static.a under a CUDA toolkit root, or None."""
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
        folder = os.path.join(cuda_home, sub)
        if os.path.isfile(os.path.join(folder, "libcudart_static.a")):
            return folder
    return None

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
        ],
        "include_dirs": ["csrc/data_helpers"],
        "openmp": False,
    },
]

#: Flags shared by every C++ extension.
CXX_FLAGS = ["-O3", "-std=c++17", "-Wall", "-Wno-sign-compare"]

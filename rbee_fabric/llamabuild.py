"""Which backend the installed llama-cpp-python was built for.

Dependency-free on purpose (the hive runs it in every resource report).
`rbee nodes check` applies the same rule (`backend_from_libs`) to the file
names its probe lists on a node.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

BACKENDS = ("cuda", "metal", "vulkan", "hip", "sycl")


def backend_from_libs(names: Iterable[str]) -> str:
    """The backend named by llama-cpp-python's shared libraries (libggml-cuda.so, ...), else cpu."""
    joined = " ".join(names).lower()
    return next((b for b in BACKENDS if f"ggml-{b}" in joined), "cpu")


def llama_build_backend() -> str:
    """The backend llama-cpp-python was built with: cuda, metal, vulkan, ... or cpu.

    Read from the shared libraries it ships (libggml-cuda.so, ...), without
    importing llama_cpp, which would load the whole library (~0.3 s).
    """
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return "missing"
    lib_dir = os.path.join(os.path.dirname(spec.origin), "lib")
    return backend_from_libs(os.listdir(lib_dir) if os.path.isdir(lib_dir) else [])

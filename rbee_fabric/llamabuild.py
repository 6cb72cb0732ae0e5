"""Which backend the installed llama-cpp-python was built for.

Dependency-free on purpose: `rbee nodes check` runs it on every node in a
fresh interpreter, where importing pydantic or llama_cpp would cost more than
the whole check.
"""

from __future__ import annotations

import os


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
    names = " ".join(os.listdir(lib_dir)).lower() if os.path.isdir(lib_dir) else ""
    for backend in ("cuda", "metal", "vulkan", "hip", "sycl"):
        if f"ggml-{backend}" in names:
            return backend
    return "cpu"

"""rbee-fabric: run local LLMs across the machines of a home network."""

import sys

__version__ = "0.1.0"
__all__ = ["__version__"]

# `import httpx` also imports httpx's command-line client (click, rich, pygments:
# ~0.15 s) when those are installed, as they are here (encode/httpx#3547). No
# rbee program runs that client: httpx falls back to a stub when it cannot import it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

"""rbee-fabric: run local LLMs across the machines of a home network."""

__version__ = "0.1.0"
__all__ = ["__version__"]

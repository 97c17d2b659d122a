"""The model side of the engine: loading Janus-Pro, understanding, and batched text-to-image.

Imports torch and transformers: only worker processes, CLI tools, tests and benchmarks import this.
"""

from janus_engine.runtime.janus_runtime import JanusRuntime

__all__ = ["JanusRuntime"]

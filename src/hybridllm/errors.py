"""One base for every error hybridllm raises on purpose. Each carries a one-line message that names
the place (file and line, field, model, setting); ``except HybridLLMError`` catches them all, and the
CLI prints them as ``error: ...``. Each also derives from the builtin it refines (``ValueError`` for
bad input, ``RuntimeError`` for a failing resource, ``ImportError`` for a missing extra), so older
``except ValueError`` code still works.

The tree (each layer's own errors live beside the code that raises them; all are exported from
:mod:`hybridllm`)::

    HybridLLMError
    ├── UsageError            an argument out of its domain (an unknown label type, --folds 1, a bad SPEC)
    ├── MissingExtraError     a feature whose dependencies the plain install leaves out
    ├── TableError            a routing table (file, line, field)
    ├── RegistryError         the models file
    ├── ArtifactError         a router artifact on disk (RouterNotFoundError: none where one was named)
    ├── CalibrationError      a knob the calibration cannot answer
    ├── EncoderError          an encoder that cannot be found or loaded
    ├── BackendError          an upstream model call that failed for good (StreamBroke: after it began)
    ├── JudgeError            an LLM judge that gave no verdict line with its call's nonce
    ├── ModelError            a local model package that cannot be assembled
    ├── JournalMismatch, CollectionExists   a collection journal that does not fit the command
    ├── EngineError           the Ray engine
    ├── ServeConfigError, KnobError         serve settings; a request's routing name or knob
    └── RequestError          a request the proxy refuses with an OpenAI-shaped 4xx
"""

from __future__ import annotations

import importlib
from types import ModuleType


class HybridLLMError(Exception):
    """Base class of hybridllm's errors."""


class UsageError(HybridLLMError, ValueError):
    """An argument is outside what the function accepts; the message says what it expects."""


class MissingExtraError(HybridLLMError, ImportError):
    """A feature needs packages that the plain ``pip install hybridllm`` leaves out."""


#: the torch the extras that pull it in are installed with: unpinned, pip resolves a CUDA build of
#: several GB even on a machine without a GPU (docs/install.md)
TORCH_PIN = "torch==2.13.0"
_WITH_TORCH = frozenset({"train"})


def install_command(extra: str) -> str:
    """The command that installs ``extra``, from PyPI and from a checkout of the repository."""
    torch = f"{TORCH_PIN} " if extra in _WITH_TORCH else ""
    return f"pip install {torch}'hybridllm[{extra}]' (from a checkout: pip install {torch}-e '.[{extra}]')"


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail with one line naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        root = module.split(".")[0]
        raise MissingExtraError(
            f"{purpose} needs {root}, which the plain install leaves out: {install_command(extra)}"
        ) from None

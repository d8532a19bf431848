"""hybridllm: route each LLM query to the cheapest model that will answer it well enough, predicted
from the query alone.

The public API is what a user of the library needs: load a router and route (:class:`Router`), fit
one in memory and save it (:func:`fit_router`, any number of models; a pair is a fleet of two),
check it on held-out folds (:func:`cross_validate`), read or write tables, and catch any of its
errors (:class:`HybridLLMError` and the tree under it, :mod:`hybridllm.errors`).

The package is layered, each subpackage importing only those below it (``docs/architecture.md``,
checked by import-linter): ``tables`` → ``features`` → ``backends`` → ``stages`` → ``routing`` →
``evaluate`` → ``model`` → ``serve`` and ``engine`` → ``cli``.
"""

from typing import Any

from hybridllm.features.base import EncoderError
from hybridllm.model.artifact import ArtifactError, RouterNotFoundError
from hybridllm.model.crossval import CrossValResult, cross_validate
from hybridllm.model.fit import FittedRouter, TrainOptions, fit_router, train_router
from hybridllm.model.router import Decision, Router, default_router_dir, load_router
from hybridllm.routing.policy import CalibrationError
from hybridllm.tables.format import TableError, read_table, split_rows, write_table

from ._version import __version__
from .errors import HybridLLMError, MissingExtraError, UsageError

#: errors of the layers `import hybridllm` does not load (the server, the backends, the Ray engine,
#: the models file: FastAPI, aiohttp, pydantic), imported on first use
_LAZY = {
    "BackendError": "hybridllm.backends", "StreamBroke": "hybridllm.backends",
    "ModelError": "hybridllm.backends.packages",
    "EngineError": "hybridllm.engine.shards", "CollectionExists": "hybridllm.stages.journal",
    "JournalMismatch": "hybridllm.stages.journal", "RegistryError": "hybridllm.tables.registry",
    "KnobError": "hybridllm.serve.knobs", "RequestError": "hybridllm.serve.errors",
    "ServeConfigError": "hybridllm.serve.errors", "JudgeError": "hybridllm.stages.judge",
    "ConversationError": "hybridllm.routing.conversation", "CapabilityError": "hybridllm.routing.capabilities",
    "ReloadError": "hybridllm.serve.reload",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib  # the lazy errors above, on first use

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybridllm' has no attribute {name!r}")


__all__ = [
    "ArtifactError",
    "BackendError",
    "CalibrationError",
    "CapabilityError",
    "CollectionExists",
    "ConversationError",
    "CrossValResult",
    "Decision",
    "EncoderError",
    "EngineError",
    "FittedRouter",
    "HybridLLMError",
    "JournalMismatch",
    "JudgeError",
    "KnobError",
    "MissingExtraError",
    "ModelError",
    "RegistryError",
    "ReloadError",
    "RequestError",
    "Router",
    "RouterNotFoundError",
    "ServeConfigError",
    "StreamBroke",
    "TableError",
    "TrainOptions",
    "UsageError",
    "__version__",
    "cross_validate",
    "default_router_dir",
    "fit_router",
    "load_router",
    "read_table",
    "split_rows",
    "train_router",
    "write_table",
]

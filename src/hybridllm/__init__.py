"""hybridllm: route each LLM query to the cheapest model that will answer it well enough, predicted
from the query alone.

The public API is what a user of the library needs: load a router and route (:class:`Router`), fit
one in memory and save it (:func:`fit_router` for two models, :func:`fit_fleet` for N), check it on
held-out folds (:func:`cross_validate`), and read or write tables. Whether appended text can steer a
router: :mod:`hybridllm.steering`. The pipeline's stage functions
(rows in, rows out) live in their modules: :mod:`hybridllm.collect`, :mod:`hybridllm.score`,
:mod:`hybridllm.labels`, :mod:`hybridllm.metrics`; the Ray engine in :mod:`hybridllm.engine`; model
backends in :mod:`hybridllm.backends`; the proxy in :mod:`hybridllm.serve`.
"""

__version__ = "0.1.0"

from .artifact import ArtifactError
from .crossval import cross_validate
from .errors import HybridLLMError
from .fleet import FittedFleet, FleetOptions, fit_fleet
from .router import Decision, Router, default_router_dir, load_router
from .table import TableError, read_table, split_rows, write_table
from .train import FittedRouter, TrainOptions, fit_router, train_router

__all__ = [
    "ArtifactError",
    "Decision",
    "FittedFleet",
    "FittedRouter",
    "FleetOptions",
    "HybridLLMError",
    "Router",
    "TableError",
    "TrainOptions",
    "__version__",
    "cross_validate",
    "default_router_dir",
    "fit_fleet",
    "fit_router",
    "load_router",
    "read_table",
    "split_rows",
    "train_router",
    "write_table",
]

"""hybridllm: route each LLM query to a small or a large model by predicting, from the query alone,
whether the small model's answer will be good enough (Hybrid LLM, Ding et al., ICLR 2024).

Pipeline: collect → score → labels → train → calibrate/evaluate → serve.
"""

__version__ = "0.1.0"

from .artifact import ArtifactError
from .calibrate import CalibrationError, calibration_table
from .collect import sample_rows
from .crossval import cross_validate
from .encoder import EmbeddingCache, EncoderError, TransformerEncoder
from .engine import RayOptions, collect_ray, featurize_ray, router_scores_ray, score_ray
from .errors import HybridLLMError
from .fleet import FittedFleet, FleetOptions, fit_fleet
from .labels import det_labels, make_labels, prob_labels, trans_labels
from .metrics import evaluate_scores, expected_quality
from .router import Decision, Router, default_router_dir, load_router
from .score import score_rows
from .stats import table_stats
from .table import TableError, read_table, select_pair, split_rows, validate_row, write_table
from .train import FittedRouter, TrainOptions, fit_router, train_router

__all__ = [
    "ArtifactError",
    "CalibrationError",
    "Decision",
    "EmbeddingCache",
    "EncoderError",
    "FittedFleet",
    "FittedRouter",
    "FleetOptions",
    "HybridLLMError",
    "RayOptions",
    "Router",
    "TableError",
    "TrainOptions",
    "TransformerEncoder",
    "__version__",
    "calibration_table",
    "collect_ray",
    "cross_validate",
    "default_router_dir",
    "det_labels",
    "evaluate_scores",
    "expected_quality",
    "featurize_ray",
    "fit_fleet",
    "fit_router",
    "load_router",
    "make_labels",
    "prob_labels",
    "read_table",
    "router_scores_ray",
    "sample_rows",
    "score_ray",
    "score_rows",
    "select_pair",
    "split_rows",
    "table_stats",
    "train_router",
    "trans_labels",
    "validate_row",
    "write_table",
]

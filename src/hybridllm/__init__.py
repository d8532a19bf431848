"""hybridllm: route each LLM query to a small or a large model by predicting, from the query alone,
whether the small model's answer will be good enough (Hybrid LLM, Ding et al., ICLR 2024).

Pipeline: collect → score → labels → train → calibrate/evaluate → serve.
"""

__version__ = "0.1.0"

from .artifact import ArtifactError  # noqa: E402
from .calibrate import CalibrationError, calibration_table  # noqa: E402
from .encoder import EmbeddingCache, EncoderError, TransformerEncoder  # noqa: E402
from .labels import det_labels, make_labels, prob_labels, trans_labels  # noqa: E402
from .metrics import evaluate_scores, expected_quality  # noqa: E402
from .router import Decision, Router, load_router  # noqa: E402
from .table import TableError, read_table, select_pair, split_rows, validate_row, write_table  # noqa: E402
from .train import TrainOptions, train_router  # noqa: E402

__all__ = [
    "ArtifactError",
    "CalibrationError",
    "Decision",
    "EmbeddingCache",
    "EncoderError",
    "Router",
    "TableError",
    "TrainOptions",
    "TransformerEncoder",
    "__version__",
    "calibration_table",
    "det_labels",
    "evaluate_scores",
    "expected_quality",
    "load_router",
    "make_labels",
    "prob_labels",
    "read_table",
    "select_pair",
    "split_rows",
    "train_router",
    "trans_labels",
    "validate_row",
    "write_table",
]

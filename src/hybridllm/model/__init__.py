"""The router model: the head (an MLP ensemble with linear and memory members), fitting it on a
table (labels, features, selection, calibration), fine-tuning an encoder, the artifact on disk
(``config.json`` + ``head.safetensors``, version-checked), :class:`Router` (load, score, decide),
cross-validation, recalibration and the evaluation of a router on a table.

May import every layer below it (evaluate, routing, stages, features, tables); never the server, the
Ray engine or the CLI. Training needs the ``train`` extra (torch, scikit-learn); loading and routing
do not.
"""

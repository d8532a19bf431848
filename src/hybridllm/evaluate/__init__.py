"""Evaluation over scores already computed: the metrics (APGR, cost advantage, quality drop), the
N-model cost–quality comparison, bootstrap intervals, the report bodies, plots and the HTML report,
table statistics and the steering check's arithmetic.

May import :mod:`hybridllm.routing`, :mod:`hybridllm.stages` (labels for table statistics),
:mod:`hybridllm.features` and :mod:`hybridllm.tables`; it never loads or trains a router itself
(:mod:`hybridllm.model` does, and hands it the scores).
"""

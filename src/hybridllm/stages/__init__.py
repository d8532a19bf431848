"""The pipeline's data stages, rows in and rows out: ``collect`` (sample responses from each model),
``score`` (judge them into qualities) and ``labels`` (turn qualities into the router's training
labels). Pure, batch-oriented functions, so the Ray engine runs them unchanged.

May import :mod:`hybridllm.tables`, :mod:`hybridllm.features` (the embedding-similarity score) and
:mod:`hybridllm.backends` (the models it calls); never the router, the server or the CLI.
"""

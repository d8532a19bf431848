"""Features: from a query to the vector the router head reads. The encoders (the static
bag-of-token-vectors default, the transformer, the protocol both follow), the text the router
reads from a prompt (``text``: which turns, hardened against padding), the embedding cache and
``featurize`` (embedding plus extra features), shared by training and serving so they cannot drift.

May import :mod:`hybridllm.tables` only (prompt text). torch and transformers are imported inside
the functions that export or run a transformer, never at import time.
"""

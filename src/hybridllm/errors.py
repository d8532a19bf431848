"""One base for every error hybridllm raises on purpose. Each carries a one-line message that names
the place (file and line, field, model, setting); ``except HybridLLMError`` catches them all, and the
CLI prints them as ``error: ...``. Each also derives from the builtin it refines (``ValueError`` for
bad input, ``RuntimeError`` for a failing resource), so older ``except ValueError`` code still works."""


class HybridLLMError(Exception):
    """Base class of hybridllm's errors."""

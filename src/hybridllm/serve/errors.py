"""The serving layer's configuration error (its own module so every piece can raise it)."""

from ..errors import HybridLLMError


class ServeConfigError(HybridLLMError, ValueError):
    """A serving setting is wrong: one line naming the file (or flag) and the key."""

"""Errors raised by welfare_lens.

Every error names the problem and the fix. They all derive from :class:`WelfareLensError`, so a
notebook can catch the library's complaints without catching genuine bugs.
"""

from __future__ import annotations


class WelfareLensError(Exception):
    """Base class of every error welfare_lens raises on bad input.

    Args:
        message: What is wrong.
        hint: How to fix it. Appended to the message as ``Hint: ...``.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\nHint: {hint}" if hint else message)


class ModelLoadError(WelfareLensError):
    """A model could not be found or loaded (unknown name, missing package, bad file)."""


class LayerError(WelfareLensError, IndexError):
    """A layer index or hook name does not exist in the model."""


class ShapeError(WelfareLensError, ValueError):
    """A tensor has the wrong shape, or belongs to a model with another ``d_model``."""


class ModelMismatchError(ShapeError):
    """Vectors of one architecture were given a model of another (``d_model`` or depth).

    A :class:`ShapeError`, so ``except ShapeError`` handlers still catch it.
    """


class TokenizationError(WelfareLensError, ValueError):
    """Text does not tokenise the way the analysis needs (e.g. an action is not one token)."""


class VectorError(WelfareLensError, ValueError):
    """A concept vector is invalid (NaN/Inf, zero norm) or made for another model or mode."""


class MazeConfigError(WelfareLensError, ValueError):
    """A maze configuration is invalid (sizes, fractions, duplicate emoji, ...)."""


class DataError(WelfareLensError, ValueError):
    """Input data is unusable: empty or one-class sets, corrupt or truncated files."""


class TrainingError(WelfareLensError, RuntimeError):
    """A training run cannot continue (no signal, incompatible checkpoint, ...)."""


class ConfigError(WelfareLensError, ValueError):
    """A pipeline setting or config file is invalid (unknown key, bad value, unreadable TOML)."""


class ResourceError(WelfareLensError, MemoryError):
    """The device ran out of memory even at the smallest batch (batches are halved first)."""

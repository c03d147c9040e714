"""welfare_lens: the functional-welfare-axis pipeline on any TransformerLens model.

Reproduces Han, Chalmers & Izmailov (2026), "How's it going? Reinforcement learning in language
models recruits a functional welfare axis": an emoji maze, a compact GRPO loop, difference-of-means
welfare vectors, geometric analyses and steering evaluations.
"""

from welfare_lens.errors import WelfareLensError

__version__ = "0.1.0"

__all__ = ["WelfareLensError", "__version__"]

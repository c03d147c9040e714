"""welfare_lens: the functional-welfare-axis pipeline on any TransformerLens model.

Reproduces Han, Chalmers & Izmailov (2026), "How's it going? Reinforcement learning in language
models recruits a functional welfare axis": an emoji maze, a compact GRPO loop, difference-of-means
welfare vectors, geometric analyses and steering evaluations.
"""

from welfare_lens import (
    analysis,
    chat,
    hooks,
    interop,
    maze,
    pipeline,
    plots,
    report,
    rl,
    steering,
)
from welfare_lens.capture import capture, project
from welfare_lens.chat import RenderedChat, action_token_ids, render_chat
from welfare_lens.errors import WelfareLensError
from welfare_lens.hooks import add_vector_hook, capture_hook, capture_hooks, hook_name
from welfare_lens.models import ModelInfo, known_models, load_model, model_info
from welfare_lens.steering import steer
from welfare_lens.vectors import (
    ClassStatistics,
    ConceptVectors,
    VectorMetadata,
    control_vectors,
    welfare_vectors,
)

__version__ = "0.1.0"

__all__ = [
    "ClassStatistics",
    "ConceptVectors",
    "ModelInfo",
    "RenderedChat",
    "VectorMetadata",
    "WelfareLensError",
    "__version__",
    "action_token_ids",
    "add_vector_hook",
    "analysis",
    "capture",
    "capture_hook",
    "capture_hooks",
    "chat",
    "control_vectors",
    "hook_name",
    "hooks",
    "interop",
    "known_models",
    "load_model",
    "maze",
    "model_info",
    "pipeline",
    "plots",
    "project",
    "render_chat",
    "report",
    "rl",
    "steer",
    "steering",
    "welfare_vectors",
]

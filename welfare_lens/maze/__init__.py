"""The paper's emoji maze (Appendices J, K, L.1, Q.1): generation, episodes, prompts, data.

* :class:`MazeConfig` -- every size, fraction, reward and rendering choice, paper defaults.
* :func:`generate_maze` -- a seeded 100x100 maze with a Mold ring (J.1).
* :class:`MazeEnv` -- a 15-turn episode with wind, melting and the paper's user turns (K).
* :func:`synthetic_trajectories` -- the off-policy extraction set (L.1).
* :class:`OptimalPolicy`, :class:`RandomPolicy`, :class:`MoldAvoider`, :func:`evaluate_policy` --
  reference scores.
* :func:`render_window`, :func:`plot_maze` -- pictures for people.

Example:
    >>> from welfare_lens import maze
    >>> env = maze.MazeEnv(maze.MazeConfig(), 0)
    >>> env.user_message.startswith("You are in a maze. Currently, you're at location")
    True
"""

from welfare_lens.maze.config import (
    EMOJI_DESCRIPTIONS,
    PROMPT_FORMATS,
    MazeConfig,
    PromptFormat,
    Tile,
    TileEmoji,
    TileName,
    interior_mold_bounds,
)
from welfare_lens.maze.directions import (
    DELTAS,
    DIRECTION_NAMES,
    DIRECTIONS,
    OPPOSITE,
    Action,
    Position,
    parse_action,
)
from welfare_lens.maze.display import TILE_COLOURS, plot_maze, render_window
from welfare_lens.maze.env import MazeEnv, StepResult, TileEvent, WindEvent, WindOverride
from welfare_lens.maze.generate import (
    ASCII_TILES,
    Maze,
    clipped_walk,
    generate_maze,
    nearest_path_bfs,
)
from welfare_lens.maze.policies import (
    MoldAvoider,
    OptimalPolicy,
    Policy,
    RandomPolicy,
    evaluate_policy,
    plan_values,
    policy_returns,
    policy_trajectories,
    run_episode,
)
from welfare_lens.maze.render import (
    INSTRUCTION,
    neighbour_tiles,
    render_user_message,
    wind_message,
)
from welfare_lens.maze.shared_prefix import shared_prefix_trajectories
from welfare_lens.maze.trajectories import (
    PAPER_EXTRACTION_SEED,
    Trajectory,
    direction_balance,
    gold_feasible,
    synthetic_trajectories,
)

__all__ = [
    "ASCII_TILES",
    "DELTAS",
    "DIRECTIONS",
    "DIRECTION_NAMES",
    "EMOJI_DESCRIPTIONS",
    "INSTRUCTION",
    "OPPOSITE",
    "PAPER_EXTRACTION_SEED",
    "PROMPT_FORMATS",
    "TILE_COLOURS",
    "Action",
    "Maze",
    "MazeConfig",
    "MazeEnv",
    "MoldAvoider",
    "OptimalPolicy",
    "Policy",
    "Position",
    "PromptFormat",
    "RandomPolicy",
    "StepResult",
    "Tile",
    "TileEmoji",
    "TileEvent",
    "TileName",
    "Trajectory",
    "WindEvent",
    "WindOverride",
    "clipped_walk",
    "direction_balance",
    "evaluate_policy",
    "generate_maze",
    "gold_feasible",
    "interior_mold_bounds",
    "nearest_path_bfs",
    "neighbour_tiles",
    "parse_action",
    "plan_values",
    "plot_maze",
    "policy_returns",
    "policy_trajectories",
    "render_user_message",
    "render_window",
    "run_episode",
    "shared_prefix_trajectories",
    "synthetic_trajectories",
    "wind_message",
]

"""Short trials over a grid of trainer settings; keep the best by held-out return.

Runs ``wl.rl.search`` with a recipe's settings (``wl.rl.RECIPES``) as the base: every point of
``--grid`` trains a fresh model for ``--steps`` RL steps on the task (by default one-turn mazes,
which are cheap to play and to score) and is scored by the mean return on ``--eval-mazes``
held-out mazes of that task, the same mazes for every trial. Alongside the score, each trial's
last training steps tell whether the policy stayed stochastic: ``zero-std`` is the share of
groups whose episodes all earned the same reward (no learning signal left) and ``entropy`` the
policy's entropy over the four moves. Resumable: a rerun skips finished trials.

    .venv/bin/python examples/search.py --model gemma-3-270m --steps 30 \\
        --grid "lr=5e-6,1e-5,2e-5;kl_beta=0,1" --out runs/gemma_search

A smoke run on a tiny random model (seconds):

    .venv/bin/python examples/search.py --model tiny-llama --recipe smollm2-135m-instruct \\
        --steps 2 --grid "lr=1e-4,2e-4" --mazes-per-step 2 --episodes-per-maze 2 \\
        --maze-size 20 --eval-mazes 4 --out /tmp/search_smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

import welfare_lens as wl
from welfare_lens.rl.recipe import RECIPES, given, recipe_for, search


def parse_grid(text: str) -> dict[str, list[Any]]:
    """``"lr=1e-5,2e-5;kl_beta=0,1"`` -> ``{"lr": [1e-05, 2e-05], "kl_beta": [0, 1]}``.

    Integers stay integers (``lr`` is always a float); what is not a number stays a string.
    """
    grid: dict[str, list[Any]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        if not sep or not values.strip():
            raise SystemExit(
                f"Cannot read grid entry {part!r}: write key=v1,v2 (';' between keys)."
            )
        parsed: list[Any] = []
        for v in values.split(","):
            v = v.strip()
            try:
                parsed.append(int(v) if v.lstrip("-").isdigit() and key != "lr" else float(v))
            except ValueError:
                parsed.append(v)
        grid[key.strip()] = parsed
    if not grid:
        raise SystemExit("--grid is empty: e.g. 'lr=1e-5,2e-5;entropy_beta0=0.01,0.05'.")
    return grid


def training_tail(trial_dir: Path, last: int = 5) -> dict[str, float]:
    """Mean entropy and zero-std share over a trial's last ``last`` logged steps."""
    path = trial_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    tail = rows[-last:]
    if not tail:
        return {}
    return {
        "entropy": statistics.fmean(r["entropy"] for r in tail),
        "zero_std": statistics.fmean(r["frac_reward_zero_std"] for r in tail),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="wl.load_model name")
    parser.add_argument("--recipe", default=None, help=f"one of {list(RECIPES)} (default: --model)")
    parser.add_argument("--grid", required=True, help="e.g. 'lr=1e-5,2e-5;kl_beta=0,1'")
    parser.add_argument("--steps", type=int, default=30, help="RL steps per trial")
    parser.add_argument("--turns", type=int, default=1, help="turns of the task (default 1)")
    parser.add_argument("--prompt-format", choices=["paper", "compact"], default=None)
    parser.add_argument("--maze-size", type=int, default=None)
    parser.add_argument("--mazes-per-step", type=int, default=None)
    parser.add_argument("--episodes-per-maze", type=int, default=None)
    parser.add_argument("--eval-mazes", type=int, default=200, help="held-out mazes per trial")
    parser.add_argument("--keep", choices=["best", "all"], default="all", help="checkpoints kept")
    parser.add_argument("--out", default="runs/search")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    recipe = recipe_for(args.model, args.recipe)
    maze_cfg = recipe.maze_config(
        **given(turns=args.turns, prompt_format=args.prompt_format, size=args.maze_size)
    )
    base = recipe.grpo_config(
        **given(mazes_per_step=args.mazes_per_step, episodes_per_maze=args.episodes_per_maze)
    )
    grid = parse_grid(args.grid)
    print(f"{recipe.name} settings, {maze_cfg.prompt_format} prompt, {maze_cfg.turns} turn(s); "
          f"grid {grid}; {args.steps} steps per trial; out={args.out}", flush=True)  # fmt: skip
    untrained = wl.rl.policy_snapshot(wl.load_model(args.model), maze_cfg, n_mazes=args.eval_mazes)
    print(f"untrained: {untrained!r}", flush=True)
    result = search(
        lambda: wl.load_model(args.model),
        maze_cfg,
        base,
        grid,
        steps=args.steps,
        n_eval_mazes=args.eval_mazes,
        out_dir=args.out,
        keep=args.keep,
    )
    print(result.table())
    print(f"\n{'trial':<40} {'entropy':>8} {'zero-std':>9}   (means of the last 5 training steps)")
    tails = {}
    for trial in result.trials:
        tail = training_tail(Path(trial.out_dir))
        tails[trial.name] = tail
        print(f"{trial.name:<40} {tail.get('entropy', float('nan')):>8.3f} "
              f"{tail.get('zero_std', float('nan')):>9.2f}")  # fmt: skip
    report = {
        "untrained": untrained.to_dict(),
        "rows": result.rows(),
        "training_tail": tails,
        "best": result.best.name,
    }
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"best: {result.best.name}; wrote {args.out}/report.json")
    return report


if __name__ == "__main__":
    main()

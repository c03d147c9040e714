"""Train a small model on the maze with a recipe, then compare it with the untrained policy.

Runs ``wl.rl.recipe.RECIPES[--recipe]`` (compact prompt, Dr. GRPO + LoRA, a curriculum from one
turn to fifteen; SmolLM2's is measured, Gemma's a starting point) through ``train_with_recipe``
within a time budget, then the held-out learning curve (``learning_curve``: step 0 = untrained,
one point per checkpoint, cached), and prints the untrained policy's numbers next to the trained
one's, and those of reference policies on the same mazes (``reference_snapshot``). The run
is resumable: the same command continues a run that was stopped by the budget or killed.
``--minutes`` bounds the training only: the evaluation afterwards plays ``--eval-mazes`` held-out
mazes per checkpoint (lower it, or raise ``--eval-every``, to shorten it).

    .venv/bin/python examples/recipe.py --model smollm2-135m-instruct --minutes 45 \\
        --eval-last-only --out runs/smollm2_recipe

A smoke run on a tiny random model (seconds; it learns nothing):

    .venv/bin/python examples/recipe.py --model tiny-llama --recipe smollm2-135m-instruct \\
        --stages 1:1,2:1 --sft-steps 1 --mazes-per-step 2 --episodes-per-maze 2 \\
        --micro-batch-size 4 --maze-size 20 --turns 3 --eval-mazes 4 --eval-every 1 --out /tmp/recipe_smoke
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import welfare_lens as wl
from welfare_lens.rl.learning_curve import PolicySnapshot, learning_curve
from welfare_lens.rl.recipe import RECIPES, Curriculum, given, recipe_for, train_with_recipe


def _pm(value: float | None, se: float | None, spec: str = ".3f") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if se is None or not math.isfinite(se):
        return format(value, spec)
    return f"{format(value, spec)} ± {format(se, spec.lstrip('+'))}"


def comparison(before: PolicySnapshot, after: PolicySnapshot, step: int) -> str:
    """The untrained and trained policies side by side."""
    rows = [
        ("P(Gold | Gold in view)", before.p_gold_given_available, before.p_gold_se,
         after.p_gold_given_available, after.p_gold_se, ".3f"),
        ("  chance level", before.chance_gold, None, after.chance_gold, None, ".3f"),
        ("P(Mold)", before.p_mold, before.p_mold_se, after.p_mold, after.p_mold_se, ".3f"),
        ("P(Mold | Mold in view)", before.p_mold_given_available, None,
         after.p_mold_given_available, None, ".3f"),
        ("P(Mold | avoidable)", before.p_mold_avoidable, before.p_mold_avoidable_se,
         after.p_mold_avoidable, after.p_mold_avoidable_se, ".3f"),
        ("return", before.return_mean, before.return_se, after.return_mean, after.return_se,
         "+.2f"),
        ("Gold per episode", before.gold_per_episode, None, after.gold_per_episode, None, ".2f"),
        ("Mold per episode", before.mold_per_episode, None, after.mold_per_episode, None, ".2f"),
    ]  # fmt: skip
    lines = [f"{'':<24} {'untrained (step 0)':>20} {f'trained (step {step})':>20}"]
    for name, b, b_se, a, a_se, spec in rows:
        lines.append(f"{name:<24} {_pm(b, b_se, spec):>20} {_pm(a, a_se, spec):>20}")
    lines.append(
        f"{'max direction share':<24} "
        f"{f'{before.max_direction_share:.2f} ({before.dominant_direction})':>20} "
        f"{f'{after.max_direction_share:.2f} ({after.dominant_direction})':>20}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="wl.load_model name")
    parser.add_argument("--recipe", default=None, help=f"one of {list(RECIPES)} (default: --model)")
    parser.add_argument("--prompt-format", choices=["paper", "compact"], default=None)
    parser.add_argument("--minutes", type=float, default=None, help="training time budget")
    parser.add_argument("--out", default="runs/recipe")
    parser.add_argument(
        "--stages", default=None, help="curriculum as turns:steps[:mazes], e.g. 1:80,15:40:2"
    )
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT warm-start steps")
    parser.add_argument("--sft-lr", type=float, default=None, help="warm-start learning rate")
    parser.add_argument(
        "--sft-turns",
        type=int,
        default=None,
        help="turns of the warm start's optimal-policy episodes (default: the task's)",
    )
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--entropy-beta0", type=float, default=None, help="entropy bonus")
    parser.add_argument("--kl-beta", type=float, default=None, help="k3 KL to the untrained model")
    parser.add_argument("--mazes-per-step", type=int, default=None)
    parser.add_argument("--episodes-per-maze", type=int, default=None)
    parser.add_argument("--micro-batch-size", type=int, default=None)
    parser.add_argument("--micro-batch-tokens", type=int, default=None)
    parser.add_argument("--maze-size", type=int, default=None)
    parser.add_argument("--turns", type=int, default=None, help="turns of the task (default 15)")
    parser.add_argument("--eval-mazes", type=int, default=200, help="held-out mazes per point")
    parser.add_argument("--eval-every", type=int, default=None, help="checkpoint interval")
    parser.add_argument("--live-eval", action="store_true", help="evaluate while training")
    parser.add_argument(
        "--eval-last-only",
        action="store_true",
        help="evaluate step 0 and the last checkpoint only (checkpoints stay for other analyses)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    recipe = recipe_for(args.model, args.recipe)
    maze_cfg = recipe.maze_config(
        **given(prompt_format=args.prompt_format, size=args.maze_size, turns=args.turns)
    )
    config = recipe.grpo_config(
        **given(
            lr=args.lr,
            entropy_beta0=args.entropy_beta0,
            kl_beta=args.kl_beta,
            mazes_per_step=args.mazes_per_step,
            episodes_per_maze=args.episodes_per_maze,
            micro_batch_size=args.micro_batch_size,
            micro_batch_tokens=args.micro_batch_tokens,
        )
    )
    curriculum = Curriculum.parse(args.stages) if args.stages else recipe.curriculum
    sft_steps = recipe.sft_steps if args.sft_steps is None else args.sft_steps
    eval_every = recipe.eval_every if args.eval_every is None else args.eval_every
    out = Path(args.out)
    print(f"{recipe!r}\nmaze: {maze_cfg.prompt_format} prompt, size {maze_cfg.size}; "
          f"{curriculum!r}; sft_steps={sft_steps}; out={out}", flush=True)  # fmt: skip

    # The warm start plays its own (e.g. one-turn) maze; the stages set their turns and the
    # learning curve always plays the task's maze.
    sft_maze = maze_cfg if args.sft_turns is None else replace(maze_cfg, turns=args.sft_turns)
    model = wl.load_model(args.model)
    run = train_with_recipe(
        model,
        sft_maze,
        config,
        out_dir=out,
        curriculum=curriculum,
        sft_steps=sft_steps,
        sft_lr=recipe.sft_lr if args.sft_lr is None else args.sft_lr,
        eval_every=eval_every,
        eval_maze_cfg=maze_cfg,
        eval_mazes=args.eval_mazes if args.live_eval else 0,
        max_seconds=None if args.minutes is None else args.minutes * 60,
        progress=not args.quiet,
    )
    print(repr(run), flush=True)
    if not run.completed:
        print(f"Stopped by the budget at step {run.global_step} of {run.total_steps}; run the "
              "same command again to continue.", flush=True)  # fmt: skip
    last_step = run.global_step
    del model, run  # the curve loads each checkpoint into a fresh copy of the base

    steps = [0, last_step] if args.eval_last_only else None
    curve = learning_curve(
        out, args.model, maze_cfg, steps=steps, n_mazes=args.eval_mazes, progress=True
    )
    print(curve.table())
    first, last = curve.points[0], curve.points[-1]
    print()
    print(comparison(first.snapshot, last.snapshot, last.step))
    # The same held-out mazes played by reference policies: the floors and ceilings of the
    # numbers above (Mold on all four sides cannot be avoided, so P(Mold) never reaches 0).
    references = {
        name: wl.rl.reference_snapshot(policy, maze_cfg, n_mazes=args.eval_mazes)
        for name, policy in (
            ("MoldAvoider", wl.maze.MoldAvoider()),
            ("OptimalPolicy", wl.maze.OptimalPolicy()),
        )
    }
    print("\nreference policies on the same held-out mazes:")
    for name, ref in references.items():
        print(
            f"  {name:<14} P(Gold | in view) {_pm(ref.p_gold_given_available, None)}  "
            f"P(Mold) {_pm(ref.p_mold, None)}  P(Mold | avoidable) "
            f"{_pm(ref.p_mold_avoidable, None)}  return {_pm(ref.return_mean, ref.return_se, '+.2f')}"
        )
    curve.figure().write_html(out / "learning_curve.html", include_plotlyjs=True)
    report = {
        "recipe": recipe.to_dict(),
        "maze": maze_cfg.to_dict(),
        "curve": curve.to_dict(),
        "untrained": first.snapshot.to_dict(),
        "trained": last.snapshot.to_dict(),
        "trained_step": last.step,
        "references": {name: ref.to_dict() for name, ref in references.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"\nwrote {out / 'report.json'} and {out / 'learning_curve.html'}")
    return report


if __name__ == "__main__":
    main()

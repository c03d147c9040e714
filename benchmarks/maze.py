"""Maze benchmarks: generation speed, the extraction set, and reference policy scores.

Prints, at the paper's configuration (100x100, 15 turns, wind 0.1, melting):

* the time to generate one maze;
* the time to generate the paper's extraction set, 5,000 synthetic trajectories per class for
  Mold, Gold and Path (15,000 in all, Appendix L.1), with the discarded mazes and the final-move
  direction balance (Appendix L.2);
* the mean episode return of the look-ahead planner (:class:`OptimalPolicy`) and of uniform
  random play on the same mazes and wind (paired seeds).

Usage::

    python benchmarks/maze.py                   # full run (under a minute on 2 CPU cores)
    python benchmarks/maze.py --per-class 500   # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from welfare_lens.maze import (
    MazeConfig,
    OptimalPolicy,
    RandomPolicy,
    direction_balance,
    generate_maze,
    policy_returns,
    synthetic_trajectories,
)


def main() -> None:
    """Run the benchmarks and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=5000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--horizon", type=int, default=7)
    parser.add_argument("--seed", type=int, default=474747)
    args = parser.parse_args()
    cfg = MazeConfig()

    n = 200
    t0 = time.perf_counter()
    for s in range(n):
        generate_maze(cfg, s)
    per_maze = (time.perf_counter() - t0) / n
    print(f"generate_maze (100x100): {per_maze * 1e3:.2f} ms per maze")

    t0 = time.perf_counter()
    trajs = synthetic_trajectories(cfg, per_class=args.per_class, seed=args.seed)
    dt = time.perf_counter() - t0
    mazes = sum(t.meta["rejected_before"] for t in trajs) + len(trajs)
    print(
        f"synthetic_trajectories: {len(trajs):,} trajectories ({args.per_class:,} per class x 3) "
        f"in {dt:.1f} s ({dt / max(1, len(trajs)) * 1e3:.2f} ms each; {mazes:,} mazes generated, "
        f"{mazes - len(trajs):,} discarded)"
    )
    for label, row in direction_balance(trajs).items():
        shares = " / ".join(f"{d} {100 * row[d]:.2f}%" for d in "NESW")
        print(f"  final-move balance {label:>4}: {shares}")

    opt_policy = OptimalPolicy(horizon=args.horizon)
    t0 = time.perf_counter()
    opt = policy_returns(opt_policy, cfg, args.episodes, seed=0)
    t_opt = time.perf_counter() - t0
    t0 = time.perf_counter()
    rnd = policy_returns(RandomPolicy(), cfg, args.episodes, seed=0)
    t_rnd = time.perf_counter() - t0

    def summary(x: np.ndarray) -> str:
        sem = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
        return f"{x.mean():+7.2f} +- {sem:.2f} (min {x.min():+.1f}, max {x.max():+.1f})"

    print(f"mean return over {args.episodes} episodes (same mazes and wind):")
    print(f"  {opt_policy!r}: {summary(opt)}  [{t_opt / args.episodes * 1e3:.1f} ms/episode]")
    print(
        f"  RandomPolicy():{' ' * 22}{summary(rnd)}  [{t_rnd / args.episodes * 1e3:.1f} ms/episode]"
    )
    print(
        f"  optimal - random: {opt.mean() - rnd.mean():+.2f}; optimal >= random in "
        f"{100 * (opt >= rnd).mean():.0f}% of mazes"
    )


if __name__ == "__main__":
    main()

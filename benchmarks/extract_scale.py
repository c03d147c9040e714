"""Extraction at the paper's scale: memory does not grow with the number of trajectories.

Runs, each in a fresh process (so peak RSS is that run's own), the extraction of the paper's
set at two sizes on the same model: by default 1,500 and 15,000 trajectories (500 and 5,000 per
class), sampled with shared prefixes (wl.maze.shared_prefix_trajectories) and captured with
streaming class statistics (no held-out part, which would grow by design). Prints, side by side,
wall time, peak RSS, samples, distinct tokens encoded, and the ratios. The statistics and the
welfare vectors of each run are saved under --out.

    .venv/bin/python benchmarks/extract_scale.py [--model smollm2-135m-instruct]
        [--sizes 500 5000] [--out runs/extract_scale] [--max-seconds 240]

With --max-seconds the largest size is stopped after that long and only its peak RSS so far is
reported (memory peaks while inputs are prepared and the first batches run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model_name: str, per_class: int, out: Path, max_seconds: float | None) -> None:
    import os
    import threading

    import torch

    import welfare_lens as wl

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    if max_seconds is not None:
        # A partial run: input preparation and the first minutes of capture, which is where
        # memory peaks (the statistics have a fixed size); report the peak so far and stop.
        def stop() -> None:
            partial = {
                "per_class": per_class,
                "samples": 3 * per_class,
                "partial_after_s": max_seconds,
                "peak_rss_mb": peak_rss_mb(),
            }
            print("RESULT " + json.dumps(partial), flush=True)
            os._exit(0)

        threading.Timer(max_seconds, stop).start()
    model = wl.load_model(model_name)
    loaded = time.perf_counter()
    trajs = wl.maze.shared_prefix_trajectories(per_class=per_class)
    sampled = time.perf_counter()
    stats = wl.capture(model, trajs, holdout=0.0)
    done = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    stats.save(out / "stats")
    wl.welfare_vectors(stats).save(out / "u")
    result = {
        "per_class": per_class,
        "samples": len(trajs),
        "mazes": len({t.maze_seed for t in trajs}),
        "load_s": loaded - start,
        "sample_s": sampled - loaded,
        "capture_s": done - sampled,
        "peak_rss_mb": peak_rss_mb(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--out", type=Path, default=Path("runs/extract_scale"))
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop the largest size after this long and report its peak RSS so far",
    )
    args = parser.parse_args()
    if args.child is not None:
        child(args.model, args.child, args.out, args.max_seconds)
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--model", args.model, "--child", str(size)]
        cmd += ["--out", str(args.out / f"per_class_{size}")]
        if args.max_seconds is not None and size == args.sizes[-1]:
            cmd += ["--max-seconds", str(args.max_seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"run with {size} per class failed (rc {proc.returncode})")
        rows.append(json.loads(line[len("RESULT ") :]))
        r = rows[-1]
        if "partial_after_s" in r:
            print(
                f"{r['samples']:>7} samples: stopped after {r['partial_after_s']:.0f} s, "
                f"peak RSS so far {r['peak_rss_mb']:7.0f} MB",
                flush=True,
            )
            continue
        print(
            f"{r['samples']:>7} samples ({r['mazes']} mazes): capture {r['capture_s']:8.1f} s, "
            f"{1000 * r['capture_s'] / r['samples']:6.1f} s per 1,000 samples, "
            f"peak RSS {r['peak_rss_mb']:7.0f} MB",
            flush=True,
        )
    first, last = rows[0], rows[-1]
    print(
        f"peak RSS ratio {last['samples']} vs {first['samples']} samples: "
        f"{last['peak_rss_mb'] / first['peak_rss_mb']:.3f} (target <= 1.2)"
    )
    if "capture_s" in last:
        print(f"wall time ratio {last['capture_s'] / first['capture_s']:.2f}")


if __name__ == "__main__":
    main()

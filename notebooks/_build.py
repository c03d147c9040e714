"""Generate the numbered tutorial notebooks of welfare_lens, outputs stripped.

The notebooks are written from this file so that they stay reviewable (a diff of this script is
a diff of the notebooks) and so that a test can check the committed files are exactly what it
generates (``tests/test_notebooks.py``). Run it after editing a cell:

    .venv/bin/python notebooks/_build.py           # rewrite notebooks/0*.ipynb
    .venv/bin/python notebooks/_build.py --check   # exit 1 if a notebook is out of date

Every notebook starts with a markdown cell (what it shows, which paper section) and the same
parameters cell: ``MODEL`` comes from ``$WELFARE_LENS_NOTEBOOK_MODEL`` (default ``tiny-llama``,
a random 2-layer model the tests use), and ``QUICK`` (a ``tiny-*`` model) picks sizes that run
in well under a minute on one CPU thread. With ``WELFARE_LENS_NOTEBOOK_MODEL=smollm2-135m-
instruct`` the same notebooks run at real-model sizes and keep their outputs under
``runs/notebook_0N/<model>/``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode

HERE = Path(__file__).resolve().parent

PARAMETERS = (
    "import os\n\n"
    'MODEL = os.environ.get("WELFARE_LENS_NOTEBOOK_MODEL", "tiny-llama")'
    '  # "smollm2-135m-instruct" for real runs\n'
    'QUICK = MODEL.startswith("tiny-")'
)

SETUP = """
from pathlib import Path

import torch

import welfare_lens as wl

if QUICK:
    torch.set_num_threads(1)  # tiny models: one thread is fastest on shared CPUs
ROOT = next(
    (p for p in (Path.cwd(), *Path.cwd().parents)
     if (p / "pyproject.toml").is_file() and (p / "welfare_lens").is_dir()),
    Path.cwd(),
)
RUNS = ROOT / "runs"  # real runs keep their outputs here
print(f"welfare_lens {wl.__version__}, torch {torch.__version__}, model {MODEL!r}, QUICK={QUICK}")
"""

WORK_DIR = """
if QUICK:  # a temporary folder, removed when the kernel exits
    _tmp = tempfile.TemporaryDirectory(prefix="welfare_lens_{name}_")
    WORK = Path(_tmp.name)
else:
    WORK = RUNS / "{name}" / Path(MODEL).name  # one folder per model
    WORK.mkdir(parents=True, exist_ok=True)
print("outputs go to", WORK)
"""


def setup(work: str | None = None, stdlib: tuple[str, ...] = ()) -> str:
    """The setup cell: imports, one torch thread for tiny models, ``RUNS`` and ``WORK``.

    Real runs keep their files in ``runs/<work>/<model>/`` of the repository (found from the
    current folder, so Jupyter may start in ``notebooks/``); QUICK runs use a temporary folder.
    """
    modules = sorted({*stdlib, "tempfile"} if work else set(stdlib))
    source = "".join(f"import {m}\n" for m in modules) + SETUP.lstrip("\n")
    if work:
        source += WORK_DIR.replace("{name}", work)
    return source


# Reuse notebook 01's vectors in real runs (extraction on SmolLM2 takes minutes); extract
# them here otherwise. Needs PER_CLASS, HOLDOUT and `model`.
NAIVE_VECTORS = """
saved = RUNS / "notebook_01" / Path(MODEL).name
if not QUICK and (saved / "u.safetensors").exists() and (saved / "stats_u.safetensors").exists():
    u = wl.ConceptVectors.load(saved / "u")
    stats = wl.ClassStatistics.load(saved / "stats_u")
    u.check_compatible(model)
    print("loaded the vectors of notebook 01 from", saved)
else:
    trajs = wl.maze.shared_prefix_trajectories(wl.maze.MazeConfig(), per_class=PER_CLASS)
    stats = wl.capture(model, trajs, holdout=HOLDOUT, progress=not QUICK)
    u = wl.welfare_vectors(stats, role="control")  # a naive model's vectors are controls
l_star = {
    concept: wl.analysis.select_steering_layer(u, concept, stats.heldout).layer
    for concept in ("mold", "gold")
}
print(u)
print("L* per concept:", l_star)
"""


def _clean(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


def md(source: str) -> NotebookNode:
    """A markdown cell."""
    return nbformat.v4.new_markdown_cell(_clean(source))


def code(source: str) -> NotebookNode:
    """A code cell without outputs."""
    return nbformat.v4.new_code_cell(_clean(source))


# ------------------------------------------------------------------------------------------------
# 01 quickstart
# ------------------------------------------------------------------------------------------------


def quickstart() -> list[NotebookNode]:
    return [
        md(
            """
            # 01 · Quickstart: the maze and welfare vectors of a naive model

            The smallest complete path through `welfare_lens`: load a model, look at the paper's
            emoji maze (paper §2 and appendices J/K), build the synthetic extraction set (A4,
            appendix L.1), capture the residual stream, compute difference-of-means welfare
            vectors (Eq. 1), measure the antiparallelism of v_Mold and v_Gold per layer (§3.1,
            Table 7) and pick the steering layer L* on held-out mazes (appendix L).

            The model here is *maze-naive* (never trained in the maze), so its vectors are the
            paper's controls **u**. Notebook 02 trains a policy and extracts **v**.

            Set `WELFARE_LENS_NOTEBOOK_MODEL=smollm2-135m-instruct` before starting Jupyter for a
            real run (a few minutes on a CPU; the vectors are kept in `runs/notebook_01/<model>/`
            and reused by notebooks 03 and 04). The default `tiny-llama` is a random 2-layer
            model: every call works, the numbers mean nothing.
            """
        ),
        code(PARAMETERS),
        code(
            """
            # Sizes: tiny for the tests (< 60 s on one CPU thread), real-model sizes otherwise.
            PER_CLASS = 40 if QUICK else 500  # extraction samples per class (paper: 5,000)
            HOLDOUT = 0.2  # fraction of mazes kept aside for the L* selection
            N_BOOT = 100 if QUICK else 1000  # cluster-bootstrap resamples
            """
        ),
        code(setup("notebook_01", stdlib=("json",))),
        md("## Load a model"),
        code(
            """
            model = wl.load_model(MODEL)
            print(wl.model_info(model))
            print(f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model}")
            """
        ),
        md(
            """
            ## The maze (§2, appendices J/K)

            A 100x100 grid of Mold 📇 (−10), Gold 📐 (+20) and Path 🧾 tiles; every step costs
            0.1, a left tile melts into Mold, and the wind sometimes pushes the agent. The model
            sees only emoji, never the tile names. This is the first user message of maze 0:
            """
        ),
        code(
            """
            cfg = wl.maze.MazeConfig()  # the paper's defaults: 100x100, 15 turns, wind 0.1
            env = wl.maze.MazeEnv(cfg, 0)
            print(env.user_message)
            print()
            print(wl.maze.render_window(env))  # the agent 🤖 and its surroundings
            """
        ),
        code(
            """
            for move in ("S", "E", "E"):
                step = env.step(move)
                entered = ", ".join(e.tile.class_name for e in step.events)
                print(f"turn {step.turn}: {move} -> {step.position}, entered {entered}, "
                      f"reward {step.reward:+.1f}, wind {step.wind}")
            print(f"return so far {env.total_reward:+.1f}")
            """
        ),
        code("wl.plots.maze(env, window=5)"),
        md(
            """
            ## The extraction set (A4, appendix L.1)

            Trajectories of class c are n − 1 moves onto Path and a final move onto a tile of
            class c. `shared_prefix_trajectories` samples them so that they share walks (one
            forward pass per distinct prefix): the same classes and length balance as the paper's
            independent design, with samples of one maze correlated (held-out splits are by maze).
            """
        ),
        code(
            """
            from collections import Counter

            trajs = wl.maze.shared_prefix_trajectories(cfg, per_class=PER_CLASS)
            print(len(trajs), "trajectories", dict(Counter(t.label for t in trajs)))
            last = trajs[-1]
            print(f"label {last.label!r}, {last.n_turns} turns; its last two messages:")
            for message in last.messages[-2:]:
                print(f"  {message['role']}: {message['content']}")
            """
        ),
        md(
            """
            ## Capture and welfare vectors (Eq. 1)

            `wl.capture` reads `blocks.ℓ.hook_resid_post` at the final move's token for every
            layer and streams per-class statistics; 20 % of the mazes are held out for L*.
            `wl.welfare_vectors` gives one-vs-rest difference-of-means vectors (unnormalised).
            """
        ),
        code(
            """
            stats = wl.capture(model, trajs, holdout=HOLDOUT, progress=not QUICK)
            print("in the means:", stats.counts)
            print("held out:   ", stats.heldout.counts)
            u = wl.welfare_vectors(stats, role="control")  # a naive model's vectors are controls
            print(u)
            for name in u.names:
                print(f"|u_{name}| per layer:", [round(float(x), 3) for x in u.norms(name)])
            """
        ),
        md(
            """
            ## Steering layer L* (appendix L)

            Held-out samples are scored by their cosine with v_ℓ at every layer; the best layers
            by AUROC, Cohen's d and histogram overlap are averaged (floor) into L*.
            """
        ),
        code(
            """
            selection = wl.analysis.select_steering_layer(u, "gold", stats.heldout)
            print(f"L*_gold = {selection.layer} (best AUROC layer {selection.best_auroc_layer}, "
                  f"best d layer {selection.best_d_layer}, "
                  f"best overlap layer {selection.best_overlap_layer})")
            print("AUROC per layer:", [round(float(a), 3) for a in selection.auroc])
            """
        ),
        md(
            """
            ## Antiparallelism (§3.1, Table 7)

            The paper's headline is the **minimum over layers** of cos(v_Mold, v_Gold). For
            one-vs-rest vectors the no-signal floor is about −0.5 (the Path class is in both
            subtrahends), so compare with the floor, and a naive model's u with a trained v.
            (`summary()` calls the first vectors it is given "trained"; here they are u.)
            """
        ),
        code(
            """
            anti = wl.analysis.antiparallelism(
                u, steering_layer=selection.layer, stats=stats, n_boot=N_BOOT
            )
            print(anti.summary())
            """
        ),
        code("wl.plots.antiparallelism(anti, title=f'cos(u_Mold, u_Gold) per layer, {MODEL}')"),
        md(
            """
            ## Save and load

            Vectors and statistics are written as `name.safetensors` + `name.json` (metadata and
            a SHA-256); loading checks the hash, and `check_compatible` refuses another model.
            """
        ),
        code(
            """
            path = u.save(WORK / "u")
            stats.save(WORK / "stats_u")
            u_again = wl.ConceptVectors.load(path)
            u_again.check_compatible(model)
            assert all(torch.equal(u_again[name], u[name]) for name in u.names)
            print(sorted(p.name for p in WORK.iterdir()))
            print(json.dumps(u_again.metadata.to_dict(), indent=1)[:400], "...")
            """
        ),
        code(
            """
            print(
                f"SUMMARY 01: model={MODEL} n_layers={model.cfg.n_layers} "
                f"samples={len(trajs)} L*_gold={selection.layer} "
                f"min_cos={anti.trained.min:+.3f} argmin={anti.trained.argmin} "
                f"saved={path.name}.safetensors"
            )
            """
        ),
    ]


# ------------------------------------------------------------------------------------------------
# 02 training
# ------------------------------------------------------------------------------------------------


def training() -> list[NotebookNode]:
    return [
        md(
            """
            # 02 · Training: GRPO in the maze, then welfare vectors of the trained policy

            The paper trains its models in the maze with Dr. GRPO and a LoRA adapter (§2,
            appendix A3, appendix Q). This notebook runs the library's compact trainer for a few
            steps with the compact prompt format ("Neighbours: N 📇, E 🧾, …", a non-paper format
            a 135M model learns much faster than the paper's sentence), compares the policy with
            the untrained one on held-out mazes, writes a checkpoint, draws the training curves
            (appendix Q, Fig. 43), loads the checkpoint back and extracts the trained vectors
            **v**, with the naive model's **u** as the control (§3.1).

            With `tiny-llama` three steps take seconds and learn nothing. With
            `smollm2-135m-instruct` the default 20 steps take about 25 minutes on a CPU
            (README: 23 steps moved the mean return from −73.5 to −37.3); always compare with
            the untrained policy before reading anything into the vectors.
            """
        ),
        code(PARAMETERS),
        code(
            """
            # Sizes: tiny for the tests (< 60 s on one CPU thread), real-model sizes otherwise.
            STEPS = 3 if QUICK else 20  # GRPO steps
            EPISODES_PER_MAZE = 4 if QUICK else 8  # the GRPO group size
            EVAL_MAZES = 2 if QUICK else 50  # held-out mazes for the before/after comparison
            EVAL_EPISODES = 4  # episodes per held-out maze
            PER_CLASS = 30 if QUICK else 300  # extraction samples per class
            HOLDOUT = 0.2
            """
        ),
        code(setup("notebook_02")),
        md(
            """
            ## Trainer

            `GRPOTrainer` wraps the model's weights in a LoRA adapter **in place**: after
            training, `model` is the trained policy. Metrics of every step go to
            `trainer.history` and `out_dir/metrics.jsonl`.
            """
        ),
        code(
            """
            import time

            model = wl.load_model(MODEL)
            maze_cfg = wl.maze.MazeConfig(prompt_format="compact")
            print(wl.maze.MazeEnv(maze_cfg, 0).user_message)

            # A new folder per run: a trainer refuses a folder that holds another run.
            run_dir = WORK / time.strftime("run-%Y%m%d-%H%M%S")
            config = wl.rl.GRPOConfig(
                mazes_per_step=2,
                episodes_per_maze=EPISODES_PER_MAZE,
                micro_batch_size=2,
                lr=3e-4,
                schedule_steps=max(STEPS, 2),
                out_dir=str(run_dir),
                progress=not QUICK,
                seed=0,
            )
            trainer = wl.rl.GRPOTrainer(model, maze_cfg, config)
            trainer
            """
        ),
        code(
            """
            KEYS = ("reward_mean", "reward_std", "gold_per_episode", "mold_per_episode",
                    "p_gold", "p_mold")

            def show(metrics):
                return ", ".join(
                    f"{k} {metrics[k]:+.3f}" for k in KEYS if metrics.get(k) is not None
                )

            before = trainer.evaluate(n_mazes=EVAL_MAZES, episodes_per_maze=EVAL_EPISODES)
            print("untrained policy:", show(before))
            """
        ),
        code(
            """
            history = trainer.train(STEPS)
            for metrics in history:
                print(f"step {metrics['step']}: loss {metrics['loss']:+.2e}, {show(metrics)}")
            """
        ),
        code(
            """
            after = trainer.evaluate(n_mazes=EVAL_MAZES, episodes_per_maze=EVAL_EPISODES)
            print("untrained policy:", show(before))
            print("trained policy:  ", show(after))
            checkpoint = trainer.save_checkpoint()
            print(checkpoint.name, sorted(p.name for p in checkpoint.iterdir()))
            """
        ),
        md(
            """
            ## Training curves (appendix Q, Fig. 43)

            `training_curves` takes the trainer, its `history`, a `metrics.jsonl` or the run
            folder; the untrained policy's metrics are drawn as dotted lines.
            """
        ),
        code("wl.plots.training_curves(run_dir, baseline=before)"),
        md(
            """
            ## Load the checkpoint and extract v

            `wl.rl.load_checkpoint` loads a fresh base model from the recorded spec, merges the
            adapter and names the checkpoint in the model's info, so vectors from it are never
            mistaken for the base model's. The control u comes from a fresh naive model.
            """
        ),
        code(
            """
            trained = wl.rl.load_checkpoint(run_dir)  # the run folder: its latest checkpoint
            print(wl.model_info(trained).model_id)
            trajs = wl.maze.shared_prefix_trajectories(maze_cfg, per_class=PER_CLASS)
            stats_v = wl.capture(trained, trajs, holdout=HOLDOUT, progress=not QUICK)
            v = wl.welfare_vectors(stats_v)
            naive = wl.load_model(MODEL)
            stats_u = wl.capture(naive, trajs, holdout=HOLDOUT, progress=not QUICK)
            u = wl.welfare_vectors(stats_u, role="control")
            print(v)
            print(u)
            """
        ),
        code(
            """
            l_star = {
                concept: wl.analysis.select_steering_layer(v, concept, stats_v.heldout).layer
                for concept in ("mold", "gold")
            }
            anti = wl.analysis.antiparallelism(
                v, u, sorted(set(l_star.values())), stats=stats_v, control_stats=stats_u,
                n_boot=100 if QUICK else 1000,
            )
            print("L* per concept:", l_star)
            print(anti.summary())
            """
        ),
        code("wl.plots.antiparallelism(anti)"),
        code(
            """
            v.save(run_dir / "v")
            u.save(run_dir / "u")
            print(
                f"SUMMARY 02: model={MODEL} steps={trainer.global_step} "
                f"checkpoint={checkpoint.name} "
                f"return_before={before['reward_mean']:+.2f} "
                f"return_after={after['reward_mean']:+.2f} "
                f"min_cos_v={anti.trained.min:+.3f} min_cos_u={anti.control.min:+.3f}"
            )
            """
        ),
    ]


# ------------------------------------------------------------------------------------------------
# 03 emotions
# ------------------------------------------------------------------------------------------------


def emotions() -> list[NotebookNode]:
    return [
        md(
            """
            # 03 · Emotions: welfare vectors against 171 emotion concept vectors

            §3.3 of the paper compares the welfare vectors with emotion vectors built by the
            Sofroniew et al. recipe (appendix A5, note B-13): stories about each of 171 emotions
            are read by the maze-naive model, the mean residual stream over each story's tokens is
            averaged per emotion, the mean of the other emotions is subtracted and the principal
            subspace of neutral texts is projected out. Then

            * **emotion PCA** (appendix F.4): PC1 of the emotion vectors tracks valence and PC2
              arousal (against the shipped ratings, `load_emotions()`); welfare vectors sit on
              PC1;
            * **alignment** (Fig. 3, Table 8): cos(v_Mold, e) against cos(v_Gold, e) over all
              emotions; a trained model gives a steep negative slope (paper: −0.88, R −0.948 at
              layer 21), the naive controls none.

            The vectors here are the naive model's u (see notebook 02 for v). With `tiny-llama`
            each emotion gets 2 of its 8 shipped stories; a real run uses all of them.
            """
        ),
        code(PARAMETERS),
        code(
            """
            # Sizes: tiny for the tests (< 60 s on one CPU thread), real-model sizes otherwise.
            STORIES_PER_EMOTION = 2 if QUICK else None  # None: every shipped story (8 each)
            PER_CLASS = 30 if QUICK else 500  # welfare-vector extraction, if notebook 01 did not
            HOLDOUT = 0.2
            N_BOOT = 200 if QUICK else 2000  # bootstrap over emotions
            """
        ),
        code(setup()),
        code(
            """
            from collections import Counter

            model = wl.load_model(MODEL)
            stories = wl.analysis.load_stories()
            ratings = wl.analysis.load_emotions()
            if STORIES_PER_EMOTION is not None:
                seen = Counter()
                subset = []
                for story in stories:
                    if seen[story.emotion] < STORIES_PER_EMOTION:
                        seen[story.emotion] += 1
                        subset.append(story)
                stories = subset
            print(f"{len(stories)} stories of {len({s.emotion for s in stories})} emotions, "
                  f"{len(ratings)} rated emotions")
            print(ratings[0], "|", stories[0].text[:120], "...")
            """
        ),
        md(
            """
            ## Emotion vectors (A5, B-13)

            Token positions from 50 on are averaged (`offset=50`); the neutral subspace that
            explains half of the neutral texts' variance is projected out (`denoise=0.5`).
            """
        ),
        code(
            """
            emotions = wl.analysis.emotion_vectors(model, stories, progress=not QUICK)
            print(emotions.n_layers, "layers x", len(emotions.names), "emotions")
            """
        ),
        md("## Welfare vectors of the same (naive) model"),
        code(NAIVE_VECTORS),
        md(
            """
            ## Emotion PCA (F.4)

            PC1 is oriented to correlate positively with valence, PC2 with arousal; the welfare
            vectors' scalar projections on PC1 are marked in the figure.
            """
        ),
        code(
            """
            pca = wl.analysis.emotion_pca(emotions, ratings, v=u)
            print(pca)
            """
        ),
        code("wl.plots.emotion_pca(pca)"),
        md(
            """
            ## Alignment with v_Mold and v_Gold (Fig. 3, Table 8)

            Without `layer=`, the reporting layer is the one with the most negative R (an
            optimistic choice); the paper reports at its emotion-scatter layer
            (`wl.analysis.emotion_scatter_layer`).
            """
        ),
        code(
            """
            align = wl.analysis.emotion_alignment(u, emotions, n_boot=N_BOOT)
            print(align)
            for name in ("mold", "gold"):
                top = ", ".join(f"{e} {c:+.2f}" for e, c in align.top[name]["aligned"][:5])
                print(f"most aligned with u_{name}: {top}")
            """
        ),
        code("wl.plots.emotion_scatter(align)"),
        code(
            """
            fit = align.trained.at(align.layer)
            i = pca.layers.index(pca.best_layer)
            print(
                f"SUMMARY 03: model={MODEL} emotions={len(emotions.names)} stories={len(stories)} "
                f"layer={align.layer} slope={fit['slope']:+.3f} R={fit['r']:+.3f} "
                f"pca_best_layer={pca.best_layer} r_valence={pca.r_valence[i]:.3f}"
            )
            """
        ),
    ]


# ------------------------------------------------------------------------------------------------
# 04 steering
# ------------------------------------------------------------------------------------------------


def steering() -> list[NotebookNode]:
    return [
        md(
            """
            # 04 · Steering: adding welfare vectors to the residual stream

            The paper's intervention (§4, appendix A6): h ← h + α·v at the output of block L*,
            at the assistant turn's tokens, on the maze-naive model. This notebook shows

            * `wl.steer(...)`, a context manager that records ‖α·v‖ against the residual norm;
            * the sentiment evaluation (§4.1, appendix N; VADER mapped to −5..+5);
            * an α sweep for u_Mold and u_Gold at their own L* and the steering "X" (Fig. 4);
              its OLS slope per unit α is the statistic of appendix D;
            * P(True) of proposed answers (§4.3, confidence).

            The vectors are the naive model's controls u, so flat curves are the expected result
            here; trained vectors v (notebook 02) go in the same calls. With `tiny-llama` the
            generations are noise; the real run uses 15 prompts x 4 samples x 48 tokens per
            condition (about 10 conditions: tens of minutes for SmolLM2 on a CPU).
            """
        ),
        code(PARAMETERS),
        code(
            """
            # Sizes: tiny for the tests (< 60 s on one CPU thread), real-model sizes otherwise.
            N_PROMPTS = 3 if QUICK else 15  # sentiment prompts (paper: 40)
            SAMPLES = 1 if QUICK else 4  # samples per prompt (paper: 20)
            MAX_NEW_TOKENS = 8 if QUICK else 48
            ALPHAS = (-4.0, -2.0, 0.0, 2.0, 4.0)  # the paper's coefficients
            N_QUESTIONS = 2 if QUICK else 20  # confidence questions
            PER_CLASS = 30 if QUICK else 500  # welfare-vector extraction, if notebook 01 did not
            HOLDOUT = 0.2
            """
        ),
        code(setup("notebook_04")),
        code(
            """
            from welfare_lens.steering import generate

            model = wl.load_model(MODEL)
            """
        ),
        code(NAIVE_VECTORS),
        md(
            """
            ## `wl.steer`

            Inside the block every forward pass of `model` is steered (α = 0 is bit-identical to
            no steering). The record says how big the push was compared with the residual stream.
            """
        ),
        code(
            """
            prompt = "How are you feeling right now?"
            plain = generate(model, prompt, max_new_tokens=MAX_NEW_TOKENS, temperature=0)
            with wl.steer(model, u, layer=l_star["gold"], alpha=4.0, name="gold") as record:
                steered = generate(model, prompt, max_new_tokens=MAX_NEW_TOKENS, temperature=0)
            print("unsteered:       ", repr(plain[0].text))
            print("+4·u_gold steered:", repr(steered[0].text))
            print(f"|α·u| = {record.delta_norm:.3f} vs mean |h| = {record.resid_norm_mean:.3f} "
                  f"at layer {record.layer} ({record.steered_tokens} tokens steered)")
            """
        ),
        md("## Sentiment evaluation (§4.1)"),
        code(
            """
            prompts = wl.steering.sentiment_prompts()[:N_PROMPTS]


            def sentiment(m):
                return wl.steering.evaluate_sentiment(
                    m, prompts=prompts, samples=SAMPLES, max_new_tokens=MAX_NEW_TOKENS, seed=0
                )


            table = sentiment(model)
            for row in table:
                print(f"{row['score']:+.2f}  {row['prompt'][:40]!r} -> {row['text'][:50]!r}")
            """
        ),
        md(
            """
            ## α sweep (Fig. 4, appendix D)

            `sweep` runs the evaluation under every (vector, layer, α) and appends to a JSONL
            file; a rerun skips finished conditions (of the same tag, which names the sizes here;
            delete the file after changing the vectors). α = 0 runs once and is shared.
            """
        ),
        code(
            """
            rows = []
            for concept in ("mold", "gold"):
                rows += wl.steering.sweep(
                    model,
                    sentiment,
                    {f"u_{concept}": u[concept]},
                    layers=[l_star[concept]],
                    alphas=ALPHAS,
                    out_path=WORK / "sentiment.jsonl",
                    tag=f"sentiment-{N_PROMPTS}x{SAMPLES}x{MAX_NEW_TOKENS}",
                    progress=not QUICK,
                )
            slopes = wl.steering.slopes_by(rows, by=("vector", "layer"))
            for s in slopes:
                print(f"{s['vector']} at L{s['layer']}: slope {s['slope']:+.3f} ± {s['se']:.3f} "
                      f"per unit α (n = {s['n']})")
            """
        ),
        code("wl.plots.steering_curves(rows, title=f'Sentiment under u steering, {MODEL}')"),
        md(
            """
            ## Confidence: P(True) of proposed answers (§4.3)

            Each question is asked, an answer is proposed (the correct one and a wrong one) and
            the model is asked whether it is true; the score is P(True) normalised over
            True/False.
            """
        ),
        code(
            """
            import numpy as np

            questions = wl.steering.load_truefalse_questions()[:N_QUESTIONS]
            confidence = {}
            for alpha in (-4.0, 0.0, 4.0):
                with wl.steer(model, u, layer=l_star["gold"], alpha=alpha, name="gold"):
                    confidence[alpha] = wl.steering.evaluate_confidence(model, questions)
            for alpha, answers in confidence.items():
                mean = {
                    kind: float(np.mean([r["score"] for r in answers if r["proposal"] == kind]))
                    for kind in ("correct", "wrong")
                }
                print(f"α={alpha:+.0f}: mean P(True) of correct answers {mean['correct']:.3f}, "
                      f"of wrong answers {mean['wrong']:.3f}")
            """
        ),
        code(
            """
            gold_slope = next(s for s in slopes if s["vector"] == "u_gold")
            conditions = {(r["vector"], r["layer"], r["alpha"]) for r in rows}
            print(
                f"SUMMARY 04: model={MODEL} conditions={len(conditions)} "
                f"rows={len(rows)} slope_u_gold={gold_slope['slope']:+.3f} "
                f"p_true_correct={confidence[0.0][0]['score']:.3f}"
            )
            """
        ),
    ]


# ------------------------------------------------------------------------------------------------
# 05 paper figures
# ------------------------------------------------------------------------------------------------


def paper_figures() -> list[NotebookNode]:
    return [
        md(
            """
            # 05 · Paper figures: the whole pipeline and its report

            `welfare_lens.pipeline` runs the paper end to end as resumable stages: `train` (GRPO,
            §2) → `extract` (v of the trained and u of the naive model, A4) → `analyze`
            (antiparallelism §3.1, L*, logit lens §3.2, emotions §3.3, tracking §5) → `steer`
            (α sweeps of sentiment, confidence, refusal and backtracking, §4) → `evaluate`
            (held-out maze returns) → `report` (one self-contained `report.html`).

            The `"quick"` preset runs in about a minute on `tiny-llama`; on
            `smollm2-135m-instruct` it takes tens of minutes on a CPU and is kept in
            `runs/notebook_05/<model>/` (rerunning skips finished stages, whatever their
            settings: delete the folder after changing the configuration).
            `PipelineConfig.preset("full")` or the CLI (`welfare-lens reproduce`) are the
            CPU-hours runs.
            """
        ),
        code(PARAMETERS),
        code(setup("notebook_05", stdlib=("json", "os"))),
        code(
            """
            from welfare_lens.pipeline import PipelineConfig, run_pipeline

            cfg = PipelineConfig.preset("quick", model=MODEL)
            print(json.dumps(cfg.to_dict(), indent=1))
            """
        ),
        code(
            """
            summary = run_pipeline(cfg, WORK)
            for stage, done in summary.items():
                print(f"{stage:>9}: {done['seconds']:6.1f} s")
            """
        ),
        md(
            """
            ## Numbers: `analyze/analysis.json`, `evaluate/evaluate.json`

            Every stage writes its outputs under `WORK/<stage>/`; the report gathers them.
            """
        ),
        code(
            """
            analysis = json.loads((WORK / "analyze" / "analysis.json").read_text())
            evaluation = json.loads((WORK / "evaluate" / "evaluate.json").read_text())
            anti = analysis["antiparallelism"]
            print("analysis.json sections:", sorted(analysis))
            print("L*:", analysis["l_star"])
            for role in ("trained", "control"):
                s = anti[role]
                print(f"{role}: min cos(v_Mold, v_Gold) {s['min']:+.3f} at layer {s['argmin']}, "
                      f"mean {s['mean']:+.3f}")
            for tag, row in evaluation.items():
                print(f"{tag} policy: return {row['reward_mean']:+.2f} ± {row['return_se']:.2f} "
                      f"on {row['n_mazes']} held-out mazes")
            """
        ),
        md(
            """
            ## Figures

            The report's figures, redrawn here from the files: training curves (appendix Q),
            antiparallelism (§3.1, Table 7) and the steering "X" (§4, Fig. 4; v solid, the
            norm-matched controls u dotted). The report has the logit lens, emotion and tracking
            figures too.
            """
        ),
        code("wl.plots.training_curves(WORK / 'train')"),
        code(
            """
            wl.plots.antiparallelism(
                anti["trained"],
                anti["control"],
                l_star=sorted(set(analysis["l_star"]["v"].values())),
                d_model=anti["d_model"],
            )
            """
        ),
        code(
            """
            sentiment = wl.steering.ResultTable.read_jsonl(WORK / "steer" / "sentiment.jsonl")
            sentiment_rows = list(sentiment)
            wl.plots.steering_curves(
                [r for r in sentiment_rows if r["vector"].startswith("v_")],
                [r for r in sentiment_rows if r["vector"].startswith("u_")],
                title="Steering: sentiment",
            )
            """
        ),
        md("## The report"),
        code(
            """
            from IPython.display import FileLink, display

            report = WORK / "report.html"
            report_json = json.loads((WORK / "report.json").read_text())
            print(f"{report} ({report.stat().st_size / 1e6:.1f} MB, opens offline)")
            print("sections:", [s["title"] for s in report_json["sections"]])
            display(FileLink(os.path.relpath(report)))
            """
        ),
        code(
            """
            print(
                f"SUMMARY 05: model={MODEL} stages={len(summary)} "
                f"L*_gold={analysis['l_star']['v']['gold']} "
                f"min_cos_v={anti['trained']['min']:+.3f} min_cos_u={anti['control']['min']:+.3f} "
                f"report={report.name}"
            )
            """
        ),
    ]


# ------------------------------------------------------------------------------------------------
# Assembly
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# 06 recruitment
# ------------------------------------------------------------------------------------------------


def recruitment() -> list[NotebookNode]:
    return [
        md(
            """
            # 06 · Recruitment, not creation: checkpoints, naive axes, VAA, emoji, pre-existence

            The paper's central claim is that RL *recruits* an axis the model already has
            (A1 finding 6). This notebook runs the evidence for it, one call each:

            1. welfare vectors of one trajectory set at every checkpoint of a run
               (`checkpoint_vectors`, appendix G), their rotation onto three fixed axes of the
               naive model (prompt sentiment vector, emotion PC1, the Valence-Assent Axis), and
               the Spearman correlation of that alignment with the smoothed reward;
            2. the Valence-Assent Axis (appendix H) and its cosines with u and v;
            3. the emoji neutrality check of the tile emoji (appendix J.2);
            4. the trained vectors steering the naive model (pre-existence);
            5. correctness tracking within P(True) tertiles (Figure 7);

            and puts every figure into one report. On `tiny-llama` each step takes seconds and
            the numbers mean nothing; `examples/recruitment.py` is the real-model script.
            """
        ),
        code(PARAMETERS),
        code(
            """
            STEPS = 4 if QUICK else 25  # GRPO steps of the run whose checkpoints are analysed
            CHECKPOINT_EVERY = 1 if QUICK else 5
            PER_CLASS = 30 if QUICK else 150  # extraction samples per class, every checkpoint
            STORIES_PER_EMOTION = 1 if QUICK else None  # emotion PC1 axis
            EMOJI = 12 if QUICK else 200  # emoji scanned for neutrality
            PER_EMOJI = 4 if QUICK else 45
            ARITHMETIC = 24 if QUICK else None  # correctness items (None: all shipped)
            """
        ),
        code(setup("notebook_06", stdlib=("time",))),
        md(
            """
            ## A run with checkpoints

            Any run folder with `checkpoint-*` subfolders and a `metrics.jsonl` works (e.g. one
            from `examples/recipe.py`); here a short compact-format GRPO run writes one.
            """
        ),
        code(
            """
            base = wl.load_model(MODEL)
            maze_cfg = wl.maze.MazeConfig(prompt_format="compact")
            run_dir = WORK / time.strftime("run-%Y%m%d-%H%M%S")
            config = wl.rl.GRPOConfig(
                mazes_per_step=2, episodes_per_maze=4, micro_batch_size=4, lr=3e-4,
                schedule_steps=max(STEPS, 2), out_dir=str(run_dir),
                checkpoint_every=CHECKPOINT_EVERY, progress=not QUICK, seed=0,
            )
            trainer = wl.rl.GRPOTrainer(wl.load_model(MODEL), maze_cfg, config)
            trainer.train(STEPS)
            print(sorted(p.name for p in run_dir.glob("checkpoint-*")))
            """
        ),
        md(
            """
            ## Vectors at every checkpoint (appendix G)

            Step 0 is the naive model; every checkpoint is merged into the same base model in
            turn. Each step is cached under `out_dir` with a fingerprint, so rerunning the cell
            reads the vectors back.
            """
        ),
        code(
            """
            trajs = wl.maze.shared_prefix_trajectories(maze_cfg, per_class=PER_CLASS)
            series = wl.analysis.checkpoint_vectors(
                run_dir, base, trajs, out_dir=run_dir / "vectors", progress=not QUICK,
                capture_kwargs={"holdout": 0.2},  # held-out samples choose L* below
            )
            u, v = series[series.steps[0]], series[series.steps[-1]]
            series
            """
        ),
        md(
            """
            ## Fixed axes of the naive model

            The prompt sentiment vector ("Describe a book using positive/negative sentiment",
            F.1), PC1 of the emotion vectors (F.4) and the Valence-Assent Axis (H.1: the first
            right singular vector of last-prompt-token activations on forced-choice
            support/oppose statements, signed by logit_A − logit_B).
            """
        ),
        code(
            """
            from collections import Counter

            sentiment = wl.analysis.sentiment_control_vectors(base, progress=False)
            vaa = wl.analysis.valence_assent_axis(base)
            stories = wl.analysis.load_stories()
            if STORIES_PER_EMOTION is not None:
                seen = Counter()
                stories = [s for s in stories
                           if (seen.update([s.emotion]) or seen[s.emotion]) <= STORIES_PER_EMOTION]
            emotions = wl.analysis.emotion_vectors(base, stories, progress=not QUICK)
            pca = wl.analysis.emotion_pca(emotions, v=v, control=u)
            print(vaa)
            """
        ),
        md(
            """
            ## Rotation and recruitment

            `rotation_table` gives cos(v, axis) and the unit-projection separation of the Gold-
            and Mold-final means per step and layer; `recruitment` correlates each with the
            EMA-smoothed reward over checkpoints (Spearman ρ with a bootstrap CI) and reports
            the band of layers where the alignment grew with the reward.
            """
        ),
        code(
            """
            axes = {"prompt_sentiment": (sentiment, "prompt"), "emotion_pc1": pca,
                    "vaa": vaa.vectors}
            table = wl.analysis.rotation_table(series, axes)
            rewards = wl.analysis.reward_series(run_dir / "metrics.jsonl", steps=series.steps)
            rec = wl.analysis.recruitment(table, rewards, n_boot=200 if QUICK else 1000)
            print(table)
            print(rec)
            """
        ),
        code("fig_rotation = wl.plots.rotation(table, rewards)\nfig_rotation"),
        code("fig_recruitment = wl.plots.recruitment(rec)\nfig_recruitment"),
        md("## The Valence-Assent Axis against u and v (appendix H)"),
        code(
            """
            vaa_u = wl.analysis.vaa_cosines(vaa, u)
            vaa_v = wl.analysis.vaa_cosines(vaa, v)
            fig_vaa = wl.plots.vaa_cosines(vaa_v, vaa_u, layers=vaa.layers,
                                           d_model=u.metadata.d_model)
            fig_vaa
            """
        ),
        md(
            """
            ## Emoji neutrality (appendix J.2)

            Per-emoji vectors from maze conversations whose final move lands on that emoji,
            compared with the CAD and prompt sentiment vectors; the paper's office trio is
            starred. A real scan uses 200 candidates (`examples/emoji_scan.py`).
            """
        ),
        code(
            """
            candidates = wl.analysis.pick_candidates(EMOJI)
            emoji_vecs = wl.analysis.emoji_vectors(
                base, candidates, per_emoji=PER_EMOJI, progress=not QUICK
            )
            scan = wl.analysis.neutrality_scan(emoji_vecs, sentiment, sentiment, vaa.layer)
            print(scan)
            fig_emoji = wl.plots.emoji_neutrality(scan)
            fig_emoji
            """
        ),
        md(
            """
            ## Pre-existence: the trained vectors steer the naive model (A1 finding 6)

            The same v at its L* steers the trained checkpoint and the naive model on the
            P(True) confidence evaluation (the others: `evaluations=wl.steering.EVALUATIONS`);
            controls u are steered only on models other than the vectors' own checkpoint.
            """
        ),
        code(
            """
            heldout = series.stats[series.steps[-1]].heldout
            l_star = {c: wl.analysis.select_steering_layer(v, c, heldout).layer
                      for c in ("mold", "gold")}
            trained = wl.rl.load_checkpoint(run_dir)
            pre = wl.steering.pre_existence(
                v, {"trained": trained, "naive": base}, evaluations=["confidence"],
                layer=l_star, control=u, quick=QUICK,
            )
            print(pre)
            fig_pre = wl.plots.pre_existence(pre)
            fig_pre
            """
        ),
        md("## Correctness tracking within P(True) tertiles (Figure 7)"),
        code(
            """
            items = wl.analysis.load_arithmetic()
            items = items[:ARITHMETIC] if ARITHMETIC else items
            control = wl.analysis.correctness_with_confidence(
                trained, v, l_star["gold"], items=items, allow_other_checkpoint=True
            )
            print(control)
            fig_conf = wl.plots.confidence_control(control)
            fig_conf
            """
        ),
        md("## One report with every figure"),
        code(
            """
            from welfare_lens.report import Section, build_report

            report = build_report(
                WORK / "report", title=f"Recruitment analyses: {MODEL}",
                config={"model": MODEL, "steps": STEPS, "per_class": PER_CLASS},
                sections=[
                    Section("Rotation (G)", repr(rec), figures=[fig_rotation, fig_recruitment]),
                    Section("Valence-Assent Axis (H)", repr(vaa), figures=[fig_vaa]),
                    Section("Emoji neutrality (J.2)", repr(scan), figures=[fig_emoji]),
                    Section("Pre-existence (A1)", repr(pre), figures=[fig_pre]),
                    Section("Confidence control (Figure 7)", repr(control), figures=[fig_conf]),
                ],
                numbers={"rotation": table, "recruitment": rec, "vaa": vaa,
                         "emoji": scan, "pre_existence": pre},
            )
            k = table.layers.index(table.report_layer)
            print(
                f"SUMMARY 06: model={MODEL} checkpoints={len(series.steps)} "
                f"rho_vaa_gold={rec.rho['vaa']['cos_gold'][k]:+.3f} "
                f"vaa_u_gold={vaa_u['gold'][-1]:+.3f} vaa_v_gold={vaa_v['gold'][-1]:+.3f} "
                f"trio_rank={scan.rank_of(wl.analysis.PAPER_TRIO[0])} report={report.name}"
            )
            """
        ),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_training.ipynb": training,
    "03_emotions.ipynb": emotions,
    "04_steering.ipynb": steering,
    "05_paper_figures.ipynb": paper_figures,
    "06_recruitment.ipynb": recruitment,
}

METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python", "pygments_lexer": "ipython3"},
}


def build() -> dict[str, NotebookNode]:
    """Every notebook, by file name, outputs stripped and with stable cell ids."""
    out: dict[str, NotebookNode] = {}
    for name, cells_of in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook(metadata=METADATA)
        nb.cells = cells_of()
        stem = name.removesuffix(".ipynb").replace("_", "-")
        for i, cell in enumerate(nb.cells):
            cell.id = f"{stem}-{i:02d}"  # nbformat would draw random ids
        nbformat.validate(nb)
        out[name] = nb
    return out


def render(nb: NotebookNode) -> str:
    """The exact file contents of a notebook."""
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale notebooks")
    args = parser.parse_args(argv)
    stale = []
    for name, nb in build().items():
        path = HERE / name
        text = render(nb)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    verb = "out of date" if args.check else "written"
    print(f"{verb}: {', '.join(stale) if stale else 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

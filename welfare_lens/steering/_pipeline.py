"""Steps shared by the generate → label → evaluate pipelines (backtracking, refusal, confidence).

Private: the public names (:data:`GenerateFn`, :func:`run_generations`,
:func:`unsteered_context`) are re-exported by :mod:`welfare_lens.steering.backtracking`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from welfare_lens._resources import read_json
from welfare_lens.errors import DataError
from welfare_lens.steering.incoherence import incoherence_score, is_incoherent

#: ``generate_fn(model, prompt, n) -> n responses`` to a one-turn user prompt. Bind sampling
#: parameters with :func:`functools.partial`;
#: :func:`~welfare_lens.steering.backtracking.chat_generate` is the default.
GenerateFn = Callable[[Any, str, int], list[str]]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def read_items(
    resource: str, path: str | Path | None, what: str, hint: str, empty: str
) -> list[Any]:
    """The non-empty ``items`` list of a shipped (or user) JSON file; ``empty`` if there is none."""
    data = read_json(resource, path, what, hint)
    items = data.get("items") if isinstance(data, Mapping) else None
    if not isinstance(items, list) or not items:
        raise DataError(empty, hint=hint)
    return items


@contextlib.contextmanager
def offline(allow_download: bool) -> Iterator[None]:
    """Force ``datasets`` / ``huggingface_hub`` offline inside the block (unless allowed)."""
    if allow_download:
        yield
        return
    patched: list[tuple[Any, str, Any]] = []
    for module_name in ("datasets.config", "huggingface_hub.constants"):
        try:
            module: Any = importlib.import_module(module_name)
        except ImportError:  # pragma: no cover
            continue
        if hasattr(module, "HF_HUB_OFFLINE"):
            patched.append((module, "HF_HUB_OFFLINE", module.HF_HUB_OFFLINE))
            module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, name, value in patched:
            setattr(module, name, value)


def load_hf_dataset(
    path: str,
    config: str,
    split: str,
    *,
    allow_download: bool,
    name: str,
    part: str,
    source_hint: str,
    offline_hint: str,
) -> Any:
    """``datasets.load_dataset(path, config, split=split)``, offline unless ``allow_download``.

    Raises:
        DataError: ``datasets`` is missing (``"pip install datasets, or <source_hint>."``) or the
            data set is not cached (``"<name> (<part>) is not available offline"``).
    """
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            f"Loading {name} needs the 'datasets' package.",
            hint=f"pip install datasets, or {source_hint}.",
        ) from err
    try:
        with offline(allow_download):
            return datasets.load_dataset(path, config, split=split)
    except Exception as err:
        raise DataError(
            f"{name} ({part}) is not available offline: {err}", hint=offline_hint
        ) from err


# ----------------------------------------------------------------------------------------------
# Steering and generation
# ----------------------------------------------------------------------------------------------


def unsteered_context() -> contextlib.AbstractContextManager[Any] | None:
    """``welfare_lens.steering.steer.unsteered()`` (suspends active steering), or None if absent.

    Judges and Phase 0 answers run inside it, so a steering context around an evaluation never
    steers them.
    """
    try:
        from welfare_lens.steering.steer import unsteered
    except ImportError:  # pragma: no cover - shipped with the package
        return None
    return unsteered()


def suspended() -> contextlib.AbstractContextManager[Any]:
    """:func:`unsteered_context`, or a null context where it is unavailable."""
    context = unsteered_context()
    return context if context is not None else contextlib.nullcontext()


def run_judge(fn: GenerateFn, judge: Any, prompt: str) -> str:
    """One judge completion, with any active steering suspended."""
    with suspended():
        return fn(judge, prompt, 1)[0]


def check_judge(judge: Any, model: Any, two_step: str) -> None:
    if judge is not None and judge is model and unsteered_context() is None:
        raise DataError(  # pragma: no cover - unsteered() ships with the package
            "The judge is the evaluated model; under steering it would be steered too.",
            hint=f"Call the generation step inside the steering context and {two_step} outside.",
        )


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def progress_bar(items: Sequence[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def run_generations(
    model: Any,
    prompts: Sequence[str],
    samples: int,
    generate_fn: GenerateFn,
    *,
    seed: int | None,
    progress: bool = False,
    desc: str = "generating",
) -> list[list[str]]:
    """``samples`` responses to each prompt; prompt ``i`` is seeded with ``seed + i``.

    Args:
        model: The (possibly steered) model.
        prompts: User messages.
        samples: Responses per prompt.
        generate_fn: ``(model, prompt, n) -> [text]``.
        seed: Base seed (None: the global RNG as it is). The global RNG state is restored.
        progress: Show a tqdm bar.
        desc: Bar label.

    Returns:
        One list of ``samples`` responses per prompt.

    Raises:
        DataError: ``generate_fn`` returned the wrong number of responses.
    """
    out = []
    for i, prompt in enumerate(progress_bar(prompts, progress, desc)):
        with _seeded(None if seed is None else seed + i):
            texts = list(generate_fn(model, prompt, samples))
        if len(texts) != samples:
            raise DataError(
                f"generate_fn returned {len(texts)} responses, expected {samples}.",
                hint="generate_fn(model, prompt, n) must return a list of n strings.",
            )
        out.append(texts)
    return out


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


def response_rows(
    model: Any,
    prompts: Sequence[str],
    samples: int,
    generate_fn: GenerateFn,
    fields: Callable[[int, str], Mapping[str, Any]],
    *,
    seed: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Unlabelled rows, one per response: the common columns, ``fields(prompt index, text)``
    and ``incoherence`` (``score``/``label``/``incoherent`` None until labelled)."""
    texts = run_generations(model, prompts, samples, generate_fn, seed=seed, progress=progress)
    rows = []
    for i, (prompt, responses) in enumerate(zip(prompts, texts, strict=True)):
        for j, text in enumerate(responses):
            rows.append(
                {
                    "prompt": prompt,
                    "sample": j,
                    "score": None,
                    "incoherent": None,
                    "text": text,
                    "label": None,
                    **fields(i, text),
                    "incoherence": incoherence_score(text),
                }
            )
    return rows


class Verdict(Protocol):
    """What :func:`label_rows` reads from a backtracking or refusal verdict."""

    @property
    def label(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def cues(self) -> tuple[str, ...]: ...
    @property
    def judge_output(self) -> str | None: ...


def label_rows(
    rows: Sequence[Mapping[str, Any]],
    verdict: Callable[[Mapping[str, Any], str], Verdict],
    positive: Collection[str],
    progress: bool,
) -> list[dict[str, Any]]:
    """Copies of ``rows`` with the label columns of ``verdict(row, text)``.

    ``score`` is 1.0 for a label in ``positive``, 0.0 otherwise, None unparseable;
    ``incoherent`` is label ``nonsensical`` (for unparseable outputs,
    :func:`~welfare_lens.steering.incoherence.is_incoherent`).
    """
    out = []
    for row in progress_bar(rows, progress, "labelling"):
        text = str(row["text"])
        found = verdict(row, text)
        label = found.label
        out.append(
            {
                **row,
                "label": label,
                "label_source": found.source,
                "score": None if label is None else float(label in positive),
                "incoherent": is_incoherent(text) if label is None else label == "nonsensical",
                "cues": list(found.cues),
                "judge_output": found.judge_output,
            }
        )
    return out


def class_rate(
    rows: Iterable[Mapping[str, Any]], classes: Collection[str], positive: Collection[str]
) -> float:
    """Fraction of rows with a label in ``classes`` whose label is in ``positive`` (NaN if none)."""
    labels = [r.get("label") for r in rows]
    parseable = [lab for lab in labels if lab in classes]
    if not parseable:
        return float("nan")
    return sum(lab in positive for lab in parseable) / len(parseable)

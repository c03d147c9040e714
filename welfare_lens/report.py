"""Self-contained HTML reports of a run: text, tables, interactive figures, and every number.

:func:`build_report` writes two files into a folder:

* ``report.html`` — one file that opens with no network: plotly.js is embedded inline once (in
  the page head), each figure is a ``<div>`` drawn by it, and there is no external script,
  stylesheet or font. It holds the title, the run's configuration, the software environment
  (python, torch, transformers, transformer_lens, welfare_lens, device, platform), then one
  block per :class:`Section` (markdown-ish text, tables, figures), then all numbers.
* ``report.json`` — the same title, configuration, environment, section texts and tables and the
  ``numbers`` dict, as strict JSON: numpy and torch scalars and arrays become plain numbers and
  lists, NaN becomes ``null`` and ±inf the strings ``"inf"``/``"-inf"`` (:func:`to_jsonable`).

Static images (PNG/SVG/PDF) are optional: :func:`export_images` uses kaleido, which (from 1.0 on)
drives a Chrome/Chromium binary. When either is missing it raises :class:`ImageExportError`
naming what is missing and how to install it (``pip install kaleido``; Debian/Ubuntu
``apt-get install chromium``); :func:`build_report` with ``images=("png",)`` catches that and
writes the message into the report instead of failing.

The DESIGN asks every analysis to be reported with its controls and the paper's numbers next to
it (e.g. the minimum over layers of cos(v_Mold, v_Gold), paper Table 7 / note B-7); the report is
where those go, with figures from :mod:`welfare_lens.plots`.

Example:
    >>> from welfare_lens import plots, report  # doctest: +SKIP
    >>> fig = plots.antiparallelism(result)  # doctest: +SKIP
    >>> report.build_report("runs/smollm2", title="SmolLM2 maze run", config={"lr": 3e-4},
    ...     sections=[report.Section("Geometry", "Min over layers ...", figures=[fig])],
    ...     numbers={"antiparallelism": result})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import html
import json
import math
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from welfare_lens.errors import DataError, WelfareLensError

__all__ = [
    "BROWSER_NAMES",
    "ImageExportError",
    "Section",
    "build_report",
    "environment_info",
    "export_images",
    "find_browser",
    "image_export_problem",
    "markdown_to_html",
    "table_html",
    "to_jsonable",
]

#: Executable names searched on ``PATH`` for a Chrome/Chromium binary (kaleido >= 1 needs one).
BROWSER_NAMES: tuple[str, ...] = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
)
_INSTALL_HINT = (
    "Install kaleido with `pip install kaleido` and a Chrome/Chromium binary "
    "(Debian/Ubuntu: `apt-get install chromium`), or set BROWSER_PATH to one. "
    "The HTML report needs neither."
)

Rows = Sequence[Mapping[str, Any]]
#: A table: a list of row dicts, or ``(caption, rows)``.
Table = Rows | tuple[str, Rows]


class ImageExportError(WelfareLensError, RuntimeError):
    """Static image export is unavailable (kaleido or a Chrome/Chromium binary is missing)."""


@dataclass
class Section:
    """One block of a report: a heading, markdown-ish text, tables and figures, in that order.

    Attributes:
        title: Heading.
        text: Paragraphs separated by blank lines; ``- `` bullets, ``1. `` numbered lists,
            ``#``/``##`` sub-headings, fenced code blocks, and inline ``**bold**``, ``*italic*``,
            ```code``` and ``[text](https://...)`` links (:func:`markdown_to_html`).
        tables: Row-dict lists (one column per key), or ``(caption, rows)`` pairs. A
            :class:`~welfare_lens.steering.ResultTable` works too.
        figures: Plotly figures (e.g. from :mod:`welfare_lens.plots`).
    """

    title: str
    text: str = ""
    tables: list[Any] = field(default_factory=list)
    figures: list[go.Figure] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------


def _key(k: Any) -> str:
    if isinstance(k, tuple):
        return "|".join(str(_plain_scalar(x)) for x in k)
    if isinstance(k, enum.Enum):
        return str(k.name)
    return str(_plain_scalar(k))


def _plain_scalar(x: Any) -> Any:
    item = getattr(x, "item", None)
    if callable(item) and type(x).__module__ == "numpy":
        try:
            return item()
        except (ValueError, TypeError):
            return x
    return x


def _float(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def to_jsonable(obj: Any, _depth: int = 0) -> Any:
    """A strict-JSON version of ``obj`` (no NaN, no numpy, no tensors).

    * ``None``, bools, ints and strings pass through; floats too, except NaN -> ``None`` and
      ±inf -> ``"inf"``/``"-inf"``.
    * numpy scalars and arrays, and torch tensors (detached to CPU), become numbers and lists.
    * Mappings become dicts with string keys (tuple keys joined with ``|``, as
      :class:`~welfare_lens.analysis.CentredCosines` does); lists, tuples and sets become lists.
    * Objects with a ``to_dict()`` (the library's result classes) are converted through it;
      other dataclasses field by field; enums by name; paths and dates as strings.
    * Anything else becomes ``str(obj)``.

    Raises:
        DataError: The structure nests deeper than 100 levels (probably a cycle).
    """
    if _depth > 100:
        raise DataError("Object nests deeper than 100 levels.", hint="Check it for a cycle.")
    d = _depth + 1
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float(float(obj))
    module = type(obj).__module__
    if (module == "numpy" or module.startswith("numpy.")) and hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist(), d)
    if module.startswith("torch") and hasattr(obj, "detach"):
        return to_jsonable(obj.detach().cpu().tolist(), d)
    if isinstance(obj, Mapping):
        return {_key(k): to_jsonable(v, d) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, d) for v in obj]
    if isinstance(obj, set | frozenset):
        items = [to_jsonable(v, d) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict) and not isinstance(obj, type):
        try:
            return to_jsonable(to_dict(), d)
        except TypeError:
            pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name), d) for f in dataclasses.fields(obj)}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, _dt.datetime | _dt.date):
        return obj.isoformat()
    if isinstance(obj, complex):
        return [_float(obj.real), _float(obj.imag)]
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist(), d)
    return str(obj)


def _dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _device() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "unknown (torch not importable)"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return f"cuda x{torch.cuda.device_count()} ({', '.join(names)})"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return f"cpu ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def environment_info() -> dict[str, str]:
    """Versions and hardware the report was made with.

    Returns:
        ``python``, ``torch``, ``transformers``, ``transformer_lens``, ``welfare_lens``,
        ``plotly``, ``numpy``, ``device`` and ``platform``.
    """
    pkg = sys.modules.get("welfare_lens")
    wl_version = getattr(pkg, "__version__", None) or _version("welfare_lens")
    return {
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "transformer_lens": _version("transformer-lens"),
        "welfare_lens": str(wl_version),
        "plotly": _version("plotly"),
        "numpy": _version("numpy"),
        "device": _device(),
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------------------------
# Text and tables
# ----------------------------------------------------------------------------------------------

_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")


def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)

        def link(m: re.Match[str]) -> str:
            url = m.group(2)
            if not re.match(r"^(https?://|#|\.{0,2}/|[\w.-]+(/|$))", url):
                return m.group(0)
            return f'<a href="{html.escape(url, quote=True)}">{m.group(1)}</a>'

        s = _LINK.sub(link, s)
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        s = _ITALIC.sub(r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def markdown_to_html(text: str) -> str:
    """A small, safe subset of markdown as HTML (everything else is escaped text).

    Blocks are separated by blank lines: ``#``/``##``/``###`` headings (rendered one level
    below the section heading), ``- ``/``* `` bullet lists, ``1. `` numbered lists, fenced
    ``````` code blocks, and paragraphs (single newlines kept as line breaks). Inline:
    ``**bold**``, ``*italic*``, ```code``` and ``[text](url)`` links. No raw HTML passes.
    """
    lines = (text or "").replace("\r\n", "\n").split("\n")
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        for pattern, tag in ((_BULLET, "ul"), (_NUMBERED, "ol")):
            if all(pattern.match(ln) for ln in block):
                items = "".join("<li>" + _inline(pattern.sub("", ln)) + "</li>" for ln in block)
                out.append(f"<{tag}>{items}</{tag}>")
                block.clear()
                return
        out.append("<p>" + "<br>".join(_inline(ln.strip()) for ln in block) + "</p>")
        block.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            flush()
            code: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append(lines[i])
                i += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
        elif m := re.match(r"^(#{1,3})\s+(.*)$", line):
            flush()
            level = len(m.group(1)) + 2
            out.append(f"<h{level}>{_inline(m.group(2).strip())}</h{level}>")
        elif not line.strip():
            flush()
        else:
            block.append(line)
        i += 1
    flush()
    return "\n".join(out)


def _cell(v: Any) -> str:
    v = to_jsonable(v)
    if v is None:
        return '<span class="na">—</span>'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        return html.escape(v)
    s = json.dumps(v, ensure_ascii=False, allow_nan=False)
    if len(s) > 300:
        s = s[:297] + "…"
    return f"<code>{html.escape(s)}</code>"


def _rows(table: Any) -> list[Mapping[str, Any]]:
    rows = getattr(table, "rows", table)
    if isinstance(rows, Mapping):
        rows = [rows]
    out = []
    for r in rows:
        if not isinstance(r, Mapping):
            raise DataError(
                f"A table row must be a dict, got {type(r).__name__}.",
                hint="Pass tables as lists of dicts (one key per column).",
            )
        out.append(r)
    return out


def table_html(rows: Iterable[Mapping[str, Any]] | Any, caption: str | None = None) -> str:
    """An HTML table: one column per key (in order of first appearance), one row per dict.

    Numbers are shown to 4 significant digits, missing values and NaN as "—", nested values as
    compact JSON; everything is escaped.

    Raises:
        DataError: A row is not a dict.
    """
    rs = _rows(rows)
    cols: list[str] = []
    for r in rs:
        for k in r:
            if str(k) not in cols:
                cols.append(str(k))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if isinstance(to_jsonable(v), int | float) else "txt"}">'
            f"{_cell(v)}</td>"
            for v in ({str(k): val for k, val in r.items()}.get(c) for c in cols)
        )
        + "</tr>"
        for r in rs
    )
    cap = f"<caption>{_inline(caption)}</caption>" if caption else ""
    return f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, obj)]


# ----------------------------------------------------------------------------------------------
# Static images
# ----------------------------------------------------------------------------------------------


def find_browser() -> str | None:
    """A Chrome/Chromium executable: ``$BROWSER_PATH`` if set and present, else one on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def image_export_problem() -> str | None:
    """Why static export cannot run here, or ``None`` if kaleido and a browser are available."""
    try:
        import kaleido
    except ImportError:
        return "Static image export needs the kaleido package, which is not installed."
    version = str(getattr(kaleido, "__version__", "1"))
    if version.startswith("0."):
        return None  # kaleido 0.x bundles its own Chromium
    if find_browser() is None:
        return (
            f"kaleido {version} needs a Chrome/Chromium binary and none was found "
            f"(BROWSER_PATH unset; looked on PATH for {', '.join(BROWSER_NAMES)})."
        )
    return None


def _safe_name(text: str, default: str) -> str:
    s = re.sub(r"[^\w.-]+", "_", text).strip("._")[:60]
    return s or default


def export_images(
    figures: Sequence[go.Figure] | Mapping[str, go.Figure],
    out_dir: str | os.PathLike[str],
    formats: Sequence[str] = ("png",),
    *,
    scale: float = 2.0,
) -> list[Path]:
    """Write each figure as a static image (``png``, ``svg``, ``pdf``, ``jpeg``, ``webp``).

    Uses kaleido; kaleido >= 1 drives a Chrome/Chromium binary (``BROWSER_PATH`` or one on
    PATH; it is passed to kaleido through ``BROWSER_PATH`` for the call).

    Args:
        figures: Figures, or ``{file stem: figure}``. Unnamed figures are called
            ``figure_01``, ... (plus their title).
        out_dir: Folder for the files (created).
        formats: File formats.
        scale: Pixel scale for raster formats.

    Returns:
        The files written.

    Raises:
        ImageExportError: kaleido or a browser is missing (the message says which and how to
            install it), or kaleido failed on a figure.
    """
    problem = image_export_problem()
    if problem is not None:
        raise ImageExportError(problem, hint=_INSTALL_HINT)
    allowed = {"png", "svg", "pdf", "jpeg", "jpg", "webp"}
    bad = [f for f in formats if f.lower() not in allowed]
    if bad:
        raise DataError(f"Unknown image format(s) {bad}.", hint=f"Use {sorted(allowed)}.")
    if isinstance(figures, Mapping):
        named = [
            (_safe_name(str(k), f"figure_{i:02d}"), f)
            for i, (k, f) in enumerate(figures.items(), 1)
        ]
    else:
        named = []
        for i, fig in enumerate(figures, 1):
            title = str(getattr(getattr(fig.layout, "title", None), "text", None) or "")
            named.append((_safe_name(f"figure_{i:02d}_{title[:40]}", f"figure_{i:02d}"), fig))
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    browser = find_browser()
    old = os.environ.get("BROWSER_PATH")
    if browser is not None and old is None:
        os.environ["BROWSER_PATH"] = browser
    written: list[Path] = []
    try:
        for stem, fig in named:
            for fmt in formats:
                path = target / f"{stem}.{fmt.lower()}"
                try:
                    fig.write_image(str(path), format=fmt.lower(), scale=scale)
                except Exception as err:  # kaleido's errors are many and undocumented
                    raise ImageExportError(
                        f"kaleido could not write {path.name}: {type(err).__name__}: {err}",
                        hint=_INSTALL_HINT,
                    ) from err
                written.append(path)
    finally:
        if browser is not None and old is None:
            os.environ.pop("BROWSER_PATH", None)
    return written


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

_CSS = """
:root { --ink:#1c2833; --muted:#5d6d7e; --line:#d5d8dc; --mold:#c0392b; --gold:#d4a017; }
* { box-sizing: border-box; }
body { margin:0; font-family: Inter, Helvetica, Arial, sans-serif; color:var(--ink);
       background:#fbfbfc; line-height:1.5; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
header h1 { margin: 0 0 4px; font-size: 28px; border-bottom: 3px solid var(--gold); }
.meta { color: var(--muted); font-size: 13px; margin: 0 0 18px; }
nav ol { columns: 2; font-size: 14px; color: var(--muted); }
nav a { color: var(--ink); }
section { background: white; border: 1px solid var(--line); border-radius: 8px;
          padding: 8px 24px 20px; margin: 20px 0; }
h2 { font-size: 21px; border-left: 4px solid var(--mold); padding-left: 10px; }
h3, h4, h5 { font-size: 16px; margin-bottom: 4px; }
.table-wrap { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 13px; min-width: 40%; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f4f6f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td code { font-size: 12px; }
.na { color: #aab7b8; }
figure.wl-figure { margin: 16px 0; border-top: 1px dashed var(--line); padding-top: 8px; }
pre { background: #f4f6f7; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { border-left: 4px solid var(--gold); background: #fef9e7; padding: 8px 12px; }
details summary { cursor: pointer; color: var(--muted); }
"""


def _figure_html(fig: Any, div_id: str) -> str:
    figure = fig if isinstance(fig, go.Figure) else go.Figure(fig)
    height = figure.layout.height or 480
    return figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{int(height)}px",
        config={"responsive": True, "displaylogo": False},
    )


def _table_parts(t: Any) -> tuple[str | None, list[Mapping[str, Any]]]:
    if isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str):
        return t[0], _rows(t[1])
    return None, _rows(t)


def _figure_title(fig: Any) -> str | None:
    layout = getattr(fig, "layout", None)
    title = getattr(getattr(layout, "title", None), "text", None)
    return None if title is None else str(title)


def build_report(
    out_dir: str | os.PathLike[str],
    *,
    title: str,
    config: Mapping[str, Any] | None = None,
    sections: Sequence[Section] = (),
    numbers: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    images: Sequence[str] = (),
) -> Path:
    """Write ``report.html`` (self-contained, works offline) and ``report.json`` into ``out_dir``.

    Args:
        out_dir: Folder (created).
        title: Report title.
        config: The run's configuration (nested dicts are flattened to dotted keys in the table;
            kept nested in the JSON).
        sections: The report's blocks, in order.
        numbers: Every number of the run (result objects welcome: they are converted with
            their ``to_dict()``); written to ``report.json`` and listed in the HTML.
        environment: Overrides/additions to :func:`environment_info` (e.g. the device the run
            used when the report is built elsewhere).
        images: Also export every figure as these static formats into ``out_dir/figures``
            (needs kaleido and Chrome/Chromium; when missing, the report says so and is still
            written).

    Returns:
        The path of ``report.html``.

    Raises:
        DataError: A section is not a :class:`Section`, or a table row is not a dict.
    """
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    env.update({str(k): str(v) for k, v in (environment or {}).items()})
    config = dict(config or {})
    numbers = dict(numbers or {})
    for s in sections:
        if not isinstance(s, Section):
            raise DataError(
                f"sections must hold Section objects, got {type(s).__name__}.",
                hint="Use welfare_lens.report.Section(title, text, tables=[...], figures=[...]).",
            )
    created = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()

    all_figures = [f for s in sections for f in s.figures]
    image_info: dict[str, Any] = {"formats": list(images), "files": [], "error": None}
    if images and all_figures:
        try:
            files = export_images(all_figures, target / "figures", images)
            image_info["files"] = [str(p.relative_to(target)) for p in files]
        except WelfareLensError as err:
            image_info["error"] = str(err)

    parts: list[str] = []
    nav = [
        '<li><a href="#configuration">Configuration</a></li>',
        '<li><a href="#environment">Environment</a></li>',
    ]
    parts.append('<section id="configuration"><h2>Configuration</h2>')
    if config:
        parts.append(table_html([{"key": k, "value": v} for k, v in _flatten(config)]))
    else:
        parts.append('<p class="na">No configuration given.</p>')
    parts.append("</section>")
    parts.append('<section id="environment"><h2>Environment</h2>')
    parts.append(table_html([{"component": k, "version / value": v} for k, v in env.items()]))
    parts.append("</section>")

    fig_no = 0
    json_sections = []
    for i, s in enumerate(sections, 1):
        sid = f"section-{i}"
        nav.append(f'<li><a href="#{sid}">{html.escape(s.title)}</a></li>')
        parts.append(f'<section id="{sid}"><h2>{html.escape(s.title)}</h2>')
        if s.text:
            parts.append(markdown_to_html(s.text))
        tables_json = []
        for t in s.tables:
            caption, rows = _table_parts(t)
            parts.append(table_html(rows, caption))
            tables_json.append({"caption": caption, "rows": rows})
        titles = []
        for fig in s.figures:
            fig_no += 1
            parts.append(
                f'<figure class="wl-figure" id="figure-{fig_no}">'
                + _figure_html(fig, f"wl-fig-{fig_no}")
                + "</figure>"
            )
            titles.append(_figure_title(fig))
        parts.append("</section>")
        json_sections.append(
            {"title": s.title, "text": s.text, "tables": tables_json, "figures": titles}
        )

    flat_numbers = _flatten(to_jsonable(numbers))
    nav.append('<li><a href="#numbers">Numbers</a></li>')
    parts.append('<section id="numbers"><h2>Numbers</h2>')
    parts.append(
        "<p>Every number of this report is also in <code>report.json</code> "
        "(NaN as <code>null</code>).</p>"
    )
    if image_info["error"]:
        parts.append(
            f'<p class="note">Static images were not exported: {html.escape(image_info["error"])}</p>'
        )
    elif image_info["files"]:
        links = ", ".join(
            f'<a href="{html.escape(p)}">{html.escape(p)}</a>' for p in image_info["files"]
        )
        parts.append(f"<p>Static images: {links}</p>")
    if flat_numbers:
        parts.append(
            f"<details open><summary>{len(flat_numbers)} values</summary>"
            + table_html([{"name": k, "value": v} for k, v in flat_numbers])
            + "</details>"
        )
    parts.append("</section>")

    head_js = ""
    if fig_no:
        from plotly.offline import get_plotlyjs

        head_js = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    version = html.escape(env.get("welfare_lens", "?"))
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="welfare_lens">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>{head_js}</head>\n"
        f"<body><main><header><h1>{html.escape(title)}</h1>"
        f'<p class="meta">Generated {created} by welfare_lens {version} · '
        f"{fig_no} figure(s) · works offline</p></header>"
        f"<nav><ol>{''.join(nav)}</ol></nav>\n" + "\n".join(parts) + "\n</main></body></html>\n"
    )
    html_path = target / "report.html"
    html_path.write_text(page, encoding="utf-8")
    payload = {
        "title": title,
        "created": created,
        "config": config,
        "environment": env,
        "sections": json_sections,
        "numbers": numbers,
        "images": image_info,
    }
    (target / "report.json").write_text(_dumps(payload) + "\n", encoding="utf-8")
    return html_path

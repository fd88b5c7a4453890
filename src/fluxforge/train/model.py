"""Build, save and load HF causal LMs.

Models are plain ``transformers`` Llama-style networks so that anything trained here
loads with ``AutoModelForCausalLM.from_pretrained`` and a real Llama/Qwen checkpoint
can be adapted by the same code. Loading goes through safetensors only: no pickled
code is ever executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from fluxforge.config import ModelConfig
from fluxforge.data.tokenize import load_tokenizer
from fluxforge.errors import FluxForgeError
from fluxforge.io import atomic_dir, write_json


class ModelLoadError(FluxForgeError):
    """A model directory that cannot be used; the message says which file and why."""


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(cfg.init_seed)
    try:
        return LlamaForCausalLM(config)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ModelLoadError(f"model config cannot be built ({cfg.model_dump()}): {err}") from err


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: PreTrainedModel, tok: PreTrainedTokenizerFast, out: Path, info: dict) -> None:
    """Atomically write an HF directory (safetensors + config + tokenizer) plus ``training_state/info.json``."""
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "training_state").mkdir()
        write_json(tmp / "training_state" / "info.json", info)


def load_model(path: Path | str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path}: no safetensors weights found (pickled checkpoints are refused)")
    hf_logging.disable_progress_bar()  # one bar per load is noise in stage logs
    try:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load model: {err}") from err
    return model, load_tokenizer(path)


def load_info(path: Path | str) -> dict:
    file = Path(path) / "training_state" / "info.json"
    return json.loads(file.read_text()) if file.exists() else {}

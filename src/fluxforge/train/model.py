"""Build, save and load HF causal LMs.

Models are plain ``transformers`` causal LMs so that anything trained here loads with
``AutoModelForCausalLM.from_pretrained``, and a real Llama/Qwen checkpoint can be adapted by
the same code: ``model.from_pretrained`` in params names a local directory or a hub id.

Two promises hold on every load path:

- No network at run time. Hub ids resolve from the local HF cache only
  (``local_files_only=True``); a model that is not cached is an error that says how to fetch
  it beforehand. Runs that silently download are runs that cannot be reproduced offline.
- No pickled code is executed. Weights come from safetensors only; a directory holding only
  ``pytorch_model.bin`` is refused, and other torch files go through ``weights_only=True``.
  A pickle can run arbitrary code when loaded (see torch.load's security note).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from fluxforge.config import ModelConfig
from fluxforge.data.tokenize import load_pretrained_tokenizer, load_tokenizer, read_index
from fluxforge.errors import FluxForgeError
from fluxforge.io import atomic_dir, write_json
from fluxforge.paths import UnsafeNameError, within

ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
# "org/name", "name" or "org/name@revision": anything else that does not exist is a wrong local path
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelLoadError(FluxForgeError):
    """A model directory that cannot be used; the message says which file and why."""


# ----------------------------------------------------------------------------- config builds
def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> PreTrainedModel:
    """A freshly initialised model of ``cfg.architecture`` with the sizes in ``cfg`` (seeded)."""
    if cfg.from_pretrained:
        raise ModelLoadError(f"model.from_pretrained is '{cfg.from_pretrained}': use init_model(), which loads it")
    if cfg.architecture not in ARCHITECTURES:
        raise ModelLoadError(f"model.architecture '{cfg.architecture}' is unknown; known: {sorted(ARCHITECTURES)}")
    sizes = {"vocab_size": vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
             "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
             "num_key_value_heads": cfg.num_heads, "max_position_embeddings": cfg.max_position_embeddings}
    check_sizes(sizes, "model")
    extra = {"use_sliding_window": False} if cfg.architecture == "qwen2" else {}
    try:
        config_cls, model_cls = ARCHITECTURES[cfg.architecture]
        config = config_cls(**sizes, tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
                            pad_token_id=pad_id, **extra)
        torch.manual_seed(cfg.init_seed)
        return model_cls(config)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ModelLoadError(f"model config cannot be built ({cfg.model_dump()}): {err}") from err


def check_sizes(sizes: dict[str, Any], where: str) -> None:
    """Refuse sizes no transformer can have, naming the key, before torch fails obscurely."""
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings"):
        value = sizes.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ModelLoadError(f"{where}: {key} must be a positive integer (got {value!r})")
    hidden, heads, kv = sizes.get("hidden_size"), sizes.get("num_attention_heads"), sizes.get("num_key_value_heads")
    if hidden and heads and hidden % heads and not sizes.get("head_dim"):
        raise ModelLoadError(f"{where}: hidden_size ({hidden}) must be divisible by num_attention_heads ({heads})")
    if heads and kv and heads % kv:
        raise ModelLoadError(f"{where}: num_attention_heads ({heads}) must be divisible by num_key_value_heads ({kv})")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- base checkpoints
def init_model(cfg: ModelConfig, tokens_index: dict | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """The model a pretrain run starts from, and the base model's tokenizer when there is one.

    From config: needs the tokenize stage's ``index.json`` (vocab_size, eos_id, pad_id); no
    tokenizer is returned because the pipeline trained its own. From a checkpoint: the tokens
    must have been made with the base model's tokenizer (see :func:`base_tokenizer`), which
    is checked against ``tokens_index`` when given. Weights load as float32 by default because
    training keeps fp32 master weights (AdamW on bf16 weights loses small updates).
    """
    if not cfg.from_pretrained:
        if tokens_index is None:
            raise ModelLoadError("a model built from config needs the tokenize stage's index.json (vocab and ids)")
        return build_model(cfg, tokens_index["vocab_size"], tokens_index["eos_id"], tokens_index["pad_id"]), None
    path = resolve_pretrained(cfg.from_pretrained)
    model = load_pretrained(path, dtype=dtype)
    tok = load_pretrained_tokenizer(path)
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise ModelLoadError(f"{path}: the tokenizer has {len(tok)} tokens but the model's embedding only {rows} rows")
    if tokens_index is not None:
        check_tokens_match(tok, tokens_index, cfg.from_pretrained)
    return model, tok


def new_model(cfg: ModelConfig, token_dir: Path | str) -> PreTrainedModel:
    """A model from its config (vocabulary from the tokenize stage's ``token_dir``), or the base checkpoint."""
    return init_model(cfg, read_index(token_dir))[0]


def base_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase | None:
    """The tokenizer the tokenize stage must use: the base model's, or None to train one."""
    return load_pretrained_tokenizer(resolve_pretrained(cfg.from_pretrained)) if cfg.from_pretrained else None


def check_tokens_match(tok: PreTrainedTokenizerBase, tokens_index: dict, name: str) -> None:
    """Token streams made by another tokenizer would feed the base model meaningless ids."""
    found = {"vocab_size": tokens_index.get("vocab_size"), "eos_id": tokens_index.get("eos_id")}
    wanted = {"vocab_size": len(tok), "eos_id": tok.eos_token_id}
    if found != wanted:
        raise ModelLoadError(f"the token streams were made with another tokenizer ({found}) than base model '{name}' "
                             f"({wanted}); rerun the tokenize stage so it uses the base model's tokenizer")


def resolve_pretrained(name: str, cache_dir: Path | str | None = None) -> Path:
    """A local directory as given, or a hub id's snapshot in the local HF cache (never downloaded).

    A name that exists on disk is a local path. Otherwise a name shaped like a hub id
    ("org/name", optionally "@revision") is looked up with ``local_files_only=True`` in
    ``cache_dir`` (default: HF_HUB_CACHE / HF_HOME, as every HF tool uses).
    """
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"{name}: from_pretrained must be a model directory, not a file")
        return local
    if name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
        raise ModelLoadError(f"{name}: no such model directory")
    from huggingface_hub import constants, snapshot_download

    repo, _, revision = name.partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=cache_dir, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - LocalEntryNotFoundError and friends; all mean "not cached"
        cache = cache_dir or constants.HF_HUB_CACHE
        rev = f" --revision {revision}" if revision else ""
        raise ModelLoadError(
            f"{name}: not a local directory and not in the local Hugging Face cache ({cache}). Runs never download "
            f"(reproducible and offline by design), so fetch it once beforehand: `hf download {repo}{rev}` "
            f"(`huggingface-cli download {repo}{rev}` on older huggingface_hub), with the same HF_HOME / "
            f"HF_HUB_CACHE as the run; or set from_pretrained to a local directory. ({type(err).__name__})"
        ) from err


def read_config(path: Path) -> PretrainedConfig:
    """The checkpoint's config, refused unless it is a decoder-only causal LM with sane sizes."""
    file = path / "config.json"
    if not file.exists():
        raise ModelLoadError(f"{path}: not a model directory (no config.json)")
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{file}: model_type {model_type!r} is not a causal LM architecture known to "
                             f"transformers (e.g. 'llama', 'qwen2', 'mistral')")
    archs = raw.get("architectures") or []
    causal = [a for a in archs if isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel"))]
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not raw.get("is_decoder")
    if (archs and not causal) or encoder or raw.get("is_encoder_decoder"):
        raise ModelLoadError(f"{file}: architectures {archs} (model_type '{model_type}') is not a decoder-only causal "
                             f"LM (an encoder such as BERT, or another head); expected e.g. LlamaForCausalLM")
    check_sizes(raw.get("text_config") or raw, str(file))
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"{file}: cannot be used as a model config: {err}") from err


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory; pickle-only checkpoints are refused."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({err!r})") from err
        try:
            shards = [within(path, n) for n in names]  # names from a downloaded file: they stay in the directory
        except (UnsafeNameError, TypeError) as err:
            raise ModelLoadError(f"{index}: weight_map names a shard outside the model directory ({err})") from None
        missing = [n for n, f in zip(names, shards, strict=True) if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index}: lists shards that are missing: {missing}")
        return shards
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    found = f"only pickle files {pickles}, which can run code when loaded, so they are never loaded" if pickles else "none"
    raise ModelLoadError(f"{path}: no safetensors weights ({found}). Convert the checkpoint once with a tool you "
                         f"trust, e.g. model.save_pretrained(dir, safe_serialization=True)")


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape from the safetensors headers (reads no tensor data); a corrupt file is named."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                    shapes[key] = tuple(fh.get_slice(key).get_shape())
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: both mean an unusable file
            raise ModelLoadError(f"{file}: corrupt or truncated safetensors file ({err}); re-download or re-save it") from err
    return shapes


def load_pretrained(path: Path | str, dtype: torch.dtype | str = "auto") -> PreTrainedModel:
    """Load a causal LM directory after checking its config, files and every tensor's shape."""
    path = Path(path)
    read_config(path)
    tensor_shapes(weight_files(path))  # corrupt headers and pickle-only dirs fail here, by name
    hf_logging.disable_progress_bar()  # one bar per load is noise in stage logs
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=False,
            ignore_mismatched_sizes=True, output_loading_info=True)  # mismatches are reported below, by name
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load model: {err}") from err
    order = {k: i for i, k in enumerate(model.state_dict())}
    if info["mismatched_keys"]:
        key, found, wanted = min(info["mismatched_keys"], key=lambda m: order.get(m[0], len(order)))
        raise ModelLoadError(_mismatch(path, key, tuple(found), tuple(wanted), len(info["mismatched_keys"])))
    for kind in ("missing_keys", "unexpected_keys"):
        if info[kind]:
            raise ModelLoadError(_key_error(path, kind, sorted(info[kind], key=lambda k: order.get(k, len(order)))))
    return model


def load_weights(model: torch.nn.Module, path: Path | str, strict: bool = True) -> list[str]:
    """Load a safetensors checkpoint (a file or an HF directory) into an existing model.

    Every shape is checked before anything is copied, so a checkpoint of another size fails
    with the first mismatching tensor (in the model's order) and both shapes instead of a
    half-loaded model. Tied weights (lm_head = embed_tokens) may be absent from the file.
    ``strict=False`` allows missing/unexpected names (shapes must still agree); returns the
    names that were not loaded.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such checkpoint")
    files = weight_files(path) if path.is_dir() else [path]
    found = tensor_shapes(files)
    state = model.state_dict(keep_vars=True)
    for key, tensor in state.items():
        if key in found and found[key] != tuple(tensor.shape):
            bad = sum(1 for k, t in state.items() if k in found and found[k] != tuple(t.shape))
            raise ModelLoadError(_mismatch(path, key, found[key], tuple(tensor.shape), bad))
    names: dict[int, list[str]] = {}  # tied weights: one tensor under several names, any one suffices
    for key, tensor in state.items():
        names.setdefault(id(tensor), []).append(key)
    missing = [group[0] for group in names.values() if not any(k in found for k in group)]
    unexpected = [k for k in found if k not in state]
    if strict and missing:
        raise ModelLoadError(_key_error(path, "missing_keys", missing))
    if strict and unexpected:
        raise ModelLoadError(_key_error(path, "unexpected_keys", unexpected))
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118
                    if key in state:
                        state[key].copy_(fh.get_tensor(key))
    return missing + unexpected


def _mismatch(path: Path, key: str, found: tuple, wanted: tuple, count: int) -> str:
    return (f"{path}: tensor '{key}' has shape {list(found)} in the checkpoint but the model expects {list(wanted)} "
            f"({count} tensor{'s' if count > 1 else ''} differ): a checkpoint of another size or architecture")


def _key_error(path: Path, kind: str, keys: list[str]) -> str:
    what = "weights the model needs are not in the checkpoint" if kind == "missing_keys" else \
        "checkpoint tensors have no place in the model"
    return f"{path}: {len(keys)} {what}, first '{keys[0]}': a checkpoint of another architecture"


def safe_torch_load(file: Path | str) -> Any:
    """``torch.load`` restricted to tensors and plain containers: a pickle that runs code is refused."""
    import pickle

    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ModelLoadError(f"{file}: refused or unreadable torch file (only tensors and plain data are loaded, "
                             f"never pickled code): {err}") from err


# ----------------------------------------------------------------------------- save / load trained models
TRAINER_STATE = "trainer.pt"  # optimizer / grad-scaler / RNG state (tensors only) for a later task's init_mode


def save_model(model: PreTrainedModel, tok: PreTrainedTokenizerBase, out: Path, info: dict,
               trainer_state: dict | None = None) -> None:
    """A trained language model's directory: :func:`write_hf_dir` with its tokenizer."""
    write_hf_dir(model, out, info, tok, trainer_state)


def write_hf_dir(model: PreTrainedModel, out: Path | str, info: Mapping, tok: PreTrainedTokenizerBase | None = None,
                 trainer_state: dict | None = None) -> None:
    """Atomically write an HF directory (safetensors + config [+ tokenizer]) plus ``training_state/``: the one way
    every stage writes a model (language, image, averaged or merged).

    ``training_state/info.json`` is the lineage; ``training_state/trainer.pt`` (when given) the optimizer state
    that ``init_mode: weights_optimizer | full`` continues from, read back with ``weights_only=True``.
    """
    with atomic_dir(Path(out)) as tmp, deepspeed_left_unloaded():
        model.save_pretrained(tmp, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp)
        (tmp / "training_state").mkdir()
        write_json(tmp / "training_state" / "info.json", dict(info))
        if trainer_state:
            torch.save(trainer_state, tmp / "training_state" / TRAINER_STATE)


@contextlib.contextmanager
def deepspeed_left_unloaded() -> Iterator[None]:
    """Keep ``save_pretrained`` from importing DeepSpeed when the process has not.

    ``save_pretrained`` unwraps the model with accelerate's ``extract_model_from_parallel``, which imports DeepSpeed
    whenever it is installed, only to ask whether the model is a ``DeepSpeedEngine``. On a CPU machine DeepSpeed then
    logs "[WARNING] Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
    at the end of every training stage, which reads as a fault to the person running it (and costs 0.15 s once
    torch and transformers are loaded). A model can only be wrapped in a DeepSpeed engine if DeepSpeed is already
    imported, so while it is not, accelerate is told it is absent for the length of the save; a process that did
    load it (a ZeRO stage) unwraps as before.
    """
    other = sys.modules.get("accelerate.utils.other")
    if "deepspeed" in sys.modules or other is None or not hasattr(other, "is_deepspeed_available"):
        yield
        return
    probe = other.is_deepspeed_available
    other.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        other.is_deepspeed_available = probe


def load_model(path: Path | str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model this pipeline saved (or any causal LM directory) with its tokenizer."""
    path = Path(path)
    model = load_pretrained(path)
    # save_model writes tokenizer_config.json (eos/pad names), which base-model tokenizers need too
    tok = load_pretrained_tokenizer(path) if (path / "tokenizer_config.json").exists() else load_tokenizer(path)
    return model, tok



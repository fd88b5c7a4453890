"""Models from config or from a base checkpoint (local dir or HF cache), and every bad input refused by name.

All real: tiny transformers models saved with save_pretrained, a real HF hub cache layout in
tmp, real safetensors files cut short or overwritten, and a real pickle that would run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from fluxforge.config import ModelConfig, ParamsError, parse_params
from fluxforge.data.tokenize import encode_stream, load_pretrained_tokenizer, train_tokenizer
from fluxforge.train.model import (
    ModelLoadError,
    base_tokenizer,
    build_model,
    init_model,
    load_model,
    load_pretrained,
    load_weights,
    resolve_pretrained,
    safe_torch_load,
    save_model,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64)
TEXTS = ["the gateway product ships in march", "vendors patch the firewall every year", "a base model reads text"] * 30


SPECIALS = {  # as the real checkpoints ship them: Llama has no pad token; Qwen2 pads with <|endoftext|>, no bos
    "llama": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "qwen2": dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
}


def _base_tokenizer(architecture: str = "llama") -> PreTrainedTokenizerFast:
    """A byte-level BPE with the base model family's special tokens, unlike the pipeline's own."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(SPECIALS[architecture].values()))
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS[architecture])


def _base_model_dir(path: Path, architecture: str = "llama", seed: int = 7) -> Path:
    """What `hf download meta-llama/...` or `Qwen/...` leaves on disk, in miniature: config, safetensors, tokenizer."""
    tok = _base_tokenizer(architecture)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    config = cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    dtype = torch.bfloat16 if architecture == "qwen2" else torch.float32  # Qwen ships bf16 weights
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    if architecture == "qwen2":  # Qwen checkpoints name their tokenizer class, so AutoTokenizer picks Qwen2Tokenizer
        settings = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "Qwen2Tokenizer"}))
    return path


def _hub_cache(cache: Path, repo: str, source: Path, commit: str = "a" * 40) -> Path:
    """The real huggingface_hub cache layout: blobs by hash, snapshot symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in source.iterdir():
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snap


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- from config
@pytest.mark.parametrize("arch, cls, qkv_bias", [("llama", "LlamaForCausalLM", False), ("qwen2", "Qwen2ForCausalLM", True)])
def test_build_from_config_saves_and_reloads(tmp_path, arch, cls, qkv_bias):
    cfg = ModelConfig(architecture=arch, **TINY)
    model = build_model(cfg, 300, 0, 1)
    assert type(model).__name__ == cls
    assert (model.model.layers[0].self_attn.q_proj.bias is not None) == qkv_bias  # Qwen2 blocks carry q/k/v biases
    assert all(torch.equal(a, b) for a, b in zip(_state(model).values(), _state(build_model(cfg, 300, 0, 1)).values()))
    ids = torch.tensor([[5, 6, 7, 8]])
    tok = train_tokenizer(TEXTS + ["build 2024 patch 17 of 123"] * 20, 300)  # the pipeline's own tokenizer
    save_model(model, tok, tmp_path / "m", {"name": "x"})
    loaded, loaded_tok = load_model(tmp_path / "m")
    assert type(loaded).__name__ == cls and (loaded_tok.eos_token, len(loaded_tok)) == (tok.eos_token, len(tok))
    # exactly the saved tokenizer, not one rebuilt for the architecture (Qwen2Tokenizer splits digits apart)
    assert loaded_tok("build 2024 patch 17 of 123")["input_ids"] == tok("build 2024 patch 17 of 123")["input_ids"]
    assert torch.allclose(model(ids).logits, loaded(ids).logits)


SAVE_TWICE = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tiny import tiny_model
from fluxforge.train.model import write_hf_dir
import accelerate.utils.other as accelerate_other

def save(out):
    write_hf_dir(tiny_model(), out, {"name": "x"})
    return hashlib.sha256((Path(out) / "model.safetensors").read_bytes()).hexdigest()

plain = save(sys.argv[2])
seen = {"deepspeed_after_save": "deepspeed" in sys.modules, "probe_restored": accelerate_other.is_deepspeed_available()}
import deepspeed  # a ZeRO stage's process: DeepSpeed loaded before the save
seen["same_file_with_deepspeed"] = save(sys.argv[3]) == plain
print(json.dumps(seen))
"""


def test_saving_a_model_leaves_deepspeed_unloaded_unless_the_process_loaded_it(tmp_path):
    """save_pretrained unwraps through accelerate, which imports DeepSpeed (and on CPU its "Setting accelerator to
    CPU ... unable to detect it" warning, at the end of every training stage) to ask whether the model is a DeepSpeed
    engine; write_hf_dir keeps it out of a process that has not loaded it, puts accelerate's probe back, and writes
    the same file as when DeepSpeed is there."""
    proc = subprocess.run([sys.executable, "-c", SAVE_TWICE, str(ROOT / "tests"), str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"deepspeed_after_save": False, "probe_restored": True, "same_file_with_deepspeed": True}, seen


def test_params_refuse_sizes_next_to_from_pretrained_and_bad_architectures(tiny_raw):
    ok = dict(tiny_raw, model={"from_pretrained": "meta-llama/Llama-3.2-1B"})
    assert parse_params(ok).model.from_pretrained == "meta-llama/Llama-3.2-1B"
    with pytest.raises(ParamsError, match=r"model: .*from_pretrained is 'org/x'.*remove \['hidden_size'\]"):
        parse_params(dict(tiny_raw, model={"from_pretrained": "org/x", "hidden_size": 64}))
    with pytest.raises(ParamsError, match=r"model.architecture"):
        parse_params(dict(tiny_raw, model={**tiny_raw["model"], "architecture": "gpt5"}))
    with pytest.raises(ParamsError, match=r"model.hidden_size"):
        parse_params(dict(tiny_raw, model={**tiny_raw["model"], "hidden_size": -32}))


@pytest.mark.parametrize("bad, message", [
    (dict(hidden_size=30), r"model: hidden_size \(30\) must be divisible by num_attention_heads \(4\)"),
    (dict(architecture="gpt5"), r"model.architecture 'gpt5' is unknown; known: \['llama', 'qwen2'\]"),
    (dict(intermediate_size=-64), r"model: intermediate_size must be a positive integer \(got -64\)"),
])
def test_build_refuses_configs_that_cannot_be_built(bad, message):
    # model_construct skips pydantic, as code that builds a ModelConfig by hand might: build_model still refuses
    cfg = ModelConfig.model_construct(**{**ModelConfig().model_dump(), **TINY, **bad})
    with pytest.raises(ModelLoadError, match=message):
        build_model(cfg, 300, 0, 1)


# ----------------------------------------------------------------------------- from a base checkpoint
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_from_pretrained_local_dir_keeps_weights_and_tokenizer(tmp_path, arch):
    base = _base_model_dir(tmp_path / "base", arch)
    model, tok = init_model(ModelConfig(from_pretrained=str(base)))
    ref = load_pretrained(base)  # dtype "auto": as stored
    assert type(model).__name__ == type(ref).__name__
    assert (model.dtype, ref.dtype) == (torch.float32, torch.bfloat16 if arch == "qwen2" else torch.float32)
    assert all(torch.equal(a, b.float()) for a, b in zip(_state(model).values(), _state(ref).values()))
    eos = SPECIALS[arch]["eos_token"]
    assert (tok.eos_token, tok.pad_token) == (eos, eos)  # Llama has no pad token: EOS stands in
    assert len(tok) == ref.get_input_embeddings().num_embeddings  # no token added on load
    # the tokenize stage's round trip: base tokenizer -> saved beside the streams -> loaded by training, same ids
    tokens_dir = tmp_path / "tokens"
    base_tokenizer(ModelConfig(from_pretrained=str(base))).save_pretrained(tokens_dir)
    again = load_pretrained_tokenizer(tokens_dir)
    assert type(again) is type(tok) and again(TEXTS[0])["input_ids"] == tok(TEXTS[0])["input_ids"]
    assert base_tokenizer(ModelConfig(**TINY)) is None  # from config: the pipeline trains its own
    stream = encode_stream(tok, TEXTS[:2])
    assert stream[-1] == tok.eos_token_id and int(stream.max()) < model.get_input_embeddings().num_embeddings
    index = {"vocab_size": len(tok), "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id}
    assert init_model(ModelConfig(from_pretrained=str(base)), index)[1].eos_token_id == tok.eos_token_id
    with pytest.raises(ModelLoadError, match=r"made with another tokenizer .*'vocab_size': 2048.*rerun the tokenize"):
        init_model(ModelConfig(from_pretrained=str(base)), {"vocab_size": 2048, "eos_id": 0, "pad_id": 1})


def test_from_hub_id_resolves_from_the_local_cache_only(tmp_path):
    base = _base_model_dir(tmp_path / "base")
    snap = _hub_cache(tmp_path / "hf" / "hub", "acme/tiny-llama", base)
    assert resolve_pretrained("acme/tiny-llama", cache_dir=tmp_path / "hf" / "hub") == snap
    assert resolve_pretrained(f"acme/tiny-llama@{'a' * 40}", cache_dir=tmp_path / "hf" / "hub") == snap
    # a fresh process that only knows HF_HOME and offline mode, as a stage run would
    code = ("from fluxforge.config import ModelConfig; from fluxforge.train.model import init_model, count_params;"
            "m, t = init_model(ModelConfig(from_pretrained='acme/tiny-llama')); print(count_params(m), t.eos_token)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    params = sum(p.numel() for p in load_pretrained(base).parameters())
    assert out.stdout.split()[-2:] == [str(params), "</s>"]


def test_hub_id_not_in_the_cache_says_how_to_fetch_it(tmp_path):
    (tmp_path / "hub").mkdir()
    with pytest.raises(ModelLoadError, match=r"acme/absent: not a local directory and not in the local Hugging Face cache"
                       r".*never download.*`hf download acme/absent`"):
        resolve_pretrained("acme/absent", cache_dir=tmp_path / "hub")
    with pytest.raises(ModelLoadError, match=r"--revision v2"):
        resolve_pretrained("acme/absent@v2", cache_dir=tmp_path / "hub")
    with pytest.raises(ModelLoadError, match=r"\./models/nope: no such model directory"):
        resolve_pretrained("./models/nope")


# ----------------------------------------------------------------------------- bad checkpoints
@pytest.mark.parametrize("edit, message", [
    ({"num_attention_heads": 5, "num_key_value_heads": 5, "head_dim": None},
     r"config.json: hidden_size \(32\) must be divisible by num_attention_heads \(5\)"),
    ({"num_key_value_heads": 3}, r"config.json: num_attention_heads \(4\) must be divisible by num_key_value_heads \(3\)"),
    ({"model_type": "gpt5"}, r"config.json: model_type 'gpt5' is not a causal LM architecture"),
    ({"intermediate_size": -64}, r"config.json: intermediate_size must be a positive integer \(got -64\)"),
])
def test_checkpoint_configs_that_cannot_be_built_are_named(tmp_path, edit, message):
    base = _base_model_dir(tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ModelLoadError, match=message):
        init_model(ModelConfig(from_pretrained=str(base)))


def test_bad_config_json_is_named(tmp_path):
    base = _base_model_dir(tmp_path / "base")
    (base / "config.json").write_text('{"model_type": "llama", "hidden_size": 32,')
    with pytest.raises(ModelLoadError, match=r"base/config.json: not valid JSON \(Expecting property name"):
        load_pretrained(base)


def test_an_encoder_checkpoint_is_refused(tmp_path):
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert", safe_serialization=True)
    with pytest.raises(ModelLoadError, match=r"architectures \['BertForMaskedLM'\] \(model_type 'bert'\) is not a decoder-only"):
        load_pretrained(tmp_path / "bert")


def test_shape_mismatch_names_the_first_tensor_and_both_shapes(tmp_path):
    base = _base_model_dir(tmp_path / "base")
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    wider = build_model(ModelConfig(**{**TINY, "hidden_size": 48}), vocab, 2, 2)
    before = _state(wider)
    with pytest.raises(ModelLoadError, match=rf"tensor 'model.embed_tokens.weight' has shape \[{vocab}, 32\] in the "
                                             rf"checkpoint but the model expects \[{vocab}, 48\]"):
        load_weights(wider, base)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), _state(wider).values())), "nothing half-loaded"
    # the same checkpoint under a config.json that claims another size: caught on the from_pretrained path too
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(ModelLoadError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \[64, 32\] in the "
                                             r"checkpoint but the model expects \[96, 32\] \(6 tensors differ\)"):
        load_pretrained(base)


def test_load_weights_fills_a_matching_model_including_tied_weights(tmp_path):
    src = build_model(ModelConfig(**TINY, init_seed=1), 300, 0, 1)
    save_model(src, _base_tokenizer(), tmp_path / "m", {})
    dst = build_model(ModelConfig(**TINY, init_seed=2), 300, 0, 1)
    assert not torch.equal(src.model.embed_tokens.weight, dst.model.embed_tokens.weight)
    assert load_weights(dst, tmp_path / "m") == []
    assert all(torch.equal(a, b) for a, b in zip(_state(src).values(), _state(dst).values()))
    assert dst.lm_head.weight.data_ptr() == dst.model.embed_tokens.weight.data_ptr()  # still tied
    qwen = build_model(ModelConfig(architecture="qwen2", **TINY), 300, 0, 1)
    with pytest.raises(ModelLoadError, match=r"weights the model needs are not in the checkpoint, first "
                                             r"'model.layers.0.self_attn.q_proj.bias'"):
        load_weights(qwen, tmp_path / "m")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_is_named(tmp_path, damage):
    base = _base_model_dir(tmp_path / "base")
    file = base / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    with pytest.raises(ModelLoadError, match=r"base/model.safetensors: corrupt or truncated safetensors file"):
        load_pretrained(base)
    with pytest.raises(ModelLoadError, match=r"model.safetensors: corrupt"):
        load_weights(build_model(ModelConfig(**TINY), 300, 0, 1), file)


# ----------------------------------------------------------------------------- no pickled code, ever
class _Payload:
    """Unpickling this object creates a file: the stand-in for any code an attacker wants to run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path):
    base = _base_model_dir(tmp_path / "base")
    marker = tmp_path / "pwned"
    state = {**load_pretrained(base).state_dict(), "x": _Payload(marker)}
    (base / "model.safetensors").unlink()
    torch.save(state, base / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"no safetensors weights \(only pickle files \['pytorch_model.bin'\]"):
        init_model(ModelConfig(from_pretrained=str(base)))
    with pytest.raises(ModelLoadError, match=r"pickle"):
        load_model(base)
    assert not marker.exists()


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3, "evil": _Payload(marker)}, tmp_path / "state.pt")
    with pytest.raises(ModelLoadError, match=r"state.pt: refused or unreadable torch file"):
        safe_torch_load(tmp_path / "state.pt")
    assert not marker.exists()
    torch.save({"model": {"w": torch.ones(2)}, "step": 3}, tmp_path / "clean.pt")
    assert safe_torch_load(tmp_path / "clean.pt")["step"] == 3
    # the file really is malicious: an unrestricted load runs the payload (in a child, to keep this process clean)
    code = f"import torch; torch.load({str(tmp_path / 'state.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    assert marker.exists()


def test_base_tokenizer_missing_or_without_eos_is_named(tmp_path):
    base = _base_model_dir(tmp_path / "base")
    (base / "tokenizer.json").unlink()
    from fluxforge.errors import DataError

    with pytest.raises(DataError, match=r"base: no tokenizer files"):
        load_pretrained_tokenizer(base)

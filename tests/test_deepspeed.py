"""DeepSpeed ZeRO 1/2/3 through the same ``train()`` as the plain loop, on CPU with gloo and a tiny Llama.

Tolerances (measured on this file's runs, CPU float32; grad_clip 0.5 is active: the step-0 gradient
norm is 1.15):
* ZeRO vs plain, one process: per-step loss within 1e-5 relative (measured <= 1.3e-7 for stages 1-3).
  Not bitwise, because DeepSpeed computes the clip norm over its flat partitions and divides by
  (norm + 1e-6) / clip, where torch multiplies by clip / (norm + 1e-6): one float32 rounding (~6e-8)
  per step. 1e-5 is ~100x that and far below what a wrong LR, weight-decay group or clip value does
  to a loss of ~4 (the steps change it by up to 0.36).
* 2 ranks vs 1 rank: the gradient is the mean of two half-batch means (gloo all-reduce) instead of one
  full-batch mean, again float32 rounding; the same 1e-5 (measured <= 1.2e-7).
* Consolidated HF dir vs the engine's own module at the end of training: identical logits (the fp32
  masters are what ZeRO copies into the module, so the weights are bitwise the same).
* ZeRO-3 resume from its DeepSpeed checkpoint: exact (losses and weights bitwise).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fluxforge.config import TrainConfig
from fluxforge.train.engine import (
    CONFIG_ENV,
    INFRA_CONFIGS,
    SHM_OP,
    DeepSpeedEngine,
    EngineError,
    deepspeed_config,
    fit_buckets,
    init_distributed,
)
from fluxforge.train.loop import train
from fluxforge.train.model import build_model
from fluxforge.train.sampler import MixtureSampler
from resume_proof import RecordingSampler, assert_resumed
from tiny import TINY

STAGES = (1, 2, 3)
LOSS_RTOL = 1e-5
DS_ENV = ("DS_ACCELERATOR", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", CONFIG_ENV)


def sampler() -> MixtureSampler:
    rng = np.random.default_rng(0)
    streams = {"a": np.tile(np.arange(10, 40, dtype=np.uint16), 200), "b": rng.integers(10, 60, 3000).astype(np.uint16)}
    return MixtureSampler(streams, {"a": 0.7, "b": 0.3}, seq_len=16, batch_size=4, seed=1)


def cfg(**kw) -> TrainConfig:
    base = dict(slices=["x"], steps=12, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=3, log_every=1, grad_clip=0.5)
    return TrainConfig(**{**base, **kw})


# Each torchrun rank imports this file for the same data, model and params as the in-process runs.
RANKS = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import torch.distributed as dist
from test_deepspeed import TINY, cfg, sampler
from fluxforge.train.loop import causal_lm_loss, train
from fluxforge.train.model import build_model
out, configs = sys.argv[2], sys.argv[3:]
seen = []  # the rows this rank trained on at each step of the first run

def objective(model, batch):
    if len(seen) < 12:
        seen.append(batch.tokens.tolist())
    return causal_lm_loss(model, batch)

hist = {}
for stage, path in zip((1, 2, 3), configs):
    hist[stage] = train(build_model(TINY, 64, 0, 1), sampler(), cfg(deepspeed={"stage": stage, "config": path}), objective)
json.dump(seen, open(f"{out}.rank{dist.get_rank()}", "w"))
if dist.get_rank() == 0:
    json.dump({"world": dist.get_world_size(), "hist": hist}, open(out, "w"))
'''


def fp32_config(stage: int, folder: Path) -> str:
    """infra's zero{stage}.json with bf16 off: the comparison with the fp32 plain loop is then exact up to rounding."""
    config = json.loads((INFRA_CONFIGS / f"zero{stage}.json").read_text())
    config["bf16"] = {"enabled": False}
    path = folder / f"zero{stage}-fp32.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def ds_env(tmp_path_factory):
    """DS_ACCELERATOR=cpu and the single-rank variables init_distributed sets, restored after this module.

    TORCH_EXTENSIONS_DIR is an empty folder, as in a new environment, where DeepSpeed would JIT-compile an op."""
    saved = {k: os.environ.get(k) for k in (*DS_ENV, "TORCH_EXTENSIONS_DIR", "FLUXFORGE_PROGRESS")}
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ.pop(CONFIG_ENV, None)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path_factory.mktemp("torch_extensions"))
    os.environ["FLUXFORGE_PROGRESS"] = "0"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ds_env):
    """The plain loop and ZeRO 1/2/3 in this process (a world of one); each ZeRO run keeps its final logits."""
    folder = tmp_path_factory.mktemp("ds")
    probe_x = sampler().batch(999).tokens[:, :-1]
    out = {"plain": train(build_model(TINY, 64, 0, 1), sampler(), cfg()), "folder": folder}
    for stage in STAGES:
        logits: list[torch.Tensor] = []

        def probe(model, logits=logits):  # noqa: ANN001 - at the last step: the engine's module, still sharded
            logits.append(model(input_ids=probe_x).logits.detach().clone())
            return {}

        model = build_model(TINY, 64, 0, 1)
        config = fp32_config(stage, folder)
        hist = train(model, sampler(), cfg(deepspeed={"stage": stage, "config": config}), probe=probe, probe_every=12)
        model.save_pretrained(folder / f"hf{stage}", safe_serialization=True)
        out[stage] = {"hist": hist, "logits": logits[-1], "config": config, "model": model}
    return out


def _rel(a: list[dict], b: list[dict]) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    return max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_zero_stage_follows_the_plain_loss_curve(runs, stage):
    plain, ds = runs["plain"], runs[stage]["hist"]
    assert plain[-1]["loss"] < plain[0]["loss"] - 0.05, "the run must learn, or equal curves prove nothing"
    assert _rel(ds, plain) < LOSS_RTOL
    assert [r["lr"] for r in ds] == pytest.approx([r["lr"] for r in plain], rel=1e-12)  # the same schedule
    # the caller's module is plain again: fp32, full shapes, no ZeRO attributes
    p = runs[stage]["model"].model.embed_tokens.weight
    assert p.dtype == torch.float32 and p.shape == (64, 32) and not hasattr(p, "ds_id")


@pytest.mark.slow
def test_training_never_compiles_deepspeeds_cpu_shared_memory_op(runs):
    """The ZeRO runs started DeepSpeed's CPU backend in a new TORCH_EXTENSIONS_DIR; its shm op (inference only) would
    have been JIT-compiled there (23 s on 2 cores) had init_distributed not switched it off."""
    built = [p.name for p in Path(os.environ["TORCH_EXTENSIONS_DIR"]).rglob("*") if SHM_OP in p.name]
    assert built == []


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_consolidated_hf_dir_gives_the_engines_logits(runs, stage):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(runs["folder"] / f"hf{stage}", use_safetensors=True).eval()
    with torch.no_grad():
        logits = loaded(input_ids=sampler().batch(999).tokens[:, :-1]).logits
    assert torch.equal(logits, runs[stage]["logits"])


@pytest.mark.slow
def test_two_torchrun_ranks_match_one_process(runs, tmp_path):
    """2 ranks x micro-batch 2 = the one-process batch of 4; each rank takes its half of the sampler's batch."""
    env = {k: v for k, v in os.environ.items() if k not in DS_ENV}
    env.update(DS_ACCELERATOR="cpu", FLUXFORGE_THREADS="1", FLUXFORGE_PROGRESS="0", PYTHONWARNINGS="ignore")
    out, script = tmp_path / "ranks.json", tmp_path / "ranks.py"
    script.write_text(RANKS)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(Path(__file__).parent), str(out), *(runs[s]["config"] for s in STAGES)],
                          text=True, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    for step in (0, 11):  # rank r trained on rows 2r, 2r+1 of the sampler's batch of 4
        full = sampler().batch(step).tokens.tolist()
        assert [json.loads(Path(f"{out}.rank{r}").read_text())[step] for r in (0, 1)] == [full[:2], full[2:]]
    for stage in STAGES:
        assert _rel(result["hist"][str(stage)], runs[stage]["hist"]) < LOSS_RTOL, stage


@pytest.mark.slow
def test_interrupted_zero3_run_resumes_from_its_deepspeed_checkpoint(runs, tmp_path):
    config = runs[3]["config"]
    c = cfg(deepspeed={"stage": 3, "config": config})
    smp = sampler()
    orig = smp.batch

    def crash_at_7(step):
        if step == 7:
            raise KeyboardInterrupt  # as a crash would: the engine is abandoned mid-run
        return orig(step)

    smp.batch = crash_at_7
    with pytest.raises(KeyboardInterrupt):
        train(build_model(TINY, 64, 0, 1), smp, c, checkpoint_dir=tmp_path, checkpoint_every=3)
    state = json.loads((tmp_path / "deepspeed" / "state.json").read_text())
    assert state["tag"] == "step6"  # the newest complete tag; keep_checkpoints (2) tags are kept
    assert sorted(p.name for p in (tmp_path / "deepspeed").iterdir() if p.is_dir()) == ["step3", "step6"]
    resumed, recording = build_model(TINY, 64, 0, 1), RecordingSampler(sampler())
    hist = train(resumed, recording, c, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert [r["step"] for r in hist] == list(range(1, 13))
    # the engine started at tag step6 and trained only steps 6..11; that their losses equal the uninterrupted
    # run's proves the tag's weights and optimizer state were loaded (a fresh engine at step 6 would differ)
    assert_resumed(hist, recording.asked, at=6, steps=12)
    assert [r["loss"] for r in hist] == [r["loss"] for r in runs[3]["hist"]]  # resume is exact
    for (n, p), (_, q) in zip(runs[3]["model"].state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), n


@pytest.mark.slow
def test_infra_bf16_configs_train_and_hand_back_an_fp32_module(runs):
    """The shipped zero{1,2,3}.json (bf16, as launch.sh uses them): the curve stays within bf16 rounding of fp32.

    bf16 keeps 8 mantissa bits (relative rounding 2**-9 ~ 2e-3 per forward value); measured <= 2.4e-4 here.
    """
    fresh = build_model(TINY, 64, 0, 1)
    for stage in STAGES:
        model = build_model(TINY, 64, 0, 1)
        hist = train(model, sampler(), cfg(deepspeed={"stage": stage}))  # config: infra/deepspeed/zero{stage}.json
        assert _rel(hist, runs["plain"]) < 2e-3, stage
        assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 masters, not the bf16 copies
        assert torch.equal(model.model.rotary_emb.inv_freq, fresh.model.rotary_emb.inv_freq)  # buffers un-cast


def test_bad_stage_or_config_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="deepspeed.stage"):
        cfg(deepspeed={"stage": 4})
    with pytest.raises(ValidationError, match="deepspeed.stage is 0"):
        cfg(deepspeed={"config": "zero2.json"})
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(EngineError, match="nope.json .from deepspeed.config. does not exist"):
        deepspeed_config(cfg(deepspeed={"stage": 2, "config": str(tmp_path / "nope.json")}), 1)
    with pytest.raises(EngineError, match=r"zero3.json has zero_optimization.stage 3 but params ask for deepspeed.stage 2"):
        deepspeed_config(cfg(deepspeed={"stage": 2, "config": str(INFRA_CONFIGS / "zero3.json")}), 1)
    with pytest.raises(EngineError, match="does not split over 3 ranks"):
        deepspeed_config(cfg(deepspeed={"stage": 1}), 3)
    bad = tmp_path / "bad.json"
    for text, message in [('{"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}', "'optimizer' block"),
                          ('{"zero_optimization": {"stage": 2}, "gradient_clipping": "auto"}', '"auto" values'),
                          ('{"zero_optimization": {}}', "must be 1, 2 or 3, not None"), ("{oops", "not valid JSON")]:
        bad.write_text(text)
        with pytest.raises(EngineError, match=message):
            deepspeed_config(cfg(deepspeed={"stage": 2, "config": str(bad)}), 1)
    monkeypatch.setenv("DS_ACCELERATOR", "")
    with pytest.raises(EngineError, match="DS_ACCELERATOR is set but empty"):
        init_distributed()


def test_params_win_over_the_json_and_the_launcher_variable_selects_the_config(monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(INFRA_CONFIGS / "zero3.json"))
    ds = deepspeed_config(cfg(batch_size=8, grad_clip=0.25), 2)  # stage 0 in params: the launcher's JSON decides
    assert ds["zero_optimization"]["stage"] == 3
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"]) == (8, 4, 0.25)
    assert ds["gradient_accumulation_steps"] == 1 and ds["bf16"] == {"enabled": True}


@pytest.mark.parametrize("stage", (1, 2))
def test_zero_1_and_2_buckets_are_no_larger_than_the_model(ds_env, stage):
    """DeepSpeed allocated its default 5e8-element bucket on every backward pass, 0.1 s each on CPU for a model of a
    few thousand weights (a 12-step run took 5 s instead of 0.1 s); a bucket that holds every gradient is enough."""
    model = build_model(TINY, 64, 0, 1)
    n = sum(p.numel() for p in model.parameters())
    engine = DeepSpeedEngine(model, cfg(deepspeed={"stage": stage}))  # infra/deepspeed/zero{stage}.json: 5e8 / 2e8
    zero = engine.engine.optimizer
    assert (zero.reduce_bucket_size, zero.allgather_bucket_size) == (n, n)
    assert engine.config["zero_optimization"]["reduce_bucket_size"] > n  # the JSON as written still names the run


def test_fit_buckets_only_shrinks_stage_1_and_2_buckets():
    small = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 100}}
    assert fit_buckets(small, 1000)["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 100,
                                                             "allgather_bucket_size": 1000}
    three = {"zero_optimization": {"stage": 3, "reduce_bucket_size": 50_000_000}}
    assert fit_buckets(three, 1000) == three


# ---------------------------------------------------------------------------------------------- checkpoints as input
class _Marker:
    """Unpickling this calls ``open(path, "w")``: the marker file appears if a loader executes pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return open, (str(self.path), "w")


@pytest.fixture(scope="module")
def zero3_checkpoint(tmp_path_factory, ds_env):
    """A ZeRO-3 run (fp32) stopped after its step-3 checkpoint: (config, checkpoint folder) to copy and damage."""
    folder = tmp_path_factory.mktemp("zero3-ckpt")
    c = cfg(steps=5, deepspeed={"stage": 3, "config": fp32_config(3, folder)})
    smp = sampler()
    orig = smp.batch

    def crash_at_4(step):
        if step == 4:
            raise KeyboardInterrupt
        return orig(step)

    smp.batch = crash_at_4
    with pytest.raises(KeyboardInterrupt):
        train(build_model(TINY, 64, 0, 1), smp, c, checkpoint_dir=folder / "ckpt", checkpoint_every=3)
    return c, folder / "ckpt"


def _resume(c: TrainConfig, ckpt: Path) -> list[dict]:
    return train(build_model(TINY, 64, 0, 1), sampler(), c, checkpoint_dir=ckpt, checkpoint_every=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model_states", "optim_states"])
def test_a_checkpoint_file_replaced_by_a_code_running_pickle_is_refused_and_never_runs(zero3_checkpoint, tmp_path, kind):
    import shutil

    c, original = zero3_checkpoint
    ckpt = shutil.copytree(original, tmp_path / "ckpt")
    (target,) = (ckpt / "deepspeed" / "step3").glob(f"*{kind}.pt")
    marker, proof = tmp_path / "marker", tmp_path / "proof"
    torch.save(_Marker(proof), tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what DeepSpeed's own loader would do: the payload is live
    assert proof.exists()
    torch.save(_Marker(marker), target)
    with pytest.raises(EngineError, match=rf"{re.escape(str(target))}: refused or unreadable DeepSpeed checkpoint.*never pickled code"):
        _resume(c, ckpt)
    assert not marker.exists(), "the pickled code ran"


@pytest.mark.slow
def test_a_state_naming_a_missing_corrupt_or_foreign_tag_is_a_clear_error(zero3_checkpoint, tmp_path):
    import shutil

    c, original = zero3_checkpoint
    assert [r["step"] for r in _resume(c, shutil.copytree(original, tmp_path / "good"))][-1] == 5  # the intact copy resumes
    cases = {
        "missing": (lambda s, d: {**s, "tag": "step9"}, r"names tag step9, but .*step9 does not exist"),
        "escaping": (lambda s, d: {**s, "tag": "../../elsewhere"}, r"names tag '../../elsewhere', which is not a checkpoint tag"),
        "other step": (lambda s, d: {**s, "step": 2}, r"step3 holds step 3, but .*state.json says 2"),
        "not json": (None, r"state.json: not a checkpoint state written by FluxForge"),
        "corrupt": ("truncate", r"optim_states.pt: refused or unreadable DeepSpeed checkpoint file"),
    }
    for name, (change, message) in cases.items():
        ckpt = shutil.copytree(original, tmp_path / name.replace(" ", "_"))
        state_file = ckpt / "deepspeed" / "state.json"
        if change is None:
            state_file.write_text("{oops")
        elif change == "truncate":
            (part,) = (ckpt / "deepspeed" / "step3").glob("*optim_states.pt")
            part.write_bytes(part.read_bytes()[:200])
        else:
            state_file.write_text(json.dumps(change(json.loads(state_file.read_text()), ckpt)))
        with pytest.raises(EngineError, match=message):
            _resume(c, ckpt)

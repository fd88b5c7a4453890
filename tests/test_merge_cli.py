"""`fluxforge merge instruction_residual`: an instruct model's difference from its base, added onto an updated base."""

from __future__ import annotations

import subprocess

import torch
from transformers import AutoModelForCausalLM

from fluxforge.train.model import build_model
from tiny import tiny_config

TINY = tiny_config(num_layers=1, max_position_embeddings=32)


def _save(tmp, name: str, seed: int):  # noqa: ANN001, ANN202
    model = build_model(TINY.model_copy(update={"init_seed": seed}), 64, 0, 1)
    model.save_pretrained(tmp / name, safe_serialization=True)
    return model.state_dict()


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The command in this process (torch is already imported): its exit code and stderr, as a shell would see them."""
    import contextlib
    import io

    from fluxforge.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(args))
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return subprocess.CompletedProcess(list(args), code, "", err.getvalue())


def test_instruction_residual_is_instruct_minus_base_on_the_updated_base(tmp_path):
    instruct, base, updated = (_save(tmp_path, n, s) for n, s in (("instruct", 1), ("base", 2), ("updated", 3)))
    done = _cli("merge", "instruction_residual", *(str(tmp_path / n) for n in ("instruct", "base", "updated")),
                "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", use_safetensors=True).state_dict()
    for k, v in merged.items():
        assert torch.allclose(v, updated[k] + instruct[k] - base[k], atol=1e-6), k


def test_merging_models_of_different_shapes_names_the_tensor(tmp_path):
    _save(tmp_path, "a", 1)
    other = build_model(TINY.model_copy(update={"hidden_size": 64}), 64, 0, 1)
    other.save_pretrained(tmp_path / "b", safe_serialization=True)
    done = _cli("merge", "interpolate", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "fluxforge merge:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_fomo_operators_from_the_command_line(tmp_path):
    """`fluxforge merge ties BASE FT1 FT2 --density --weight` is continual.merge.ties of the checkpoints; bad ones exit 2."""
    from fluxforge.continual.merge import dare_ties, ties
    from fluxforge.train.averaging import load_state

    base, ft1, ft2 = (_save(tmp_path, n, s) for n, s in (("base", 1), ("ft1", 2), ("ft2", 3)))
    paths = [str(tmp_path / n) for n in ("base", "ft1", "ft2")]
    done = _cli("merge", "ties", *paths, "--density", "0.5", "--weight", "0.8", "--out", str(tmp_path / "ties"))
    assert done.returncode == 0, done.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ties", use_safetensors=True).state_dict()
    expect = ties(base, [ft1, ft2], scale=0.8, density=0.5)
    assert all(torch.equal(merged[k], expect[k]) for k in expect)
    done = _cli("merge", "dare_ties", *paths, "--density", "0.5", "--seed", "3", "--out", str(tmp_path / "dare"))
    merged = load_state(tmp_path / "dare")  # the tensors as written (the tied head is not a tensor of its own there)
    expect = dare_ties(base, [ft1, ft2], density=0.5, seed=3)
    assert done.returncode == 0 and all(torch.equal(merged[k], expect[k]) for k in merged)
    bad = _cli("merge", "slerp", *paths[:2], "--density", "0.5", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "'slerp' has no option 'density'" in bad.stderr
    unknown = _cli("merge", "breadcrumbs", *paths, "--out", str(tmp_path / "bad"))
    assert unknown.returncode == 2 and "unknown merge method 'breadcrumbs' (choose one of interpolate, slerp" in unknown.stderr

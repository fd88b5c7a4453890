import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from fluxforge.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)


def test_help_explains_the_commands():
    out = _cli("--help").stdout
    for word in ("make run", "check-params", "world", "summary", "stage"):
        assert word in out


def test_world_command_writes_a_world(tmp_path):
    proc = _cli("world", "--out", str(tmp_path / "w"), "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["seed"] == 5 and json.loads(proc.stdout)["documents"] == summary["documents"]


def test_check_params_exit_codes(tmp_path, tiny_raw):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert _cli("check-params", "--params", str(good)).returncode == 0
    tiny_raw["tokenizer"]["vocab_size"] = 10
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    proc = _cli("check-params", "--params", str(bad))
    assert proc.returncode == 2 and "tokenizer.vocab_size" in proc.stderr and str(bad) in proc.stderr


def test_stage_with_bad_params_does_not_start(tmp_path, tiny_raw):
    """`fluxforge stage` runs the stage's command from dvc.yaml; bad params stop it before any work."""
    for name in ("dvc.yaml", "stages"):
        (tmp_path / name).symlink_to(ROOT / name)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    tiny_raw["world"]["typo"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    proc = _cli("stage", "world", cwd=tmp_path)
    assert proc.returncode == 2 and "world.typo: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()
    proc = _cli("stage", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "no stage 'nope'" in proc.stderr and "stages: world, ingest" in proc.stderr

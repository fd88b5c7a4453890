from pathlib import Path

import pytest
import yaml

from fluxforge.config import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_default_and_tiny_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.continual.final == "continual/cyber"
    assert p.expand(["general-202[1-3]"]) == ["general-2021", "general-2022", "general-2023"]
    load_params(ROOT / "params.yaml", profile="tiny")


def test_unknown_key_names_key_and_file(tmp_path, tiny_raw):
    tiny_raw["pretrain"]["learning_rate"] = 0.1
    path = _write(tmp_path, tiny_raw)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg and "pretrain.learning_rate" in msg and "unknown key" in msg


def test_wrong_type_and_negative_size_are_reported_together(tmp_path, tiny_raw):
    tiny_raw["model"]["hidden_size"] = "big"
    tiny_raw["pretrain"]["steps"] = -5
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, tiny_raw))
    msg = str(err.value)
    assert "model.hidden_size" in msg and "pretrain.steps" in msg and "2 problems" in msg


def test_slice_glob_must_match_a_slice(tiny_raw):
    tiny_raw["continual"]["tasks"]["cyber"]["slices"] = ["cyber-1999"]
    with pytest.raises(ParamsError, match="cyber-1999.*matches no slice"):
        parse_params(tiny_raw)


def test_replay_ratio_outside_unit_interval(tiny_raw):
    tiny_raw["continual"]["tasks"]["cyber"]["replay"]["ratio"] = 1.5
    with pytest.raises(ParamsError, match=r"continual.tasks.cyber.replay.ratio"):
        parse_params(tiny_raw)


def test_task_must_start_from_an_earlier_model(tiny_raw):
    tiny_raw["continual"]["tasks"]["slice2022"]["init"] = "continual/cyber"
    with pytest.raises(ParamsError, match="not 'pretrain' or an earlier task"):
        parse_params(tiny_raw)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("world: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_heads_must_divide_hidden(tiny_raw):
    tiny_raw["model"]["num_heads"] = 3
    with pytest.raises(ParamsError, match="divisible"):
        parse_params(tiny_raw)


def test_the_growth_study_needs_a_growth_factor_that_divides_the_layers(tiny_raw):
    """Found running a 3-layer model: the study stage failed minutes in with an 'unexpected ValueError' and a traceback."""
    tiny_raw["model"]["num_layers"] = 3
    with pytest.raises(ParamsError, match=r"study.growth_factor 2 must divide model.num_layers 3"):
        parse_params(tiny_raw)
    tiny_raw["study"]["growth_factor"] = 3
    parse_params(tiny_raw)
    tiny_raw["study"].update(growth_factor=2, studies=["meco", "curriculum"])  # no growth study: nothing to divide
    parse_params(tiny_raw)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("pretrain", "steps", "400"), ("pretrain", "steps", 400.0), ("pretrain", "seed", True), ("model", "hidden_size", 32.5),
])
def test_values_of_the_wrong_type_are_not_coerced(tiny_raw, section, key, value):
    tiny_raw[section][key] = value
    with pytest.raises(ParamsError, match=rf"{section}.{key}"):
        parse_params(tiny_raw)


def test_teacher_sources_and_filter_bounds_are_checked(tiny_raw):
    bad = [
        (("distill", "teacher"), "cyber", "distill.teacher 'cyber' is not one of"),
        (("world", "qa_fraction"), 1.0, "world.qa_fraction"),
    ]
    for (section, key), value, msg in bad:
        raw = yaml.safe_load(yaml.safe_dump(tiny_raw, sort_keys=False))
        raw[section][key] = value
        with pytest.raises(ParamsError, match=msg):
            parse_params(raw)
    raw = yaml.safe_load(yaml.safe_dump(tiny_raw, sort_keys=False))
    raw["data"]["sources"][0]["name"] = "../escape"
    with pytest.raises(ParamsError, match="data.sources.0.name"):
        parse_params(raw)
    raw["data"]["sources"][0]["name"] = "rejected"
    with pytest.raises(ParamsError, match="may not be named 'rejected'"):
        parse_params(raw)
    raw = yaml.safe_load(yaml.safe_dump(tiny_raw, sort_keys=False))
    raw["data"]["filters"]["gopher_quality"]["min_doc_words"] = 10**6
    with pytest.raises(ParamsError, match="min_doc_words"):
        parse_params(raw)


def test_a_key_written_twice_is_an_error_naming_it_and_both_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("world:\n  seed: 1\n  years: [2021]\n  seed: 2\n")  # PyYAML alone would keep seed: 2
    with pytest.raises(ParamsError, match=r"params.yaml: line 4: key 'seed' is written twice in one mapping \(first on line 2\)"):
        load_params(path)


def test_a_top_level_that_is_not_a_mapping_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- world\n- data\n")
    with pytest.raises(ParamsError, match=r"params.yaml: expected a mapping of sections at the top level, got list"):
        load_params(path)
    path.write_text("")
    with pytest.raises(ParamsError, match=r"params.yaml: the file is empty .nothing but blanks or comments.; expected a mapping"):
        load_params(path)


def test_overrides_are_yaml_values_on_existing_sections(tiny_raw):
    from fluxforge.config import set_dotted

    assert set_dotted(tiny_raw, "pretrain.lr=1e-3") == "pretrain.lr: 0.003 -> 0.001"  # a float, not the string '1e-3'
    assert set_dotted(tiny_raw, "data.filters.gopher_repetition.top_n_grams.2=0.4").endswith("0.3 -> 0.4")
    assert parse_params(tiny_raw).data.filters.gopher_repetition.top_n_grams[2] == 0.4  # the table keeps int keys
    with pytest.raises(ParamsError, match="'pretrian' is not a section"):
        set_dotted(tiny_raw, "pretrian.steps=3")

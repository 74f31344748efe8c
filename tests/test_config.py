"""Search files: defaults, path resolution, and errors that name the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmq.config import SearchConfig, load_config, parse_config
from swarmq.errors import ConfigError

MINIMAL = """
[experts]
path = "experts"
[base_model]
path = "base"
[objective]
utility = "multiple_choice"
dataset = "data/task.json"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_the_reference_codes(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    sw = cfg.swarm
    assert (sw.inertia, sw.cognitive, sw.social, sw.repel) == (0.4, 0.3, 0.3, 0.3)
    assert (sw.step_length, sw.step_length_factor, sw.min_step_length) == (1.0, 0.95, 0.1)
    assert (sw.patience, sw.restart_patience, cfg.search.max_iterations) == (10, 0.5, 200)
    assert sw.random_weights and sw.repel_term and sw.restart and sw.initial_velocity == "random"
    assert cfg.search.particles is None and cfg.search.seed == 0


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.experts.path == (tmp_path / "experts").resolve()
    assert cfg.objective.dataset == (tmp_path / "data" / "task.json").resolve()
    assert cfg.base_model.path == str((tmp_path / "base").resolve())


def test_hub_id_is_kept_when_no_such_folder(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL.replace('path = "base"', 'path = "org/model-name"')))
    assert cfg.base_model.path == "org/model-name"


def test_yaml_is_accepted(tmp_path: Path) -> None:
    text = (
        "experts: {path: e}\nbase_model: {path: b}\n"
        "objective: {utility: exact_match, dataset: d.json}\nswarm: {patience: 4}\n"
    )
    assert load_config(write(tmp_path, text, "s.yaml")).swarm.patience == 4


def test_round_trip_through_json(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "[swarm]\ninertia = 0.2\n"))
    again = SearchConfig.from_json(cfg.to_json())
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[swarm]\ninertia = -1\n", "swarm.inertia = -1"),
        ('[swarm]\ninitial_velocity = "fast"\n', "swarm.initial_velocity = 'fast'"),
        ("[swarm]\npatience = 0\n", "swarm.patience = 0"),
        ("[swarm]\nstep_length_factor = 1.5\n", "swarm.step_length_factor = 1.5"),
        ("[swarm]\ndropout_k = 1.0\n", "swarm.dropout_k = 1.0"),
        ("[swarm]\ninertai = 0.3\n", "swarm.inertai: unknown field"),
        ("[search]\nparticles = 1\n", "search.particles = 1"),
        ("[search]\nseed = -3\n", "search.seed = -3"),
        ("[swarm]\nstep_length = inf\n", "swarm.step_length = inf: Input should be a finite"),
        ("[swarm]\ninertia = nan\n", "swarm.inertia = nan: Input should be a finite"),
        ("[swarm]\nrestart_patience = inf\n", "swarm.restart_patience = inf"),
        (
            "[objective.options]\n[swarm]\ninertia=0\ncognitive=0\nsocial=0\nrepel=0\n",
            "divide by zero",
        ),
    ],
)
def test_bad_values_are_named(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + extra))
    assert expected in str(info.value)
    assert str(tmp_path / "s.toml") in str(info.value)


def test_missing_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="objective: required field is missing"):
        load_config(write(tmp_path, "[experts]\npath='e'\n[base_model]\npath='b'\n"))


def test_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[experts\npath="))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"suffix '\.ini'"):
        load_config(write(tmp_path, MINIMAL, "s.ini"))
    with pytest.raises(ConfigError, match="must be a table"):
        parse_config([1, 2])

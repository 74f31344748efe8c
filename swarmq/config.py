"""The search configuration: one TOML or YAML file, validated by pydantic.

A search file has five tables::

    [search]      name, seed, particles (N), max_iterations
    [experts]     path: a folder of peft adapter folders or of .safetensors files
    [base_model]  path: a local folder or a hub id; dtype; device
    [objective]   utility, dataset, batch_size, particles_per_batch, max_new_tokens, options
    [swarm]       the Model Swarms hyperparameters (defaults of the reference code)

Relative paths are resolved against the folder of the configuration file. Every model is frozen,
so a loaded configuration cannot drift from what was recorded in the database.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmq.errors import ConfigError

__all__ = [
    "BaseModelConfig",
    "ExpertsConfig",
    "ObjectiveConfig",
    "SearchConfig",
    "SearchSection",
    "SwarmConfig",
    "load_config",
    "parse_config",
]


class _Frozen(BaseModel):
    # NaN and infinity (TOML's `nan`, `inf`) are refused in every number: a step length of inf
    # turns every position into NaN after the first update.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SearchSection(_Frozen):
    """Identity and budget of a search."""

    name: str = Field("search", min_length=1, max_length=200)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    particles: int | None = Field(
        None, ge=2, description="N, the population size; defaults to the number of experts."
    )
    max_iterations: int = Field(200, ge=0, description="Iterations after the initial evaluation.")


class ExpertsConfig(_Frozen):
    """Where the expert pool lives."""

    path: Path
    adapter_config: Path | None = Field(
        None,
        description="adapter_config.json to use for a pool of plain .safetensors LoRA files.",
    )


class BaseModelConfig(_Frozen):
    """The base model every expert adapts."""

    path: str = Field(min_length=1, description="A local folder or a hub id.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")


class ObjectiveConfig(_Frozen):
    """What the swarm optimises: a registered utility over a dataset file."""

    utility: str = Field(min_length=1)
    dataset: Path
    batch_size: int = Field(16, ge=1)
    particles_per_batch: int = Field(
        1,
        ge=1,
        description="Positions scored together in one mixed-adapter batch (LoRA pools); "
        "changes speed and memory, not the utilities.",
    )
    max_new_tokens: int | None = Field(None, ge=1)
    dev_limit: int | None = Field(None, ge=1, description="Use only the first K dev examples.")
    test_limit: int | None = Field(None, ge=1, description="Use only the first K test examples.")
    options: dict[str, Any] = Field(default_factory=dict)


class SwarmConfig(_Frozen):
    """Model Swarms hyperparameters; the defaults are those of the reference code."""

    inertia: float = Field(0.4, ge=0.0, description="phi_v")
    cognitive: float = Field(0.3, ge=0.0, description="phi_p")
    social: float = Field(0.3, ge=0.0, description="phi_g")
    repel: float = Field(0.3, ge=0.0, description="phi_w")
    step_length: float = Field(1.0, gt=0.0, description="lambda at the first update")
    step_length_factor: float = Field(0.95, gt=0.0, le=1.0)
    min_step_length: float = Field(0.1, ge=0.0)
    patience: int = Field(10, ge=1)
    restart_patience: float = Field(0.5, gt=0.0, description="a fraction of patience")
    random_weights: bool = True
    initial_velocity: Literal["random", "zero", "best"] = "random"
    repel_term: bool = True
    restart: bool = True
    dropout_k: float = Field(0.0, ge=0.0, lt=1.0, description="skip a whole iteration")
    dropout_n: float = Field(0.0, ge=0.0, lt=1.0, description="skip one particle's evaluation")
    mode: Literal["synchronous", "asynchronous"] = Field(
        "synchronous",
        description="synchronous: the paper's iterations with a barrier; asynchronous: each "
        "particle moves as soon as its own evaluation is applied",
    )

    @model_validator(mode="after")
    def _some_pull(self) -> SwarmConfig:
        total = self.inertia + self.cognitive + self.social + (self.repel if self.repel_term else 0)
        if total <= 0:
            raise ValueError(
                "inertia + cognitive + social (+ repel) is 0: the velocity update would divide "
                "by zero; set at least one of them above 0"
            )
        return self

    @model_validator(mode="after")
    def _asynchronous_options(self) -> SwarmConfig:
        # Dropout skips a whole iteration or a particle's turn in it, and the 'best' starting
        # velocity waits for iteration 0's global best: both presuppose the barrier.
        if self.mode != "asynchronous":
            return self
        for name in ("dropout_k", "dropout_n"):
            if getattr(self, name) != 0.0:
                raise ValueError(
                    f"{name} = {getattr(self, name)} needs the iteration barrier; set it to 0 "
                    "or use mode = 'synchronous'"
                )
        if self.initial_velocity == "best":
            raise ValueError(
                "initial_velocity = 'best' needs iteration 0's global best before anyone "
                "moves; use 'random' or 'zero', or mode = 'synchronous'"
            )
        return self


class SearchConfig(_Frozen):
    """A whole search file."""

    search: SearchSection = Field(default_factory=SearchSection)  # type: ignore[arg-type]
    experts: ExpertsConfig
    base_model: BaseModelConfig
    objective: ObjectiveConfig
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)  # type: ignore[arg-type]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, resolved paths) as recorded in the database."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def fingerprint(self) -> str:
        """sha256 of :meth:`to_json`: equal for equal searches."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> SearchConfig:
        """Rebuild a configuration recorded with :meth:`to_json`."""
        return parse_config(json.loads(text), source="<database>")


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid search configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "missing":
            lines.append(f"  {loc}: required field is missing")
            continue
        if e["type"] == "extra_forbidden":
            lines.append(
                f"  {loc}: unknown field (value {e.get('input')!r}); remove it or fix its name"
            )
            continue
        lines.append(f"  {loc} = {e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the config's file paths absolute, relative to the config file's folder."""

    def fix(section: str, key: str, *, only_if_exists: bool = False) -> None:
        sec = data.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get(key), str):
            return
        p = Path(sec[key]).expanduser()
        if not p.is_absolute():
            candidate = (base / p).resolve()
            # A base model may be a hub id ("org/name"): keep it unless it names a local path.
            if only_if_exists and not candidate.exists():
                return
            sec[key] = str(candidate)

    fix("experts", "path")
    fix("experts", "adapter_config")
    fix("objective", "dataset")
    fix("base_model", "path", only_if_exists=True)
    objective = data.get("objective")
    if isinstance(objective, dict):
        _resolve_objective_files(objective, base)
    return data


_PLUGIN_FILE = re.compile(r"^(?P<file>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


def _resolve_objective_files(objective: dict[str, Any], base: Path) -> None:
    """Plug-in files and model folders named in ``[objective]`` are relative to the config too.

    Workers may run in another directory, so the recorded configuration must hold absolute
    paths: ``utility = "FILE.py:NAME"`` gets its file resolved; in the options, a
    ``FILE.py:NAME`` value (``scorer``, a task's ``utility``) and a value of an option whose
    name ends in ``_path`` are resolved when that relative file or folder exists (so neither a
    hub id such as ``org/model`` nor a prompt text is touched).
    """

    def resolve(key: str, value: Any, always: bool = False) -> Any:
        if isinstance(value, dict):
            return {k: resolve(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(key, v) for v in value]
        if not isinstance(value, str):
            return value
        found = _PLUGIN_FILE.match(value)
        if found is not None:
            file = Path(found["file"]).expanduser()
            if not file.is_absolute() and (always or (base / file).is_file()):
                return f"{(base / file).resolve()}:{found['name']}"
            return value
        if key.endswith("_path"):
            p = Path(value).expanduser()
            if not p.is_absolute() and (base / p).exists():
                return str((base / p).resolve())
        return value

    if isinstance(objective.get("utility"), str):
        objective["utility"] = resolve("utility", objective["utility"], always=True)
    if isinstance(objective.get("options"), dict):
        objective["options"] = resolve("options", objective["options"])


def parse_config(
    data: Any, *, source: str = "<config>", base_dir: Path | None = None
) -> SearchConfig:
    """Validate a configuration given as a mapping; raise :class:`ConfigError` naming bad fields."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the configuration must be a table/mapping, got {type(data).__name__}"
        )
    if base_dir is not None:
        data = _resolve_paths(json.loads(json.dumps(data, default=str)), base_dir)
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path) -> SearchConfig:
    """Read and validate a search file (``.toml``, ``.yaml`` or ``.yml``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"configuration file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"configuration file {str(p)!r} is not UTF-8 text (byte {err.object[err.start]:#04x} "
            f"at offset {err.start}); save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"configuration file {str(p)!r} cannot be read: {err.strerror}") from None
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"configuration file {str(p)!r} has suffix {p.suffix!r}; use .toml, .yaml or .yml"
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{p}: not valid {p.suffix[1:].upper()}: {err}") from None
    return parse_config(data, source=str(p), base_dir=p.resolve().parent)

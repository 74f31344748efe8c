"""What a training run takes and what it gives back (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swarmq.errors import SwarmqError
from swarmq.objectives.multiple_choice import DEFAULT_INSTRUCTION

__all__ = ["TRAINING_RECORD", "ExpertError", "TrainResult", "TrainSettings"]

# Written next to the adapter: how it was trained (data, settings, losses, time).
TRAINING_RECORD = "swarmq_training.json"


class ExpertError(SwarmqError):
    """An expert cannot be trained or a pool does not pass its check (output folder, pool)."""


class TrainSettings(BaseModel):
    """How one LoRA expert is fine-tuned.

    ``steps`` (optimizer steps) takes precedence over ``epochs``. ``seed`` orders the data;
    ``init_seed`` draws the LoRA initialisation and should be the same for every expert of a
    pool: experts fine-tuned from one ``lora_A`` stay comparable when the swarm averages their
    tensors elementwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: Literal["train", "dev"] | None = Field(
        default=None, description="split of a file with splits (default: train, else dev)"
    )
    epochs: int = Field(
        default=1, ge=1, description="passes over the data (when steps is not given)"
    )
    steps: int | None = Field(default=None, ge=1, description="optimizer steps; overrides epochs")
    lr: float = Field(
        default=2e-4, gt=0.0, description="AdamW learning rate, decayed linearly to 0"
    )
    batch_size: int = Field(default=8, ge=1)
    rank: int = Field(default=8, ge=1, description="LoRA rank r")
    alpha: int | None = Field(default=None, ge=1, description="LoRA alpha (default: 2 * rank)")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: tuple[str, ...] = Field(default=("q_proj", "v_proj"), min_length=1)
    max_length: int = Field(
        default=512, ge=2, description="items longer than this (tokens) are skipped"
    )
    seed: int = Field(default=0, ge=0, description="data order (and dropout)")
    init_seed: int = Field(
        default=0, ge=0, description="LoRA initialisation; keep it equal in a pool"
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="base model dtype; the adapter is trained in float32"
    )
    instruction: str = Field(
        default=DEFAULT_INSTRUCTION, description="first line of multiple-choice prompts"
    )

    @field_validator("target_modules")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(v.strip() for v in value)
        if any(not v for v in cleaned):
            raise ValueError("module names must not be empty (e.g. 'q_proj,v_proj')")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError(f"module names repeat: {list(cleaned)}")
        return cleaned

    @model_validator(mode="after")
    def _alpha(self) -> TrainSettings:
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2 * self.rank)
        return self


@dataclass(frozen=True)
class TrainResult:
    """What a training run did; also written to :data:`TRAINING_RECORD` in the adapter folder."""

    out_dir: Path
    base_model: str
    data_name: str
    split: str | None
    examples: int
    skipped: int
    steps: int
    epochs: float
    tokens: int
    first_loss: float
    last_loss: float
    trainable_params: int
    seconds: float

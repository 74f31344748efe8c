"""``swarmq experts train`` and ``swarmq experts check``: making and validating an expert pool."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from swarmq.cli._commands import main
from swarmq.cli._output import LogLines, console, err_console, styled


@main.group()
def experts() -> None:
    """Train LoRA experts of a base model, and check a pool of experts before a search."""


def _modules(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(","))
    if not all(names):
        raise click.BadParameter(f"expected module names separated by commas, got {value!r}")
    return names


@experts.command()
@click.option("--base", required=True, help="Base model: a local folder (or a cached hub id).")
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(path_type=Path),
    help="Training file: JSON with splits, a JSON list of items, or .jsonl.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Adapter folder."
)
@click.option(
    "--split",
    type=click.Choice(["train", "dev"]),
    help="Split of a file with splits [default: train if present, else dev].",
)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA r.")
@click.option("--alpha", type=click.IntRange(min=1), help="LoRA alpha [default: 2 * rank].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0)
@click.option(
    "--target-modules",
    default="q_proj,v_proj",
    show_default=True,
    callback=_modules,
    help="Modules to adapt, separated by commas.",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=2),
    default=512,
    show_default=True,
    help="Items longer than this many tokens are skipped.",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Data order."
)
@click.option(
    "--init-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="LoRA initialisation; keep it the same for every expert of a pool.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, mps.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Base model dtype (the adapter trains in float32).",
)
@click.option("--overwrite", is_flag=True, help="Replace an expert already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    base: str,
    data_file: Path,
    out_dir: Path,
    split: str | None,
    epochs: int,
    steps: int | None,
    lr: float,
    batch_size: int,
    rank: int,
    alpha: int | None,
    dropout: float,
    target_modules: tuple[str, ...],
    max_length: int,
    seed: int,
    init_seed: int,
    device: str,
    dtype: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Fine-tune a LoRA expert of a base model on a dataset file; write a peft adapter folder.

    Items are {"prompt", "completion"}, {"input", "output"}, multiple-choice questions
    {"question", "choices", "answer"} (trained to answer the gold letter in the
    multiple_choice prompt) or {"question", "answer"}. Deterministic for a seed.
    """
    from pydantic import ValidationError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from swarmq.experts import TrainSettings, train_expert

    try:
        settings = TrainSettings.model_validate(
            {
                "split": split,
                "epochs": epochs,
                "steps": steps,
                "lr": lr,
                "batch_size": batch_size,
                "rank": rank,
                "alpha": alpha,
                "dropout": dropout,
                "target_modules": target_modules,
                "max_length": max_length,
                "seed": seed,
                "init_seed": init_seed,
                "device": device,
                "dtype": dtype,
            }
        )
    except ValidationError as err:
        raise click.UsageError(str(err)) from None
    progress = Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss [green]{task.fields[loss]}[/]"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    )
    with progress:
        task = progress.add_task("train", total=None, loss="-")

        lines = LogLines(not quiet)

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, loss=f"{loss:.4f}")
            lines.say(f"training: step {step}/{total}, loss {loss:.4f}", force=step == total)

        result = train_expert(
            base, data_file, out_dir, settings, overwrite=overwrite, progress=on_step
        )
    skipped = (
        f", {result.skipped} skipped (longer than {max_length} tokens)" if result.skipped else ""
    )
    split_text = f" ({result.split})" if result.split else ""
    console.print(
        styled(
            "expert written to ",
            (str(result.out_dir), "bold"),
            f": {result.examples} items of {result.data_name}{split_text}{skipped}; "
            f"{result.steps} steps ({result.epochs:.2f} epochs, {result.tokens} tokens), loss "
            f"{result.first_loss:.4f} -> {result.last_loss:.4f}, {result.trainable_params} "
            f"trainable parameters, {result.seconds:.1f} s",
        ),
        soft_wrap=True,
    )


@experts.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--base", help="The base model every expert must name; its adapters are checked to fit it."
)
@click.option("--no-load", is_flag=True, help="With --base, compare names only; do not load it.")
def check(folder: Path, base: str | None, no_load: bool) -> None:
    """Validate the expert pool in FOLDER: same base, layout and adapter config; finite weights.

    Prints a table of the experts; exit status 0 when the pool is usable, 1 on a problem
    (each named), 2 when FOLDER is not a pool at all.
    """
    from swarmq.experts import check_pool

    result = check_pool(folder, base, load_base=not no_load)
    console.print(styled("expert pool ", (str(folder), "bold")), soft_wrap=True)
    table = Table()
    for col in ("expert", "kind", "params", "norm", "non-finite"):
        table.add_column(col, justify="left" if col in ("expert", "kind") else "right")
    for row in result.rows:
        table.add_row(
            row.name,
            row.kind,
            "-" if row.params is None else f"{row.params:,}",
            "-" if row.norm is None else f"{row.norm:.4f}",
            str(row.non_finite) if row.non_finite else "",
        )
    console.print(table)
    cfg = result.adapter_config
    if cfg is not None:
        targets = cfg.get("target_modules")
        shown = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
        console.print(
            f"adapter: {cfg.get('peft_type', '?')} r={cfg.get('r')} "
            f"lora_alpha={cfg.get('lora_alpha')} target_modules: {shown}; "
            f"base model: {cfg.get('base_model_name_or_path')}",
            highlight=False,
            soft_wrap=True,
        )
    for note in result.notes:
        console.print(styled((f"note: {note}", "dim")), soft_wrap=True)
    if not result.ok:
        for problem in result.problems:
            console.print(styled(("problem:", "bold red"), f" {problem}"), soft_wrap=True)
        console.print(
            styled(
                (f"pool {folder} is not usable", "bold red"), f": {len(result.problems)} problem(s)"
            ),
            soft_wrap=True,
        )
        sys.exit(1)
    fitted = ", and every expert fits the base model" if result.base_checked else ""
    console.print(
        styled(
            (f"pool {folder} is usable", "green"),
            f": {len(result.rows)} experts share one layout, one adapter config and one base "
            f"model{fitted}",
        ),
        soft_wrap=True,
    )

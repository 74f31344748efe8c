"""``swarmq export``: write a search's result as an adapter folder, or as a merged full model."""

from __future__ import annotations

from pathlib import Path

import click

from swarmq.cli._commands import main
from swarmq.cli._output import console
from swarmq.settings import Settings


@main.command()
@click.argument("search_id")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write.",
)
@click.option(
    "--particle",
    type=int,
    help="Export this particle's personal best instead of the global best.",
)
@click.option(
    "--merged",
    is_flag=True,
    help="Write a full model: the base model with the adapter folded in (no peft needed).",
)
@click.option("--overwrite", is_flag=True, help="Replace a previous export in that folder.")
@click.pass_obj
def export(
    settings: Settings,
    search_id: str,
    out_dir: Path,
    particle: int | None,
    merged: bool,
    overwrite: bool,
) -> None:
    """Write the global best of SEARCH (or a particle's personal best) as a peft adapter folder,
    or with --merged as a full transformers model folder."""
    from swarmq.engine import Runtime, global_best_position
    from swarmq.execution import LocalQueue
    from swarmq.storage import Database, LocalArtifactStore
    from swarmq.weights import export_adapter

    db = Database(settings.database_url)
    db.check_schema()
    store = LocalArtifactStore(settings.artifacts)
    if particle is None:
        rt = Runtime(db, store, LocalQueue())
        layout, vector, adapter_config, info = global_best_position(rt, search_id)
        what = "the global best"
    else:
        from swarmq.engine import personal_best_position

        layout, vector, adapter_config, info = personal_best_position(
            db, store, search_id, particle
        )
        what = f"the personal best of particle {particle} (iteration {info['swarmq_iteration']})"
    if merged:
        from swarmq.engine import export_merged, search_base_model

        path = export_merged(
            search_base_model(db, search_id),
            layout,
            vector,
            adapter_config,
            out_dir,
            metadata=info,
            overwrite=overwrite,
        )
        what += " merged into the base model"
    else:
        path = export_adapter(
            layout, vector, out_dir, adapter_config, metadata=info, overwrite=overwrite
        )
    console.print(f"exported {what} (utility {info['swarmq_utility']}) to {path}", highlight=False)

"""``swarmq export``: write a search's result as an adapter folder."""

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
@click.option("--overwrite", is_flag=True, help="Replace a previous export in that folder.")
@click.pass_obj
def export(settings: Settings, search_id: str, out_dir: Path, overwrite: bool) -> None:
    """Write the global best of SEARCH as a peft adapter folder."""
    from swarmq.engine import Runtime, global_best_position
    from swarmq.execution import LocalQueue
    from swarmq.storage import Database, LocalArtifactStore
    from swarmq.weights import export_adapter

    db = Database(settings.database_url)
    db.check_schema()
    rt = Runtime(db, LocalArtifactStore(settings.artifacts), LocalQueue())
    layout, vector, adapter_config, info = global_best_position(rt, search_id)
    path = export_adapter(
        layout, vector, out_dir, adapter_config, metadata=info, overwrite=overwrite
    )
    console.print(
        f"exported the global best (utility {info['swarmq_utility']}) to {path}", highlight=False
    )

"""The durable record: SQLAlchemy models, database sessions and the artifact store."""

from swarmq.storage._artifacts import (
    ArtifactStore,
    LocalArtifactStore,
    decode_vector,
    encode_vector,
    hash_bytes,
)
from swarmq.storage._db import (
    Database,
    database_clock,
    database_now,
    migrations_dir,
    redact_url,
)
from swarmq.storage._models import (
    ApplicationRow,
    Artifact,
    Base,
    BaselineRow,
    DatabaseIdentityRow,
    EvaluationRow,
    IterationRow,
    ParticleRow,
    ParticleStateRow,
    SearchRow,
    utcnow,
)
from swarmq.storage._scores import decode_item_scores, encode_item_scores

__all__ = [
    "ApplicationRow",
    "Artifact",
    "ArtifactStore",
    "Base",
    "BaselineRow",
    "Database",
    "DatabaseIdentityRow",
    "EvaluationRow",
    "IterationRow",
    "LocalArtifactStore",
    "ParticleRow",
    "ParticleStateRow",
    "SearchRow",
    "database_clock",
    "database_now",
    "decode_item_scores",
    "decode_vector",
    "encode_item_scores",
    "encode_vector",
    "hash_bytes",
    "migrations_dir",
    "redact_url",
    "utcnow",
]

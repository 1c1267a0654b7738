"""MetaSchedule tuning per shape bucket: options, search, database, the tuned bucket builds.

``options`` parses and checks what to tune; ``search`` runs MetaSchedule on one static-shape module
with ``builder``'s fast build pool and ``progress``'s log lines; ``database`` keeps the results per
target; ``buckets`` builds, checks and records one tuned library per bucket; ``workflow`` ties them
to an artifact.
"""

from .options import ResolvedTuning, TuneOptions, bucket_key, parse_buckets, resolve_tuning
from .workflow import tune_artifact

__all__ = ["ResolvedTuning", "TuneOptions", "bucket_key", "parse_buckets", "resolve_tuning", "tune_artifact"]

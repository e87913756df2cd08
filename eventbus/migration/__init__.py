"""Staged migration from one transport to another (Redis Streams to Kafka, typically).

Stages per topic: ``source-only`` -> ``dual-source-primary`` -> (backfill, verify) ->
``dual-target-primary`` -> (cutover of each group) -> ``target-only``; each can be rolled back.
Services use ``migrate://NAME?source=...&target=...`` (:class:`MigrationTransport`); operators
use :class:`Migration` or ``eventbus migrate ...``. See docs/migration.md.
"""

from eventbus.migration.control import STAGES, MigrationState, VerifyReport
from eventbus.migration.ops import Migration
from eventbus.migration.transport import MigrationTransport

__all__ = ["STAGES", "Migration", "MigrationState", "MigrationTransport", "VerifyReport"]

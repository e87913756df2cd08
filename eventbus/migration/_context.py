"""What the operator's steps (``stages``, ``backfill``, ``verify``, ``cutover``, ``status``,
``common``) need of a migration: :class:`MigrationContext`. The facade
:class:`~eventbus.migration.ops.Migration` satisfies it structurally, so the steps import
nothing of the module that imports them."""

from __future__ import annotations

from typing import Protocol

from eventbus.migration.control import ControlStore, Side
from eventbus.transport import Transport

__all__ = ["MigrationContext"]


class MigrationContext(Protocol):
    """One migration between a source and a target, as the steps read it."""

    name: str
    source: Transport
    target: Transport
    source_writer: Transport
    """What copies to the source are written with (see ``copy_writer``)."""
    target_writer: Transport
    """What copies to the target are written with."""
    control: ControlStore
    source_url: str
    """The source's URL, credentials redacted ("" when not opened by URL)."""
    target_url: str

    def side(self, name: Side) -> Transport:
        """The source or the target, by name."""
        ...

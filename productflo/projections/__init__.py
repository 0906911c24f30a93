"""Read models folded from the log. Each can be thrown away and rebuilt from it."""

from __future__ import annotations

from collections.abc import Sequence

from productflo.projections.documents import Documents
from productflo.projections.framework import Projection
from productflo.projections.messages import Messages
from productflo.projections.notifications import Notifications
from productflo.projections.rooms import Rooms

PROJECTIONS: dict[str, Projection] = {
    p.name: p for p in (Rooms(), Messages(), Notifications(), Documents())
}

__all__ = ["PROJECTIONS", "Projection", "UnknownProjection", "chosen"]


class UnknownProjection(ValueError):
    pass


def chosen(names: Sequence[str]) -> list[str]:
    """The projections named (all of them when none is), or UnknownProjection."""
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        known = ", ".join(PROJECTIONS)
        raise UnknownProjection(f"unknown projection {', '.join(unknown)} (known: {known})")
    return list(names) or list(PROJECTIONS)

"""Read models folded from the log. Each can be thrown away and rebuilt from it."""

from __future__ import annotations

from productflo.projections.framework import Projection
from productflo.projections.messages import Messages
from productflo.projections.notifications import Notifications
from productflo.projections.rooms import Rooms

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (Rooms(), Messages(), Notifications())}

__all__ = ["PROJECTIONS", "Projection"]

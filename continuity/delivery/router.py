"""The routing decision for one recipient: a pure function of the domain's mode and the user.

- not a hosted domain: ``OUTBOUND`` (smarthost or the recipient's MX);
- hosted, ``normal`` or ``recovering``: ``RELAY`` to the domain's upstream;
- hosted, ``emergency``: a covered user's mail goes to the ``MAILBOX`` of that
  user (aliases resolved); anyone else's is ``HOLD`` until recovery.
"""

from __future__ import annotations

import enum

import attrs

from continuity.directory.store import Domain, User, is_covered


class Route(enum.Enum):
    RELAY = "relay"
    MAILBOX = "mailbox"
    HOLD = "hold"
    OUTBOUND = "outbound"


@attrs.frozen
class Decision:
    route: Route
    mailbox: str | None = None  # the user's address for MAILBOX
    reason: str = ""


def route(domain: Domain | None, user: User | None) -> Decision:
    """Decide where a recipient at ``domain`` (resolved to ``user``, or None) goes now."""
    if domain is None:
        return Decision(Route.OUTBOUND)
    if domain.mode != "emergency":
        return Decision(Route.RELAY)
    if user is not None and is_covered(user, domain):
        return Decision(Route.MAILBOX, mailbox=user.address)
    if user is None:
        return Decision(Route.HOLD, reason="emergency mode: not a registered user, held until recovery")
    return Decision(Route.HOLD, reason=f"emergency mode: {user.address} is not covered, held until recovery")


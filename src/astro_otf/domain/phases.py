"""The UWS 1.1 execution phases and which moves between them the service allows."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """A UWS 1.1 execution phase; its value is the name UWS writes."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    ABORTED = "ABORTED"
    UNKNOWN = "UNKNOWN"
    HELD = "HELD"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"


#: Phases in which a job may still change by itself (UWS calls them active: WAIT blocks here).
#: UWS 1.1 lists PENDING, QUEUED and EXECUTING; HELD is added here because a HELD job of this
#: service moves by itself (to QUEUED when its data arrives, to ERROR when its wait is over),
#: so a client's WAIT on it blocks, and ABORT or DELETE stop it as they stop a queued job.
ACTIVE_PHASES = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING, Phase.HELD})
#: Phases a job never leaves (but for destruction).
FINAL_PHASES = frozenset({Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED})

#: Every move the service makes. A move not listed here is refused.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    # COMPLETED: sent RUN, it takes the results of a completed job that computed the same
    # thing (reuse of results), without queueing
    # HELD: sent RUN while its input (a dataset file, an upload to come) is not there yet
    Phase.PENDING: frozenset(
        {Phase.QUEUED, Phase.ABORTED, Phase.ERROR, Phase.COMPLETED, Phase.HELD}
    ),
    # QUEUED: its data arrived; COMPLETED: it arrived and a completed job had computed the
    # same thing (reuse of results); ERROR: its hold deadline or destruction came first
    Phase.HELD: frozenset({Phase.QUEUED, Phase.COMPLETED, Phase.ABORTED, Phase.ERROR}),
    Phase.QUEUED: frozenset({Phase.EXECUTING, Phase.ABORTED, Phase.ERROR}),
    Phase.EXECUTING: frozenset(
        {Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.QUEUED}  # QUEUED: requeue on restart
    ),
    Phase.COMPLETED: frozenset({Phase.ARCHIVED}),
    Phase.ERROR: frozenset({Phase.ARCHIVED}),
    Phase.ABORTED: frozenset({Phase.ARCHIVED}),
}


def can_move(src: Phase, dst: Phase) -> bool:
    """Whether the phase machine allows a job in ``src`` to move to ``dst``."""
    return dst in TRANSITIONS.get(src, frozenset())


def sources_of(dst: Phase) -> frozenset[Phase]:
    """The phases from which ``dst`` can be reached."""
    return frozenset(src for src, dsts in TRANSITIONS.items() if dst in dsts)

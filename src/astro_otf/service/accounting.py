"""Accounting: what each owner used over a period (jobs by phase and model, CPU and wall
seconds, bytes its jobs held) and what it holds now, against its quotas (as caesar-rest's
accounting service aggregates per-user data and job statistics).

The period's figures come from the ledger (:mod:`astro_otf.store.usage`): a job counts in the
period in which it ended, whether it still exists or not. ``bytes_stored`` and
``active_jobs`` are the owner's live jobs now, whatever the period. Jobs that took a
completed job's results (reuse) count with 0 CPU and 0 wall seconds: nothing ran for them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from astro_otf.domain.errors import Forbidden, ParameterError
from astro_otf.service.quotas import Quotas
from astro_otf.service.threads import in_thread
from astro_otf.store.usage import OwnerUsage, UsageStore

__all__ = ["EVERY_OWNER", "Accounting"]

#: The period ``GET /accounting`` covers when SINCE is not given: this many days to UNTIL.
DEFAULT_DAYS = 30

#: ``owner`` value meaning "every owner the asker may see".
EVERY_OWNER = object()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Accounting:
    """Answers ``GET /accounting``: the ledger's figures for a period per owner, with
    what each holds now and its quota standing (see the module's docstring)."""

    def __init__(self, usage: UsageStore, quotas: Quotas) -> None:
        self.usage = usage
        self.quotas = quotas

    def _owner_json(self, u: OwnerUsage) -> dict[str, Any]:
        return {
            "owner": u.owner,
            "jobs": {
                "total": u.jobs,
                "by_phase": dict(sorted(u.by_phase.items())),
                "by_model": dict(sorted(u.by_model.items())),
            },
            "cpu_seconds": round(u.cpu_seconds, 3),
            "wall_seconds": round(u.wall_seconds, 3),
            "bytes_computed": u.bytes_computed,
            "bytes_stored": u.bytes_stored,
            "active_jobs": u.active_jobs,
            "quota": self.quotas.standing(u.owner, u.active_jobs, u.bytes_stored),
        }

    async def report(
        self,
        asker: str | None,
        *,
        sees_all: bool,
        since: datetime | None = None,
        until: datetime | None = None,
        owner: object = EVERY_OWNER,
    ) -> dict[str, Any]:
        """The accounting document. ``sees_all``: the asker sees every owner (an operator,
        or anonymous mode where everyone is one owner); else only its own figures, and
        asking for another ``owner`` is 403."""
        until = until or datetime.now(UTC)
        since = since or until - timedelta(days=DEFAULT_DAYS)
        if since >= until:
            raise ParameterError(
                "since", f"{_iso(since)} is not before UNTIL ({_iso(until)}): give SINCE < UNTIL"
            )
        if owner is not EVERY_OWNER and not sees_all and owner != asker:
            raise Forbidden(
                f"only the service operators see the accounting of another owner ({owner!r}); "
                "without OWNER you get your own"
            )
        wanted: list[str | None] | None
        if owner is not EVERY_OWNER:
            wanted = [owner if isinstance(owner, str) else None]
        elif sees_all:
            wanted = None
        else:
            wanted = [asker]
        figures = await in_thread(self.usage.period, since, until, wanted)
        stored = await in_thread(self.usage.stored_bytes, wanted)
        active = await in_thread(self.usage.active_counts)
        names = set(figures) | set(stored) | {o for o in active if wanted is None or o in wanted}
        if wanted is not None:
            names |= set(wanted)
        owners = []
        for name in sorted(names, key=lambda n: (n is not None, n or "")):
            u = figures.get(name) or OwnerUsage(name)
            u.bytes_stored = stored.get(name, 0)
            u.active_jobs = active.get(name, 0)
            owners.append(u)
        total = OwnerUsage(None)
        for u in owners:
            for phase, n in u.by_phase.items():
                total.by_phase[phase] = total.by_phase.get(phase, 0) + n
            for model, n in u.by_model.items():
                total.by_model[model] = total.by_model.get(model, 0) + n
            total.cpu_seconds += u.cpu_seconds
            total.wall_seconds += u.wall_seconds
            total.bytes_computed += u.bytes_computed
            total.bytes_stored += u.bytes_stored
            total.active_jobs += u.active_jobs
        totals = self._owner_json(total)
        del totals["owner"], totals["quota"]
        return {
            "period": {"since": _iso(since), "until": _iso(until)},
            "owners": [self._owner_json(u) for u in owners],
            "totals": totals,
        }

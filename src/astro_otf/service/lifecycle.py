"""How a job's run ends and what a restart does with runs left behind: the policy that turns
a batch's outcome, or a crash, into phases and the messages a scientist reads."""

from __future__ import annotations

import logging

from astro_otf.domain.phases import Phase
from astro_otf.service.scheduler import utcnow
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore

log = logging.getLogger("astro_otf")

#: With replicas, a job folder without a database row is removed at recovery only once
#: nothing in it changed for this long: another replica may be creating that job right now
#: (its upload streaming in). A lone server (SQLite, holding the data folder's lock) recovers
#: before it takes any request, so every such folder it finds is an orphan.
ORPHAN_MIN_AGE_S = 900.0


def remove_orphans(store: JobStore, folders: JobFolders, min_age_s: float) -> int:
    """Remove job folders that have no database row (a creation cut short by a kill, a
    deletion cut between its row and its folder), untouched for ``min_age_s`` seconds."""
    idle = folders.idle_folders(min_age_s)
    known = store.existing_ids(idle)
    orphans = [name for name in idle if name not in known]
    for name in orphans:
        if name not in store.existing_ids([name]):  # created meanwhile? keep it
            log.info("removing the folder of job %s, which has no database row", name)
            folders.remove(name)
    return len(orphans)


def recover(
    store: JobStore, folders: JobFolders, orphan_min_age_s: float | None = None
) -> tuple[int, int]:
    """After a restart: jobs left EXECUTING run again (their runs lose the job: their tokens
    are cleared); a job whose input is gone is ERROR; with ``orphan_min_age_s``, job folders
    without a row that long are removed."""
    requeued = failed = 0
    for phase in (Phase.EXECUTING, Phase.QUEUED):
        for job_id in store.ids_in_phase(phase):
            job = store.get(job_id)
            missing = [
                p.name.upper()
                for p in job.parameters
                if p.is_file and not folders.input_file(job_id, p.value).is_file()
            ]
            if missing:
                store.transition(
                    job_id,
                    [phase],
                    Phase.ERROR,
                    end_time=utcnow(),
                    error_type="fatal",
                    error_message=f"the uploaded {', '.join(missing)} of this job was lost "
                    "while the service restarted; please submit the job again",
                )
                failed += 1
            elif phase == Phase.EXECUTING:
                folders.clear_results(job_id)
                store.transition(
                    job_id,
                    [phase],
                    Phase.QUEUED,
                    start_time=None,
                    queue_time=utcnow(),
                    run_token=None,
                )
                requeued += 1
    if orphan_min_age_s is not None:
        removed = remove_orphans(store, folders, orphan_min_age_s)
        if removed:
            log.info("recovered: removed %d job folder(s) without a database row", removed)
    return requeued, failed

"""The ``sleep`` app: no science, only time passing in a worker.

Operators enable it (``diagnostic_apps = true``) to check queueing, ABORT, execution-duration
limits and worker recovery end to end, without depending on how long a real finder takes.
"""

from __future__ import annotations

import os
import socket
import time

from astro_otf.domain.parameters import ParamSpec
from astro_otf.models.base import AppOutput, AppRequest, ResultFile


class SleepApp:
    """The ``sleep`` app: waits DURATION seconds, then reports the host and pid it ran in."""

    model_id = "sleep"
    version = "1.0"
    description = "Diagnostic: waits DURATION seconds in a worker process, then reports where."
    precisions: tuple[str, ...] = ()
    needs_image = False
    parameters: tuple[ParamSpec, ...] = (
        ParamSpec(
            "duration",
            "float",
            "Seconds to wait.",
            default=1.0,
            minimum=0.0,
            maximum=86400.0,
            unit="s",
        ),
    )

    def run(self, request: AppRequest) -> AppOutput:
        """Wait ``duration`` seconds in short sleeps, then write the report file."""
        duration = float(request.values["duration"])
        request.log.info("sleeping %.3f s in pid %d", duration, os.getpid())
        end = time.monotonic() + duration
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        report = request.staging_dir / "report.txt"
        report.write_text(
            f"slept {duration:g} s on host {socket.gethostname()} in pid {os.getpid()}\n"
        )
        return AppOutput(
            [ResultFile("result", "report.txt", "text/plain")], info={"slept_s": duration}
        )

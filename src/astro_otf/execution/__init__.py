"""Executors: where jobs run. The web process does no science; an executor owns the worker
processes, so it can stop one to abort a job and replace one that died."""

"""A request's form as the HTTP layer read it, handed to the service: text fields in memory,
file parts already streamed to the files the service named. Apart from the HTTP code that
fills it (:mod:`astro_otf.uws.uploads`), so that the service does not depend on the HTTP
layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from astro_otf.domain.errors import ParameterError, RequestError

__all__ = ["Form", "Sink"]

#: Given a lower-case part name and the client's file name, return an open binary file to
#: stream the part into, or None to keep the part in memory as a text field.
Sink = Callable[[str, str], IO[bytes] | None]


@dataclass
class Form:
    """A request's form as read: its text fields (in memory) and the file parts streamed to
    a sink."""

    fields: dict[str, str] = field(default_factory=dict)
    #: file parts written to a sink: lower-case name -> bytes written
    files: dict[str, int] = field(default_factory=dict)

    def add_field(self, name: str, value: str) -> None:
        """Add a text field under its lower-case name; a name given twice is refused."""
        key = name.strip().lower()
        if not key:
            raise RequestError("a form field has an empty name")
        if key in self.fields or key in self.files:
            raise ParameterError(key, "is given more than once")
        self.fields[key] = value

"""Request bodies: form-encoded and multipart, with uploads streamed straight to their file.

A FITS image is never held whole in the web process: each multipart file part is written
as it arrives into the sink the caller names, and the size limit is enforced while streaming
(413 as soon as it is passed). Text fields are held in memory, so they have a cap of their
own, for all of a request's fields together (``max_form_bytes``), also enforced while the body
streams in. Parameter names are case-insensitive: they come back lower case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO
from urllib.parse import parse_qsl

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from astro_otf.domain.errors import (
    ParameterError,
    RequestError,
    UnsupportedMediaType,
    UploadTooLarge,
)
from astro_otf.domain.forms import Form, Sink

__all__ = ["read_form"]

MAX_FIELD_BYTES = 1024 * 1024  # a text parameter (or an uploaded job-description XML)


def _too_large(limit: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"the request body is larger than this service's upload limit of {limit} bytes "
        f"({limit / 1024**2:.1f} MiB); cut a region of the image, or ask the operators"
    )


def _form_too_large(limit: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"the request's text fields are larger than this service's limit of {limit} bytes "
        f"for them together (max_form_bytes); upload the image as the IMAGE file part"
    )


async def read_form(
    request: Request,
    *,
    max_form_bytes: int,
    max_upload_bytes: int | None = None,
    sink: Sink | None = None,
) -> Form:
    """Parse a POST body whose text fields (names, values and part headers) take at most
    ``max_form_bytes`` together. ``sink`` receives file parts, and the whole body may then
    take ``max_upload_bytes``; without a sink a file part is read as a text field, and the
    body is held to ``max_form_bytes``."""
    if sink is not None and max_upload_bytes is not None:
        body_limit, too_large = max_upload_bytes, _too_large
    else:
        body_limit, too_large = max_form_bytes, _form_too_large
    declared = request.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > body_limit:
        raise too_large(body_limit)
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise RequestError("multipart/form-data request without a boundary")
        return await _read_multipart(request, boundary, body_limit, too_large, max_form_bytes, sink)
    if ctype in (b"application/x-www-form-urlencoded", b""):
        # every byte of such a body is text: the smaller limit holds, and is named
        if max_form_bytes <= body_limit:
            body_limit, too_large = max_form_bytes, _form_too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > body_limit:
                raise too_large(body_limit)
        form = Form()
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise RequestError("the form body is not UTF-8 text") from None
        for name, value in pairs:
            form.add_field(name, value)
        return form
    raise UnsupportedMediaType(
        f"unsupported Content-Type {ctype.decode(errors='replace')!r}: send "
        "application/x-www-form-urlencoded or multipart/form-data"
    )


class _MultipartState:
    def __init__(self, sink: Sink | None, text_limit: int) -> None:
        self.sink = sink
        #: bytes of text (part headers and text fields) held so far, and the cap on them
        self.text_bytes = 0
        self.text_limit = text_limit
        self.form = Form()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.name = ""
        self.file: IO[bytes] | None = None
        self.written = 0
        self.buffer = bytearray()
        self.opened: list[IO[bytes]] = []
        self.error: Exception | None = None

    # python-multipart callbacks
    def on_part_begin(self) -> None:
        self.headers = {}
        self.file = None
        self.written = 0
        self.buffer = bytearray()

    def _hold(self, size: int) -> None:
        self.text_bytes += size
        if self.text_bytes > self.text_limit:
            raise _form_too_large(self.text_limit)

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hold(end - start)
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hold(end - start)
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self.headers.get(b"content-disposition", b""))
        raw_name = opts.get(b"name")
        if raw_name is None:
            raise RequestError("a multipart part has no name in its Content-Disposition")
        self.name = raw_name.decode("utf-8", "replace").strip().lower()
        filename = opts.get(b"filename")
        if filename is not None and self.sink is not None:
            if self.name in self.form.files or self.name in self.form.fields:
                raise ParameterError(self.name, "is given more than once")
            self.file = self.sink(self.name, filename.decode("utf-8", "replace"))
            if self.file is not None:
                self.opened.append(self.file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.file is not None:
            self.file.write(chunk)
            self.written += len(chunk)
        else:
            self._hold(len(chunk))
            self.buffer += chunk
            if len(self.buffer) > MAX_FIELD_BYTES:
                raise ParameterError(
                    self.name, f"is longer than {MAX_FIELD_BYTES} bytes for a text parameter"
                )

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.form.files[self.name] = self.written
            return
        try:
            text = self.buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise ParameterError(self.name, "is not UTF-8 text (upload files as IMAGE)") from None
        self.form.add_field(self.name, text)


async def _read_multipart(
    request: Request,
    boundary: bytes,
    max_bytes: int,
    too_large: Callable[[int], UploadTooLarge],
    max_text_bytes: int,
    sink: Sink | None,
) -> Form:
    state = _MultipartState(sink, max_text_bytes)
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": state.on_part_begin,
            "on_header_field": state.on_header_field,
            "on_header_value": state.on_header_value,
            "on_header_end": state.on_header_end,
            "on_headers_finished": state.on_headers_finished,
            "on_part_data": state.on_part_data,
            "on_part_end": state.on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except (UploadTooLarge, ParameterError, RequestError):
        raise
    except Exception as exc:  # python-multipart's own parse errors
        raise RequestError(f"malformed multipart body: {exc}") from None
    finally:
        for f in state.opened:
            f.close()
    return state.form

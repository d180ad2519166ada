"""Model cards for the web page: the ``MODEL_CARD.md`` beside a model's manifest, rendered
as HTML with markdown-it (CommonMark and tables, raw HTML escaped, unsafe links refused)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

CARD_NAME = "MODEL_CARD.md"
#: A card larger than this is not rendered (it is data from a models folder).
MAX_CARD_BYTES = 2 * 1024 * 1024


@lru_cache(maxsize=1)
def _renderer() -> MarkdownIt:
    # "html": False escapes any HTML in the card; markdown-it's validateLink refuses
    # javascript:, vbscript:, file: and data: (but images) link targets.
    return MarkdownIt("commonmark", {"html": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


def render_markdown(text: str) -> str:
    """Safe HTML for a Markdown text."""
    return str(_renderer().render(text))


def card_path(app: Any) -> Path | None:
    """Where the card of an app is: beside its manifest; None for an app without one (sep,
    the diagnostic app)."""
    model = getattr(app, "model", None)
    manifest = getattr(model, "path", None)
    if not isinstance(manifest, Path):
        return None
    return manifest.parent / CARD_NAME


def read_card(app: Any) -> str | None:
    """The app's card as HTML, or None when it has none."""
    path = card_path(app)
    if path is None or not path.is_file() or path.stat().st_size > MAX_CARD_BYTES:
        return None
    return render_markdown(path.read_text(encoding="utf-8", errors="replace"))

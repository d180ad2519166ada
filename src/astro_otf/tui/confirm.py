"""The dashboard's confirmation screens: abort and delete cannot be undone, so each asks
first, and the action's own key pressed twice in a row is the quick way to say yes."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ConfirmAction(ModalScreen[bool]):
    """Asks before an action that cannot be undone is done to a job: the action's own key
    (pressed twice in a row) or ``y`` confirms, ``n`` or Esc keeps the job as it is."""

    #: The verb on the button and in the question ("Delete", "Abort").
    VERB: ClassVar[str] = ""
    #: What the action does to the job, after the verb ("job X and all its results").
    WHAT: ClassVar[str] = "job {job_id}"
    #: The label of the button that does nothing.
    KEEP: ClassVar[str] = "Keep"
    #: The dashboard's key for the action, which also confirms it here.
    KEY: ClassVar[str] = "y"
    DEFAULT_CSS = """
    ConfirmAction { align: center middle; }
    ConfirmAction > Vertical {
        width: 64; height: auto; padding: 1 2;
        border: thick $error; background: $surface;
    }
    ConfirmAction Horizontal { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmAction Button { margin-left: 2; }
    """

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    @property
    def question(self) -> str:
        """The question the screen asks."""
        return f"{self.VERB} {self.WHAT.format(job_id=self.job_id)}?"

    def compose(self) -> ComposeResult:
        """The question, the keys that answer it, and a button for each answer."""
        keys = f"{self.KEY} or y: {self.VERB.lower()}    n or Esc: {self.KEEP.lower()}"
        with Vertical():
            yield Label(Text(self.question))
            yield Label(Text(keys, style="dim"))
            with Horizontal():
                yield Button(self.KEEP, id="keep")
                yield Button(self.VERB, id="confirm", variant="error")

    def action_answer(self, answer: bool) -> None:
        """Close the screen with the answer (True: do it), for the key bindings."""
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")


class ConfirmDelete(ConfirmAction):
    """Asks before a job and its results are destroyed."""

    VERB = "Delete"
    WHAT = "job {job_id} and all its results"
    KEEP = "Keep it"
    KEY = "d"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d,y", "answer(True)", "Delete"),
        Binding("n,escape", "answer(False)", "Cancel"),
    ]


class ConfirmAbort(ConfirmAction):
    """Asks before a job is aborted: its work so far is lost and it cannot be resumed."""

    VERB = "Abort"
    WHAT = "job {job_id} (its work so far is lost)"
    KEEP = "Let it run"
    KEY = "x"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x,y", "answer(True)", "Abort"),
        Binding("n,escape", "answer(False)", "Cancel"),
    ]

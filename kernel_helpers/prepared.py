"""Outputs prepared per filter value: ``carnet.filters.prepared(picker, chart, draw)``.

``draw(value)`` shows what the app shows for one value of a selection widget (a chart, a table). Carnet
runs it for the widget's value into the ``Output`` widget ``chart``, and again on each change, like a
hand-wired ``observe`` callback; in addition:
- each value's output is kept, so choosing a value again is one widget update (no query, no figure);
- while the kernel has nothing else to do, the outputs of the widget's other options are made ahead, one
  at a time, so a viewer's *new* choice is instant too. Widget messages wait at most for the one option
  being made. The Viewer's render pool does this before a page is even handed over.

Outputs are captured in the kernel (IPython's ``capture_output``: display data, streams) and given to the
``Output`` widget as its ``outputs``: the browser renders them, nothing is sent twice. An error in ``draw``
is shown as the same generic message the Viewer gives a failing cell, its detail goes to the kernel's
stderr (the Viewer's log), and that value is not kept (the next choice of it tries again).

Limits: options only (Dropdown, RadioButtons, ToggleButtons, Select, SelectionSlider; not free text or
ranges); at most ``max_values`` outputs are kept (the first ones made are dropped first).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from carnet.kernel_helpers.process_log import process_logger

GENERIC_ERROR = "This part of the dashboard could not be displayed."
_ERROR_HTML = f'<div class="carnet-cell-error" role="alert">{GENERIC_ERROR}</div>'
_AHEAD_DELAY = 0.05  # seconds between two options made ahead: widget messages get their turn


def _loop() -> asyncio.AbstractEventLoop:
    # A kernel runs cells and widget messages on its asyncio loop: callbacks set here run between them.
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()


def _as_outputs(captured) -> tuple:
    outputs = []
    if captured.stdout:
        outputs.append({"output_type": "stream", "name": "stdout", "text": captured.stdout})
    for rich in captured.outputs:
        outputs.append({"output_type": "display_data", "data": rich.data, "metadata": rich.metadata or {}})
    return tuple(outputs)


class PreparedOutput:
    """The state behind one ``prepared(...)`` call (returned, for tests and for ``stop()``)."""

    def __init__(self, widget, output, draw, ahead: bool, max_values: int):
        self.widget, self.output, self.draw = widget, output, draw
        self.max_values = max_values
        self.kept: OrderedDict = OrderedDict()
        self.failed_ahead: set = set()  # not tried again ahead; a viewer's choice of one tries again
        self.made_ahead = 0
        self._ahead_task = None
        self._stopped = False
        self.show(widget.value)
        widget.observe(self._changed, names="value")
        if ahead:
            self._ahead_task = _loop().call_later(_AHEAD_DELAY, self._make_next)

    def _key(self, value):
        try:
            hash(value)
        except TypeError:
            return repr(value)
        return value

    def make(self, value) -> tuple | None:
        """The outputs of ``value`` (kept ones, or made now); None if ``draw`` failed."""
        key = self._key(value)
        if key in self.kept:
            return self.kept[key]
        from IPython.utils.capture import capture_output  # noqa: PLC0415 - a kernel's import

        try:
            with capture_output(stdout=True, stderr=False, display=True) as captured:
                self.draw(value)
        except Exception:
            # Not sys.__stderr__: ipykernel forwards file descriptor 2 to the page.
            process_logger("carnet.filters").exception("carnet.filters.prepared: draw(%r) failed", value)
            return None
        outputs = _as_outputs(captured)
        self.kept[key] = outputs
        while len(self.kept) > self.max_values:
            self.kept.popitem(last=False)
        return outputs

    def show(self, value) -> None:
        outputs = self.make(value)
        if outputs is None:
            outputs = (
                {
                    "output_type": "display_data",
                    "data": {
                        "text/html": f'<div class="carnet-cell-error" role="alert">{GENERIC_ERROR}</div>'
                    },
                    "metadata": {},
                },
            )
        self.output.outputs = outputs

    def _changed(self, change) -> None:
        self.show(change["new"])

    def _make_next(self) -> None:
        if self._stopped:
            return
        options = list(getattr(self.widget, "_options_values", ()))
        todo = [v for v in options if self._key(v) not in self.kept and self._key(v) not in self.failed_ahead]
        if not todo or len(self.kept) >= self.max_values:
            return
        if self.make(todo[0]) is None:
            self.failed_ahead.add(self._key(todo[0]))
        else:
            self.made_ahead += 1
        self._ahead_task = _loop().call_later(_AHEAD_DELAY, self._make_next)

    def stop(self) -> None:
        self._stopped = True
        if self._ahead_task is not None:
            self._ahead_task.cancel()


def prepared(widget, output, draw, *, ahead: bool = True, max_values: int = 50) -> PreparedOutput:
    """Show ``draw(value)`` in ``output`` for ``widget``'s value and each new one, with outputs kept per
    value and, with ``ahead``, the other options' outputs made while the kernel is idle."""
    if not hasattr(widget, "_options_values"):
        raise TypeError("prepared() takes a selection widget (Dropdown, Select, RadioButtons...)")
    if not 1 <= max_values <= 1000:
        raise ValueError("max_values must be from 1 to 1000")
    return PreparedOutput(widget, output, draw, ahead, max_values)

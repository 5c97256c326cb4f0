"""What a viewer's browser may change in an app's widgets: the value a person picks, nothing else.

ipywidgets applies every synced trait a front end sends (``Widget.set_state``). A viewer's own browser
could so widen a slider (``max``), add options, re-enable a ``disabled`` widget, or rename things, and the
app's code would then run with values its author never offered. Loaded in every Viewer kernel as an
IPython extension (``carnet.extension.viewer_kernels``), this keeps an update from the browser to the traits
a person changes by using the widget (``value``, ``index``, ...), ignores updates of a disabled widget, and
lets ipywidgets' own validation refuse the rest (an index out of range, a value of the wrong type). A
refused update is logged in the kernel's log, never answered with a traceback, and the browser is sent the
kernel's state back, so what the person sees is what the app uses.
"""

from __future__ import annotations

import logging

from carnet.kernel_helpers.process_log import process_logger

# The traits the standard widgets' front ends change when a person uses them: value (sliders, text, check
# boxes, pickers, upload), index (selections), selected_index (tabs, accordions), outputs (Output widgets
# capturing in the browser), playing/repeat (Play).
FRONTEND_TRAITS = frozenset({"value", "index", "selected_index", "outputs", "playing", "repeat"})

log = logging.getLogger("carnet.widget_guard")
_installed = False


def allowed_update(widget, state: dict) -> tuple[dict, list[str]]:
    """(the part of ``state`` the browser may set, the names refused)."""
    if getattr(widget, "disabled", False) is True:
        return {}, sorted(state)
    kept = {name: value for name, value in state.items() if name in FRONTEND_TRAITS}
    return kept, sorted(set(state) - set(kept))


def install() -> None:
    global _installed
    if _installed:
        return
    from ipywidgets import Widget
    from traitlets import TraitError

    process_logger(log.name, "[W %(asctime)s carnet.widget_guard] %(message)s")
    original = Widget.set_state

    def set_state(self, sync_data):
        kept, refused = allowed_update(self, sync_data)
        if refused:
            log.warning("Ignored a browser update of %s: %s", type(self).__name__, ", ".join(refused))
        try:
            if kept:
                original(self, kept)
        except TraitError as exc:  # a value ipywidgets' validation refused
            log.warning("Refused a browser update of %s: %s", type(self).__name__, exc)
            refused = sorted(kept)
        except Exception as exc:  # an index past changed options, or the app's own observer failing
            # The traceback (paths, code) goes to the Viewer's log, not to the person's browser.
            log.warning("A browser update of %s failed: %s", type(self).__name__, exc, exc_info=True)
            refused = sorted(kept)
        if refused:
            # The browser shows what it sent: send the kernel's own values back.
            synced = [name for name in refused if name in self.keys]
            if synced:
                self.send_state(key=synced)

    Widget.set_state = set_state
    _installed = True


def load_ipython_extension(ipython) -> None:  # noqa: ARG001 - IPython's extension entry point
    install()

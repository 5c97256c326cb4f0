"""A dashboard's colours. The primary colour is the org's branding colour when the kernel runs in the
Viewer: the Viewer puts it, checked, in ``CARNET_BRAND_COLOR`` (extension/viewer_kernels.py ``kernel_env``;
a kernel's token may only read sources, so it cannot ask the API). Elsewhere (JupyterLab, jobs) it is
Carnet's own colour unless given: ``Dashboard(..., theme=Theme(primary="#aa3300"))``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

DEFAULT_PRIMARY = "#1f6feb"  # Carnet's own colour (voila_templates/carnet/static/carnet.css)
BRAND_ENV = "CARNET_BRAND_COLOR"
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_CSS_COLOR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?|[a-zA-Z]+")  # #rgb, #rrggbb or a CSS name


def brand_color() -> str:
    """The org's colour from the environment, if it is a ``#rrggbb`` value; else Carnet's own."""
    value = os.environ.get(BRAND_ENV, "").strip()
    return value.lower() if _COLOR.fullmatch(value) else DEFAULT_PRIMARY


@dataclass(frozen=True)
class Theme:
    primary: str = field(default_factory=brand_color)
    up: str = "#1a7f37"  # a change in the good direction
    down: str = "#cf222e"
    colorway: tuple[str, ...] = field(
        default=("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
    )

    def __post_init__(self):
        # Written into style attributes and figures: only a plain colour.
        if not _CSS_COLOR.fullmatch(self.primary):
            raise ValueError(f"Theme primary must be a colour (#rrggbb or a CSS name), not {self.primary!r}")

    def chart_colors(self) -> list[str]:
        """The primary colour first, then plotly's usual sequence."""
        return [self.primary, *(c for c in self.colorway if c.lower() != self.primary.lower())]

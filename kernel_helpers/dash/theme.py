"""A dashboard's colours. A kernel cannot read its org's branding (its token may only read sources), so
the colour is given: ``Dashboard(..., theme=Theme(primary="#aa3300"))``; the Viewer's page itself already
carries the org's branding around the dashboard."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PRIMARY = "#1f6feb"  # Carnet's own colour (voila_templates/carnet/static/carnet.css)


@dataclass(frozen=True)
class Theme:
    primary: str = DEFAULT_PRIMARY
    up: str = "#1a7f37"  # a change in the good direction
    down: str = "#cf222e"
    colorway: tuple[str, ...] = field(
        default=("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
    )

    def chart_colors(self) -> list[str]:
        """The primary colour first, then plotly's usual sequence."""
        return [self.primary, *(c for c in self.colorway if c.lower() != self.primary.lower())]

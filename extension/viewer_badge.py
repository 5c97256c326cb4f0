"""The "Public" mark of a Viewer page: the page of a public link or embed URL, and a member's page of an app
that has a public link (carnet.app_links)."""

from __future__ import annotations


class PublicBadgeMixin:
    """Adds ``carnetPublic`` to the page's configuration when ``carnet_public`` is set: the template then
    marks the page as public. (Voila reads ``page_config_hook``; ``render_app`` assigns its own hook, which
    is wrapped here.)"""

    carnet_public = False
    _carnet_page_hook = None

    @property
    def page_config_hook(self):
        hook = self._carnet_page_hook
        if not self.carnet_public:
            return hook

        def with_badge(page_config, **kwargs):
            return {**(hook(page_config, **kwargs) if hook else page_config), "carnetPublic": True}

        return with_badge

    @page_config_hook.setter
    def page_config_hook(self, hook):
        self._carnet_page_hook = hook

"""Where people land after signing in: authors in their Studio, viewers in the Viewer's gallery."""

from carnet.hub_config.authenticator import AUTHORS_GROUP
from jupyterhub.utils import url_path_join


def default_url(handler) -> str:
    user = handler.current_user
    base = handler.hub.base_url.rsplit("hub/", 1)[0]
    if user is not None and any(group.name == AUTHORS_GROUP for group in user.groups):
        return user.url
    return url_path_join(base, "services/carnet/viewer/")

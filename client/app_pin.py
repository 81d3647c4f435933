"""Which federated app a site accepts, and the check made before any app code runs.

A SuperNode runs whatever app bundle (FAB) the SuperLink sends, so a check inside our own
ClientApp would not stop a different app. The check here runs in :mod:`client.app_guard`,
the site's own wrapper around ``flwr-clientapp``, after the bundle is fetched and before
it is installed or imported.
"""

from __future__ import annotations

from collections.abc import Sequence

APP_ID = "m3fm/m3fm-federated"  # [tool.flwr.app] publisher / [project] name
APP_VERSION = "0.1.0"  # [project] version


def app_refusal(
    fab_id: str,
    fab_version: str,
    fab_sha256: str,
    accept_apps: Sequence[str],
    accept_fab_sha256: Sequence[str] = (),
) -> str | None:
    """Why a run's app is refused, or None when the site accepts it.

    ``accept_apps`` entries are ``publisher/name==version`` or ``publisher/name``;
    a non-empty ``accept_fab_sha256`` must also contain the bundle's digest.
    """
    pinned = f"{fab_id}=={fab_version}"
    if not any(a == pinned or a == fab_id for a in accept_apps):
        return f"app {pinned} is not in federation.accept-apps"
    if accept_fab_sha256 and fab_sha256 not in accept_fab_sha256:
        return "app bundle digest is not in federation.accept-fab-sha256"
    return None

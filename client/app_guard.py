"""The site's ``flwr-clientapp``: Flower's, with the app allow-list checked first.

``m3fm-site start`` puts a ``flwr-clientapp`` shim that runs this module first on the
SuperNode's PATH, so every ClientApp process the SuperNode starts comes through here.
The run's app id, version and bundle digest are compared with the site config's
``[federation]`` section (the site config is named by the node config) after the bundle is
fetched and before it is installed or imported; a refused run is written to the site's
audit log and answered with Flower's error reply, whose text names no data.
"""

from __future__ import annotations

import logging
import os
from typing import Any

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import Message  # noqa: E402
from flwr.app.error import Error  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.supernode.cli import flwr_clientapp  # noqa: E402
from flwr.supernode.runtime import run_clientapp as _runtime  # noqa: E402

from .app_pin import app_refusal  # noqa: E402
from .audit import AuditLog  # noqa: E402
from .runtime import site_config_path  # noqa: E402
from .site_config import load_site_config  # noqa: E402

logger = logging.getLogger(__name__)
REFUSED = "the site does not accept this app"
REFUSED_CODE = ErrorCode.INVALID_FAB  # what the server sees for a refused app
_pull = _runtime.pull_task_input


def guarded_pull(client: Any) -> tuple[Any, Any, Any, Any]:
    """Flower's task pull, then the allow-list check (a refused run loads no bundle)."""
    message, context, run, fab = _pull(client)
    site = load_site_config(site_config_path(dict(context.node_config), []))
    reason = app_refusal(
        run.fab_id,
        run.fab_version,
        fab.hash_str,
        site.federation.accept_apps,
        site.federation.accept_fab_sha256,
    )
    if reason is not None:
        AuditLog.for_state_dir(site.state_dir).append(
            "refused",
            run_id=str(run.run_id),
            type=str(message.metadata.message_type),
            app=f"{run.fab_id}=={run.fab_version}",
            fab_sha256=fab.hash_str,
            reason=reason,
        )
        logger.error("refused run %s: %s", run.run_id, reason)
        _refuse_in_place()
    return message, context, run, fab


def _refusing_app(message: Message, context: Any) -> Message:
    """Stands in for the bundle's ClientApp: an error reply with a fixed text, no data."""
    return Message(Error(REFUSED_CODE, REFUSED), reply_to=message)


def _refuse_in_place() -> None:
    """Make the rest of Flower's task run skip the bundle and answer with a refusal.

    The bundle is neither installed nor imported; Flower's normal path then pushes the
    error reply and ends the task cleanly, so the server hears the refusal at once.
    """
    _runtime.install_from_fab = lambda *args, **kwargs: None
    _runtime.get_load_client_app_fn = lambda **kwargs: lambda *args: _refusing_app


def main() -> None:
    """Entry point of the shim: Flower's ``flwr-clientapp`` with the guarded pull."""
    _runtime.pull_task_input = guarded_pull
    flwr_clientapp()


if __name__ == "__main__":
    main()

"""The ServerApp: parse the run config and run the federated loop."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from .loop import FederatedLoop  # noqa: E402
from .run_config import RunConfig  # noqa: E402

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured number of federated rounds."""
    logging.getLogger("server").setLevel(logging.INFO)
    cfg = RunConfig.from_mapping(dict(context.run_config))
    torch_threads = int(os.environ.get("M3FM_SERVER_THREADS", "1"))
    import torch

    torch.set_num_threads(torch_threads)
    loop = FederatedLoop(grid, cfg)
    if cfg.secagg:
        from .secagg import run_secagg

        run_secagg(grid, context, loop)
    else:
        loop.run()

"""The ClientApp: a hospital site's train and evaluate handlers (Flower Message API).

Handlers follow Flower's order — config, model, arrays, local work, reply — and never
send exception text: a failure becomes a numeric status code, details stay in the site's
log.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from .records import (
    EVALUATE_METRIC_PATTERNS,
    TRAIN_METRIC_PATTERNS,
    Status,
    filter_metrics,
)  # noqa: E402
from .site_work import SiteRequest, evaluate_site, train_site  # noqa: E402

logger = logging.getLogger(__name__)
app = ClientApp()


def _request(msg: Message, context: Context) -> SiteRequest:
    arrays = (
        msg.content["arrays"].to_torch_state_dict()
        if "arrays" in msg.content.array_records
        else {}
    )
    return SiteRequest(
        run_id=str(context.run_id),
        node_config=dict(context.node_config),
        run_config=dict(context.run_config),
        instruction=dict(msg.content["config"])
        if "config" in msg.content.config_records
        else {},
        arrays=arrays,
    )


def _reply(
    msg: Message, site: str, metrics: dict, patterns: tuple, arrays: dict | None = None
) -> Message:
    content = RecordDict({"metrics": MetricRecord(filter_metrics(metrics, patterns))})
    if arrays:
        content["arrays"] = ArrayRecord(arrays)
    content["site"] = ConfigRecord({"name": site})
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the trainable scope locally (DP-SGD unless the site disabled it)."""
    try:
        outcome = train_site(_request(msg, context))
    except Exception:  # never crash the node, never send the text
        logger.exception("training failed")
        return _reply(
            msg, "", {"status": int(Status.TRAINING_ERROR)}, TRAIN_METRIC_PATTERNS
        )
    return _reply(
        msg, outcome.site, outcome.metrics, TRAIN_METRIC_PATTERNS, outcome.arrays
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's validation (or test) split."""
    try:
        outcome = evaluate_site(_request(msg, context))
    except Exception:
        logger.exception("evaluation failed")
        return _reply(
            msg, "", {"status": int(Status.TRAINING_ERROR)}, EVALUATE_METRIC_PATTERNS
        )
    return _reply(msg, outcome.site, outcome.metrics, EVALUATE_METRIC_PATTERNS)

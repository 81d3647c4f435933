"""The ClientApp: a hospital site's train and evaluate handlers (Flower Message API).

Handlers follow Flower's order — config, model, arrays, local work, reply — and never
send exception text: a failure becomes a numeric status code, details stay in the site's
log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from server.transfer import half_mode, received_tensors, wire_record  # noqa: E402

from .audit import AuditLog, payload_digest  # noqa: E402
from .records import (
    EVALUATE_METRIC_PATTERNS,
    TRAIN_METRIC_PATTERNS,
    Status,
    filter_metrics,
)  # noqa: E402
from .secagg_handlers import (  # noqa: E402
    is_legacy,
    secagg_evaluate,
    secagg_fit,
    secagg_when_requested,
)
from .site_work import (  # noqa: E402
    SiteOutcome,
    SiteRequest,
    evaluate_site,
    site_for,
    train_site,
)

logger = logging.getLogger(__name__)
app = ClientApp(mods=[secagg_when_requested])


def _request(msg: Message, context: Context) -> SiteRequest:
    config = (
        dict(msg.content["config"]) if "config" in msg.content.config_records else {}
    )
    half = half_mode(str(config.get("transfer", "float32")))
    arrays = (
        received_tensors(msg.content["arrays"], half)
        if "arrays" in msg.content.array_records
        else {}
    )
    return SiteRequest(
        run_id=str(context.run_id),
        node_config=dict(context.node_config),
        run_config=dict(context.run_config),
        instruction=config,
        arrays=arrays,
    )


def _reply(
    msg: Message,
    site: str,
    metrics: dict,
    patterns: tuple,
    arrays: dict | None = None,
    half: str | None = None,
) -> Message:
    content = RecordDict({"metrics": MetricRecord(filter_metrics(metrics, patterns))})
    if arrays:
        content["arrays"] = wire_record(arrays, half)
    content["site"] = ConfigRecord({"name": site})
    return Message(content, reply_to=msg)


def _audit(req: SiteRequest, kind: str) -> AuditLog | None:
    """The site's audit log with the instruction recorded; None if it cannot be written."""
    try:
        log = AuditLog.for_state_dir(site_for(req).state_dir)
        log.append(
            "instruction",
            run_id=req.run_id,
            round=int(req.instruction.get("server-round", 0)),
            type=kind,
            arrays=len(req.arrays),
        )
        return log
    except Exception:  # no site config or no writable state dir
        logger.exception("audit log unavailable")
        return None


def _answer(
    msg: Message, req: SiteRequest, kind: str, work: Callable, patterns: tuple
) -> Message:
    audit = _audit(req, kind)
    if audit is None:  # fail closed: nothing leaves a site that cannot log it
        return _reply(msg, "", {"status": int(Status.TRAINING_ERROR)}, patterns)
    try:
        outcome = work(req)
    except Exception:  # never crash the node, never send the text
        logger.exception("%s failed", kind)
        outcome = SiteOutcome("", {"status": int(Status.TRAINING_ERROR)})
    half = half_mode(str(req.instruction.get("transfer", "float32")))
    reply = _reply(msg, outcome.site, outcome.metrics, patterns, outcome.arrays, half)
    content = reply.content
    arrays = content["arrays"] if "arrays" in content.array_records else {}
    sha, sizes = payload_digest(arrays)
    sent = dict(content["metrics"])
    try:
        audit.append(
            "reply",
            run_id=req.run_id,
            round=int(req.instruction.get("server-round", 0)),
            type=kind,
            status=int(sent.get("status", -1)),
            arrays=sizes,
            sha256=sha,
            epsilon=sent.get("epsilon"),
        )
    except OSError:
        logger.exception("could not write the audit record; reply withheld")
        return _reply(msg, "", {"status": int(Status.TRAINING_ERROR)}, patterns)
    return reply


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the trainable scope locally (DP-SGD unless the site disabled it)."""
    if is_legacy(msg):
        return secagg_fit(msg, context)
    return _answer(
        msg, _request(msg, context), "train", train_site, TRAIN_METRIC_PATTERNS
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's validation (or test) split."""
    if is_legacy(msg):
        return secagg_evaluate(msg, context)
    return _answer(
        msg, _request(msg, context), "evaluate", evaluate_site, EVALUATE_METRIC_PATTERNS
    )

"""ClientApp handlers for rounds run through SecAgg+ (Flower's legacy record keys).

Flower 1.42 runs SecAgg+ only through its legacy server workflow, which speaks
``fitins.*``/``fitres.*`` and ``evaluateins.*``/``evaluateres.*`` records; these handlers
translate them to the same site work as plain rounds and write the same audit records.
``secaggplus_mod`` masks the train reply and clears its arrays before it leaves the site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common import (
    Status as FlowerStatus,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from .audit import AuditLog
from .records import (
    EVALUATE_METRIC_PATTERNS,
    TRAIN_METRIC_PATTERNS,
    Instruction,
    Status,
    filter_metrics,
)
from .runtime import global_model
from .scope import scope_names
from .secagg_site import contribution, group_order, group_weights
from .site_work import SiteOutcome, SiteRequest, evaluate_site, site_for, train_site

logger = logging.getLogger(__name__)


def secagg_when_requested(msg: Message, ctx: Context, call_next: Callable) -> Message:
    """Apply Flower's ``secaggplus_mod`` to SecAgg+ stage messages only."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctx, call_next)
    return call_next(msg, ctx)


def is_legacy(msg: Message) -> bool:
    """Whether a message uses the legacy record keys of the SecAgg+ workflow."""
    keys = msg.content.array_records
    return "fitins.parameters" in keys or "evaluateins.parameters" in keys


def _request(
    context: Context, config: dict[str, Any], parameters: Any
) -> tuple[SiteRequest, list[str], list[str]]:
    instr = Instruction.from_record(config)
    model = global_model(
        str(context.run_id), instr.preset, instr.seed, instr.init_weights
    )
    travel = scope_names(model, instr.trainable_scope)
    names = list(model.state_dict()) if instr.full_model else travel
    arrays = parameters_to_ndarrays(parameters)
    if len(arrays) != len(names):
        raise ValueError(f"expected {len(names)} arrays, received {len(arrays)}")
    tensors = {
        n: torch.from_numpy(a.copy()) for n, a in zip(names, arrays, strict=True)
    }
    req = SiteRequest(
        str(context.run_id), dict(context.node_config), dict(context.run_config),
        dict(config), tensors,
    )  # fmt: skip
    return req, travel, names


def _audit(req: SiteRequest, kind: str, **fields: Any) -> None:
    log = AuditLog.for_state_dir(site_for(req).state_dir)
    log.append(
        kind, run_id=req.run_id, round=int(req.instruction.get("server-round", 0)),
        secagg=True, **fields,
    )  # fmt: skip


def secagg_fit(msg: Message, context: Context) -> Message:
    """Train and reply with this site's share of the masked sum (see secagg_site)."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    req, travel, _ = _request(context, dict(fitins.config), fitins.parameters)
    _audit(req, "instruction", type="train", arrays=len(req.arrays))
    try:
        outcome = train_site(req)
    except Exception:  # never crash the node, never send the text
        logger.exception("training failed")
        outcome = SiteOutcome("", {"status": int(Status.TRAINING_ERROR)})
    metrics = filter_metrics(outcome.metrics, TRAIN_METRIC_PATTERNS)
    instr = Instruction.from_record(req.instruction)
    dp_clip = float(req.instruction.get("secagg-dp-clip", 0.0)) or None
    weights = group_weights(
        metrics,
        group_order(travel),
        float(instr.batch_size * instr.local_steps),
        clipped=dp_clip is not None,
    )
    trained = outcome.arrays if metrics.get("status") == 0 and outcome.arrays else None
    vector = contribution(
        travel, req.arrays, trained, weights,
        float(req.instruction.get("secagg-clip-range", 1.0)), dp_clip,
    )  # fmt: skip
    parameters = ndarrays_to_parameters(vector)
    _audit(
        req, "reply", type="train", status=int(metrics.get("status", -1)),
        arrays={"masked-vector": sum(len(t) for t in parameters.tensors)},
        epsilon=metrics.get("epsilon"),
    )  # fmt: skip
    res = FitRes(
        FlowerStatus(Code.OK, "Success"), parameters, 1,
        {**metrics, "site": outcome.site},
    )  # fmt: skip
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def secagg_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model; reply in the legacy evaluate format."""
    ins = compat.recorddict_to_evaluateins(msg.content, keep_input=True)
    req, _, _ = _request(context, dict(ins.config), ins.parameters)
    _audit(req, "instruction", type="evaluate", arrays=len(req.arrays))
    try:
        outcome = evaluate_site(req)
    except Exception:
        logger.exception("evaluation failed")
        outcome = SiteOutcome("", {"status": int(Status.TRAINING_ERROR)})
    metrics = filter_metrics(outcome.metrics, EVALUATE_METRIC_PATTERNS)
    _audit(
        req, "reply", type="evaluate", status=int(metrics.get("status", -1)), arrays={}
    )
    res = EvaluateRes(
        FlowerStatus(Code.OK, "Success"), float(metrics.get("loss", 0.0)),
        int(metrics.get("num-examples", 0)), {**metrics, "site": outcome.site},
    )  # fmt: skip
    return Message(compat.evaluateres_to_recorddict(res), reply_to=msg)

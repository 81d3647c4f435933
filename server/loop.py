"""The federated round loop: send, validate, aggregate, checkpoint, evaluate, report.

Written on Flower's ``Grid`` directly (rather than a built-in ``Strategy.start``) because
a round needs task-aware aggregation, per-reply validation, a reply deadline, a minimum
number of sites, crash-safe checkpoints and resume from any round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client.audit import AuditLog, payload_digest
from client.records import (
    EVALUATE_METRIC_PATTERNS,
    TRAIN_METRIC_PATTERNS,
    Instruction,
    filter_metrics,
)
from client.runtime import seeded_model
from client.scope import scope_names
from m3fm_model.pretrained import asset_info

from .aggregation import TaskAwareAggregator
from .central_dp import CentralDp, make_central_dp
from .checkpoint import RunCheckpointer, export_final
from .report import MetricsHistory, summary_table, write_plots
from .run_config import RunConfig
from .transfer import half_mode, record_arrays, wire_record
from .validation import (
    EVALUATE_REPLY_RECORDS,
    TRAIN_REPLY_RECORDS,
    Rejection,
    ValidatedReply,
    check_reply_records,
    expected_from_state,
    train_metric_patterns,
    validate_reply,
)

logger = logging.getLogger(__name__)
RECEIPTS = "receipts.jsonl"  # one line per received reply: round, site, digest


@dataclass
class LoopState:
    """What a checkpoint restores."""

    round: int
    state: dict[str, torch.Tensor]
    history: MetricsHistory


def _layout_rejection(msg: Message, allowed: Mapping[str, str]) -> Rejection | None:
    """Extra records or site keys in a reply (they could carry free text)."""
    content = msg.content
    kinds = {k: "array" for k in content.array_records}
    kinds |= {k: "metric" for k in content.metric_records}
    kinds |= {k: "config" for k in content.config_records}
    site = content.config_records.get("site")
    return check_reply_records(kinds, site.keys() if site else (), allowed)


def _site_name(msg: Message, node_id: int) -> str:
    try:
        name = str(msg.content["site"]["name"])
    except (KeyError, TypeError):
        return f"node-{node_id}"
    return (
        name if name.replace("_", "").replace("-", "").isalnum() else f"node-{node_id}"
    )


class FederatedLoop:
    """One federated run on a grid (simulation or deployment)."""

    def __init__(self, grid: Grid, cfg: RunConfig) -> None:
        self.grid, self.cfg = grid, cfg
        self.run_dir = cfg.run_dir
        self.ckpt = RunCheckpointer(self.run_dir)
        self.model = seeded_model(cfg.preset, cfg.seed, cfg.init_weights)
        self.travel = scope_names(self.model, cfg.trainable_scope)
        self.tasks = self.model.tasks
        self.aggregator = TaskAwareAggregator(
            cfg.aggregation,
            min_sites=cfg.min_sites,
            central_dp=self._central_dp(),
            in_place=True,
        )

    def _central_dp(self) -> CentralDp | None:
        if not self.cfg.central_dp:
            return None
        return make_central_dp(
            self.cfg.central_dp_clip,
            self.cfg.central_dp_noise,
            population_size=max(
                self.cfg.min_sites, len(self.cfg.site_config_paths()), 1
            ),
            target_delta=1e-5,
            max_epsilon=self.cfg.central_dp_max_epsilon,
        )

    def _start(self) -> LoopState:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        history = MetricsHistory(meta={"run-config": self.cfg.to_dict()})
        if not self.cfg.resume:
            return LoopState(1, state, history)
        latest = self.ckpt.load_latest()
        if latest is None:
            logger.warning(
                "resume=true but no checkpoint in %s: starting at round 1", self.run_dir
            )
            return LoopState(1, state, history)
        self.ckpt.check_resume(self.cfg.to_dict())
        self.aggregator.load_state_dict(latest.strategy_state.get("aggregator", {}))
        history = MetricsHistory.from_json(latest.metrics_history["json"])  # type: ignore[index]
        logger.info("resuming after round %d from %s", latest.round, latest.path)
        return LoopState(latest.round + 1, dict(latest.global_state), history)

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.cfg.node_wait_timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.cfg.min_sites or time.monotonic() > deadline:
                return nodes
            logger.info(
                "waiting for sites: %d of %d connected", len(nodes), self.cfg.min_sites
            )
            time.sleep(1.0)

    def _instruction(self, rnd: int, full: bool, split: str = "val") -> Instruction:
        c = self.cfg
        mu = c.proximal_mu if c.aggregation == "fedprox" else 0.0
        return Instruction(
            rnd, c.num_server_rounds, c.preset, c.trainable_scope, c.lr, c.local_steps,
            c.batch_size, c.seed, mu, c.modality_dropout, full, split, c.transfer_precision,
            c.init_weights,
        )  # fmt: skip

    def _messages(
        self, nodes: Iterable[int], state: dict, instr: Instruction, kind: str
    ) -> list[Message]:
        names = list(state) if instr.full_model else self.travel
        arrays = wire_record({n: state[n] for n in names}, half_mode(instr.transfer))
        out = []
        for nid in nodes:
            content = RecordDict(
                {"arrays": arrays, "config": ConfigRecord(instr.to_record())}
            )
            out.append(Message(content, nid, kind, group_id=str(instr.server_round)))
        return out

    def _send(self, messages: list[Message]) -> list[Message]:
        if not messages:
            return []
        return list(
            self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout)
        )

    def _validate(
        self, replies: list[Message], state: dict, rnd: int, history: MetricsHistory
    ) -> list[ValidatedReply]:
        expected = expected_from_state(state, self.travel)
        patterns = train_metric_patterns(self.tasks)
        valid = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                logger.warning(
                    "round %d: node %d failed (error code %s)",
                    rnd,
                    node,
                    msg.error.code,
                )
                continue
            site = _site_name(msg, node)
            layout = _layout_rejection(msg, TRAIN_REPLY_RECORDS)
            if layout is not None:
                logger.warning(
                    "round %d: reply of %s not used: %s (%s)",
                    rnd,
                    site,
                    layout.code,
                    layout.message,
                )
                continue
            arrays = None
            if "arrays" in msg.content.array_records:
                self._receipt(rnd, site, node, msg.content["arrays"])
                arrays = record_arrays(msg.content["arrays"])
            metrics = (
                dict(msg.content["metrics"])
                if "metrics" in msg.content.metric_records
                else {}
            )
            result = validate_reply(
                arrays, metrics, expected, state, max_update_norm=self.cfg.max_update_norm,
                allowed_metric_patterns=patterns, site=site,
                half=half_mode(self.cfg.transfer_precision),
            )  # fmt: skip
            history.record_train(
                rnd,
                site,
                {
                    k: float(v)
                    for k, v in filter_metrics(metrics, TRAIN_METRIC_PATTERNS).items()
                },
            )
            if isinstance(result, Rejection):
                level = logging.INFO if result.refusal else logging.WARNING
                logger.log(
                    level,
                    "round %d: reply of %s not used: %s (%s)",
                    rnd,
                    site,
                    result.code,
                    result.message,
                )
                continue
            valid.append(result)
        return valid

    def _receipt(self, rnd: int, site: str, node: int, record: ArrayRecord) -> None:
        """Record what arrived, in the digest the sites write to their audit logs."""
        sha, sizes = payload_digest(record)
        AuditLog(self.run_dir / RECEIPTS).append(
            "received", round=rnd, site=site, node=node, arrays=sizes, sha256=sha
        )

    def _evaluate(
        self, rnd: int, nodes: list[int], state: dict, history: MetricsHistory
    ) -> None:
        instr = self._instruction(rnd, False, self.cfg.evaluate_split)
        for msg in self._send(
            self._messages(nodes, state, instr, MessageType.EVALUATE)
        ):
            if msg.has_error() or "metrics" not in msg.content.metric_records:
                continue
            layout = _layout_rejection(msg, EVALUATE_REPLY_RECORDS)
            if layout is not None:
                logger.warning(
                    "round %d: evaluation of node %d not used: %s (%s)",
                    rnd,
                    msg.metadata.src_node_id,
                    layout.code,
                    layout.message,
                )
                continue
            metrics = filter_metrics(
                dict(msg.content["metrics"]), EVALUATE_METRIC_PATTERNS
            )
            if metrics.get("status", 0) == 0:
                site = _site_name(msg, msg.metadata.src_node_id)
                history.record_evaluate(
                    rnd, site, {k: float(v) for k, v in metrics.items()}
                )

    def _round(self, rnd: int, ls: LoopState, full: bool) -> None:
        start = time.monotonic()
        nodes = self._wait_for_nodes()
        replies = self._send(
            self._messages(
                nodes, ls.state, self._instruction(rnd, full), MessageType.TRAIN
            )
        )
        valid = self._validate(replies, ls.state, rnd, ls.history)
        result = self.aggregator.aggregate(ls.state, valid)
        if result.applied:
            ls.state.update(result.state)
        else:
            logger.warning("round %d: global model unchanged: %s", rnd, result.reason)
        sites = {g: len(s) for g, s in result.updated_by.items()}
        ls.history.record_aggregation(rnd, result.applied, result.reason, sites)
        self._evaluate(rnd, nodes, ls.state, ls.history)
        ls.history.record_seconds(rnd, time.monotonic() - start)
        strategy: dict[str, Any] = {"aggregator": self.aggregator.state_dict()}
        self.ckpt.save(
            rnd, ls.state, strategy, {"json": ls.history.to_json()}, self.cfg.to_dict()
        )
        ls.history.write(self.run_dir)

    def run(self) -> LoopState:
        """Run the remaining rounds; export the final model and reports."""
        ls = self._start()
        first = ls.round
        for rnd in range(first, self.cfg.num_server_rounds + 1):
            self._round(rnd, ls, full=rnd == first)
            ls.round = rnd
        self._finish(ls)
        return ls

    def _finish(self, ls: LoopState) -> None:
        write_plots(ls.history, self.run_dir / "plots")
        card = {
            "preset": self.cfg.preset,
            "tasks": list(self.tasks),
            "rounds": ls.round,
            "sites": ls.history.sites(),
            "trainable-scope": self.cfg.trainable_scope,
            "initial-weights": _initial_weights(self.cfg.init_weights),
            "aggregation": self.cfg.aggregation,
            "privacy": _privacy_by_site(ls.history),
            "central-dp-epsilon": (
                self.aggregator.central_dp.epsilon()
                if self.aggregator.central_dp is not None
                else None
            ),
            "metrics": ls.history.rounds[-1].aggregate if ls.history.rounds else {},
            "run-config": self.cfg.to_dict(),
        }
        export_final(self.run_dir, ls.state, card)
        logger.info("final summary\n%s", summary_table(ls.history))


def _initial_weights(name: str) -> dict[str, str] | None:
    """Which packaged weights the run started from (None: random initialisation)."""
    if name == "none":
        return None
    return {"name": name, "sha256": asset_info(name)["sha256"]}


def _privacy_by_site(history: MetricsHistory) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for rec in history.rounds:
        for site, m in rec.train.items():
            if "epsilon" in m:
                out[site] = {
                    "epsilon": m["epsilon"],
                    "delta": m.get("delta", float("nan")),
                }
    return out

"""Rounds through SecAgg+: the server learns only the sum of the sites' vectors.

Flower 1.42 runs SecAgg+ only with its legacy server stack (``LegacyContext``,
``DefaultWorkflow`` and ``SecAggPlusWorkflow`` driving a legacy ``Strategy``).
:class:`SecAggStrategy` is that strategy, sharing everything else with the plain loop
(instructions, checkpoints, metrics history, final export). Task-aware averaging is kept
exactly: each site's vector is its weighted update per array plus one indicator per
parameter group (see ``client/secagg_site.py``), so the sum yields each group's mean
update over the sites that trained it.

What changes with SecAgg+ on: the server cannot validate or clip one site's reply (it
never sees one); each coordinate is bounded at the site by ``secagg-clip-range``;
aggregation is FedAvg (robust and adaptive methods need individual replies); per-site
metrics (counts, epsilon) still arrive in the clear. With ``central-dp`` each site clips
its whole update to L2 <= C and the server adds N(0, (z C / n_g)^2) to each group's
uniform mean: the released model is (epsilon, delta)-DP with respect to adding or
removing one site, but the server itself sees the un-noised sum.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from flwr.app import Context
from flwr.common import (
    EvaluateIns,
    FitIns,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from client.audit import AuditLog
from client.records import (
    EVALUATE_METRIC_PATTERNS,
    TRAIN_METRIC_PATTERNS,
    filter_metrics,
)
from client.scope import param_group
from client.secagg_site import combine
from server.central_dp import central_dp_noise

from .loop import RECEIPTS, FederatedLoop, LoopState

logger = logging.getLogger(__name__)


def updates_groups(updates: dict[str, torch.Tensor]) -> list[str]:
    """The parameter groups that received an update."""
    return sorted({param_group(n) for n in updates})


def _site(metrics: dict[str, Any], cid: str) -> str:
    name = str(metrics.get("site", ""))
    return name if name.replace("_", "").replace("-", "").isalnum() else f"node-{cid}"


class SecAggStrategy(Strategy):
    """Legacy strategy that drives our rounds inside Flower's SecAgg+ workflow."""

    def __init__(self, loop: FederatedLoop, ls: LoopState) -> None:
        self.loop, self.ls = loop, ls
        self.offset = ls.round - 1
        self.names: list[str] = list(loop.travel)
        self.started = 0.0
        self.aggregated: set[int] = set()

    def _round(self, server_round: int) -> int:
        return self.offset + server_round

    def _params(self, names: list[str]) -> Parameters:
        return ndarrays_to_parameters([self.ls.state[n].numpy() for n in names])

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters:
        """The trainable scope of the starting model (the workflow's initial record)."""
        return self._params(self.names)

    def _clients(self, client_manager: ClientManager) -> list:
        cfg = self.loop.cfg
        client_manager.wait_for(cfg.min_sites, timeout=int(cfg.node_wait_timeout))
        return list(client_manager.all().values())

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list:
        """Every connected site trains; the first round sends the full model."""
        self.started = time.monotonic()
        rnd, cfg = self._round(server_round), self.loop.cfg
        full = server_round == 1
        record = self.loop._instruction(rnd, full).to_record()
        record["secagg-clip-range"] = cfg.secagg_clip_range
        if cfg.central_dp:
            record["secagg-dp-clip"] = cfg.central_dp_clip
        names = list(self.ls.state) if full else self.names
        ins = FitIns(self._params(names), record)
        return [(c, ins) for c in self._clients(client_manager)]

    def aggregate_fit(
        self, server_round: int, results: list, failures: list
    ) -> tuple[Parameters | None, dict[str, Any]]:
        """Turn the unmasked sum into per-group mean updates and apply them."""
        rnd, history = self._round(server_round), self.ls.history
        self.aggregated.add(rnd)
        sites, trained_by = [], {}
        for proxy, res in results:
            site = _site(res.metrics, proxy.cid)
            sites.append(site)
            if res.metrics.get("status") == 0:
                for key, value in res.metrics.items():
                    if key.startswith("count.") and float(value) > 0:
                        trained_by[key[6:]] = trained_by.get(key[6:], 0) + 1
            history.record_train(
                rnd,
                site,
                {
                    k: float(v)
                    for k, v in filter_metrics(
                        res.metrics, TRAIN_METRIC_PATTERNS
                    ).items()
                },  # fmt: skip
            )
        if not results:
            history.record_aggregation(rnd, False, "no secure-aggregation result", {})
            return None, {}
        summed = parameters_to_ndarrays(results[0][1].parameters)
        updates, indicators = combine(self.names, summed)
        if not updates:  # every site refused or failed: all indicators are zero
            history.record_aggregation(rnd, False, "no site contributed an update", {})
            return None, {}
        counts = {g: round(w * len(results)) for g, w in indicators.items()}
        reason = self._central_dp(updates, counts, len(results))
        if reason is not None:
            history.record_aggregation(rnd, False, reason, {})
            return None, {}
        if not all(bool(torch.isfinite(u).all()) for u in updates.values()):
            history.record_aggregation(rnd, False, "non-finite aggregate", {})
            return None, {}
        for name, upd in updates.items():
            t = self.ls.state[name]
            self.ls.state[name] = (t.float() + upd.reshape(t.shape)).to(t.dtype)
        per_group = {g: trained_by.get(g, 0) for g in updates_groups(updates)}
        history.record_aggregation(rnd, True, "", per_group)
        AuditLog(self.loop.run_dir / RECEIPTS).append(
            "received-sum", round=rnd, sites=sorted(sites), arrays=len(summed)
        )
        return self._params(self.names), {}

    def _central_dp(
        self, updates: dict[str, torch.Tensor], counts: dict[str, int], k: int
    ) -> str | None:
        dp = self.loop.aggregator.central_dp
        if dp is None:
            return None
        if (reason := dp.refusal(k)) is not None:
            return reason
        n_g = {g: max(n, 1) for g, n in counts.items()}
        central_dp_noise(updates, dp.clip_norm, dp.noise_multiplier, {param_group(n): n_g[param_group(n)] for n in updates}, dp.generator)  # fmt: skip
        dp.record(k)
        return None

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list:
        """Every connected site evaluates the new global model."""
        rnd = self._round(server_round)
        if rnd not in self.aggregated:
            self.ls.history.record_aggregation(
                rnd, False, "secure aggregation halted", {}
            )
        record = self.loop._instruction(
            rnd, False, self.loop.cfg.evaluate_split
        ).to_record()
        ins = EvaluateIns(self._params(self.names), record)
        return [(c, ins) for c in self._clients(client_manager)]

    def aggregate_evaluate(
        self, server_round: int, results: list, failures: list
    ) -> tuple[float | None, dict[str, Any]]:
        """Record per-site metrics, then checkpoint the round."""
        rnd, ls = self._round(server_round), self.ls
        for proxy, res in results:
            metrics = filter_metrics(res.metrics, EVALUATE_METRIC_PATTERNS)
            if metrics.get("status", 0) == 0:
                site = _site(res.metrics, proxy.cid)
                ls.history.record_evaluate(
                    rnd, site, {k: float(v) for k, v in metrics.items()}
                )
        ls.history.record_seconds(rnd, time.monotonic() - self.started)
        strategy = {"aggregator": self.loop.aggregator.state_dict()}
        self.loop.ckpt.save(rnd, ls.state, strategy, {"json": ls.history.to_json()}, self.loop.cfg.to_dict())  # fmt: skip
        ls.history.write(self.loop.run_dir)
        ls.round = rnd
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        """No central evaluation: the server holds no data."""
        return None


def run_secagg(grid: Grid, context: Context, loop: FederatedLoop) -> LoopState:
    """Run the remaining rounds through SecAgg+ and export the final model."""
    ls = loop._start()
    remaining = loop.cfg.num_server_rounds - ls.round + 1
    if remaining >= 1:
        strategy = SecAggStrategy(loop, ls)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=remaining, round_timeout=loop.cfg.round_timeout), strategy=strategy)  # fmt: skip
        workflow = SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=loop.cfg.secagg_threshold,
            max_weight=1.0,
            clipping_range=loop.cfg.secagg_clip_range,
            timeout=loop.cfg.round_timeout,
        )
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
    else:
        ls.round = loop.cfg.num_server_rounds
    loop._finish(ls)
    return ls

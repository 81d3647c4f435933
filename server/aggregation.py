"""Task-aware aggregation: each parameter group is combined over the sites that trained it.

Sites label different tasks, so a site returns the trunk (its part of the trainable
scope) and only the heads of its own tasks. Every group (``trunk``, ``heads.<task>``) is
averaged over the sites that returned it, weighted by their per-group example counts; a
group that nobody returned keeps its global value.

Why not Flower's strategies (``FedAvg``, ``FedAdam``, ``FedMedian``, ``FedTrimmedAvg``):
they weight whole replies by one metric and assume every reply carries every array, and
``aggregate_arrayrecords`` deserialises each array with ``np.load`` and multiplies it
into a temporary (~4.7x the memory-bandwidth bound, docs/performance-notes.md §4). Here
fedavg accumulates in place, straight from the received buffers (``server.combine``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from server.central_dp import CentralDp, central_dp_noise, clip_scale
from server.combine import acc_dtype, robust_combine, weighted_mean
from server.validation import ValidatedReply, update_norm

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("fedavg", "fedadam", "median", "trimmed-mean")
_ROBUST = ("median", "trimmed-mean")


@dataclass(frozen=True)
class AggregateResult:
    """Outcome of one aggregation.

    Attributes:
        state: name -> new value for every name of the given global state (unchanged
            names are the global tensors themselves; updated ones are new tensors, or
            the global tensors overwritten when the aggregator is ``in_place``).
        applied: False when the global model was returned unchanged.
        reason: why it was not applied (empty when applied).
        updated_by: parameter group -> names of the sites whose replies updated it.
        total_weight: parameter group -> sum of those sites' example counts.
        noise_std: parameter group -> central DP noise standard deviation added.
        epsilon: cumulative central DP epsilon after this round (None without DP).
    """

    state: dict[str, torch.Tensor]
    applied: bool
    reason: str = ""
    updated_by: dict[str, tuple[str, ...]] = field(default_factory=dict)
    total_weight: dict[str, float] = field(default_factory=dict)
    noise_std: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None


class TaskAwareAggregator:
    """Combine validated replies group by group.

    Args:
        method: "fedavg" ("fedprox" is an alias: the proximal term lives at the site),
            "fedadam" (server Adam on the pseudo-gradient global - average),
            "median" or "trimmed-mean" (coordinate-wise, unweighted).
        min_sites: fewer valid replies leave the global model unchanged.
        trim_fraction: fraction trimmed from each end for "trimmed-mean" (< 0.5).
        server_lr: FedAdam step size (Flower's default 0.1 is large for fine-tuning).
        beta1: FedAdam first-moment decay.
        beta2: FedAdam second-moment decay.
        tau: FedAdam adaptivity (added to the root of the second moment).
        central_dp: clip each site's update, average uniformly (count weights would
            raise the sensitivity above C / n), add noise and account epsilon; fedavg
            and fedadam only.
        in_place: write each updated array into the global state's own tensor (which
            must be the server's writable memory) instead of new memory. Fresh memory
            costs a page fault per 4 kB page, ~2 GB/s here, which would double the
            cost of fedavg; use it when the previous global is discarded after the
            round (clone anything you keep, e.g. a best model).
    """

    def __init__(
        self,
        method: str = "fedavg",
        *,
        min_sites: int = 1,
        trim_fraction: float = 0.1,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        central_dp: CentralDp | None = None,
        in_place: bool = False,
    ) -> None:
        if method not in (*METHODS, "fedprox"):
            raise ValueError(f"aggregation {method!r} is not one of {METHODS}")
        method = "fedavg" if method == "fedprox" else method
        if min_sites < 1:
            raise ValueError("min_sites must be at least 1")
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        if central_dp is not None and method in _ROBUST:
            raise ValueError(f"central DP needs an averaging method, not {method!r}")
        self.method, self.min_sites, self.trim_fraction = (
            method,
            min_sites,
            trim_fraction,
        )
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.central_dp, self.in_place = central_dp, in_place
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}
        self._steps: dict[str, int] = {}

    def _refusal(self, replies: Sequence[ValidatedReply]) -> str | None:
        if not replies:
            return "no valid replies"
        if len(replies) < self.min_sites:
            return (
                f"{len(replies)} valid replies, fewer than min_sites={self.min_sites}"
            )
        if self.central_dp is not None:
            return self.central_dp.refusal(len(replies))
        return None

    def aggregate(
        self,
        global_state: Mapping[str, torch.Tensor],
        replies: Sequence[ValidatedReply],
    ) -> AggregateResult:
        """Combine the replies into a new state for the travelling names.

        Args:
            global_state: name -> current global value of every travelling name.
            replies: validated replies of this round.

        Returns:
            The new state with who updated what; ``applied=False`` with a reason when
            there are too few replies or central DP would exceed its budget.
        """
        reason = self._refusal(replies)
        if reason is not None:
            logger.warning("aggregation not applied: %s", reason)
            return AggregateResult(dict(global_state), False, reason)
        members = _members(replies, global_state)
        scales = self._clip_scales(global_state, replies)
        new = dict(global_state)
        noise: dict[str, float] = {}
        for group, sites in members.items():
            updated, std = self._combine(group, sites, global_state, scales)
            new.update(updated)
            if std is not None:
                noise[group] = std
        epsilon = None
        if self.central_dp is not None:
            epsilon = self.central_dp.record(len(replies))
        return AggregateResult(
            state=new,
            applied=True,
            updated_by={g: tuple(r.site for r in m) for g, m in members.items()},
            total_weight={
                g: float(sum(r.counts[g] for r in m)) for g, m in members.items()
            },
            noise_std=noise,
            epsilon=epsilon,
        )

    def _clip_scales(
        self,
        global_state: Mapping[str, torch.Tensor],
        replies: Sequence[ValidatedReply],
    ) -> dict[int, float] | None:
        if self.central_dp is None:
            return None
        clip = self.central_dp.clip_norm
        return {
            id(r): clip_scale(update_norm(r.arrays(), global_state), clip)
            for r in replies
        }

    def _out(
        self, current: torch.Tensor, tensors: Sequence[torch.Tensor]
    ) -> torch.Tensor | None:
        """``current`` itself when the result may overwrite it, else ``None``."""
        if not self.in_place or self.method == "fedadam":
            return None
        ptr = current.untyped_storage().data_ptr()
        if (
            current.dtype != acc_dtype(current.dtype)
            or not current.is_contiguous()
            or any(t.untyped_storage().data_ptr() == ptr for t in tensors)
        ):
            return None
        return current

    def _combine(
        self,
        group: str,
        sites: list[ValidatedReply],
        global_state: Mapping[str, torch.Tensor],
        scales: dict[int, float] | None,
    ) -> tuple[dict[str, torch.Tensor], float | None]:
        names = list(sites[0].groups[group])
        if self.method in _ROBUST:
            out = {}
            for n in names:
                tensors = [r.groups[group][n] for r in sites]
                target = self._out(global_state[n], tensors)
                out[n] = robust_combine(
                    tensors, self.method, self.trim_fraction, out=target
                )
            return _cast_like(out, global_state), None
        alphas, base_coef = self._alphas(group, sites, scales)
        out = {
            n: self._mean(
                [r.groups[group][n] for r in sites], global_state[n], alphas, base_coef
            )
            for n in names
        }
        std = None
        if self.central_dp is not None:
            dp = self.central_dp
            stds = central_dp_noise(
                out, dp.clip_norm, dp.noise_multiplier, len(sites), dp.generator
            )
            std = stds.get(group)
        if self.method == "fedadam":
            self._adam_step(group, out, global_state)
        return _cast_like(out, global_state), std

    def _alphas(
        self, group: str, sites: list[ValidatedReply], scales: dict[int, float] | None
    ) -> tuple[list[float], float | None]:
        """Per-site coefficients and the global's coefficient (clipped updates)."""
        if scales is None:
            total = sum(r.counts[group] for r in sites)
            return [r.counts[group] / total for r in sites], None
        # mean_i(g + s_i (x_i - g)) = (1 - sum_i s_i / n) g + sum_i (s_i / n) x_i
        alphas = [scales[id(r)] / len(sites) for r in sites]
        return alphas, 1.0 - sum(alphas)

    def _mean(
        self,
        tensors: list[torch.Tensor],
        current: torch.Tensor,
        alphas: list[float],
        base_coef: float | None,
    ) -> torch.Tensor:
        dtype = acc_dtype(current.dtype)
        target = self._out(current, tensors)
        if base_coef is None:
            return weighted_mean(tensors, alphas, dtype=dtype, out=target)
        return weighted_mean(
            tensors, alphas, base=current, base_coef=base_coef, dtype=dtype, out=target
        )

    def _adam_step(
        self,
        group: str,
        avg: dict[str, torch.Tensor],
        global_state: Mapping[str, torch.Tensor],
    ) -> None:
        # Per-group step counts: a head is updated only in rounds where a site trained it.
        t = self._steps.get(group, 0) + 1
        self._steps[group] = t
        b1, b2 = self.beta1, self.beta2
        step = self.server_lr / (1.0 - b1**t)
        root_bias = math.sqrt(1.0 - b2**t)
        for name, acc in avg.items():
            g = global_state[name]
            delta = acc.sub_(g)  # average - global = -pseudo-gradient
            m = self._m.setdefault(name, torch.zeros_like(acc))
            v = self._v.setdefault(name, torch.zeros_like(acc))
            m.mul_(b1).add_(delta, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(delta, delta, value=1.0 - b2)
            denom = v.sqrt().div_(root_bias).add_(self.tau)
            in_place = self.in_place and g.dtype == acc.dtype and g.is_contiguous()
            new = g if in_place else delta.copy_(g)
            avg[name] = new.addcdiv_(m, denom, value=step)

    def state_dict(self) -> dict[str, object]:
        """Strategy state for checkpoints: FedAdam moments and the DP accountant.

        ``"optimizer"`` is a flat dict of tensors (``m.<name>``, ``v.<name>``,
        ``step.<group>``); ``"central_dp"`` is the accountant's JSON-able state.
        """
        opt = {f"m.{n}": t.clone() for n, t in self._m.items()}
        opt.update({f"v.{n}": t.clone() for n, t in self._v.items()})
        opt.update({f"step.{g}": torch.tensor(s) for g, s in self._steps.items()})
        dp = None if self.central_dp is None else self.central_dp.state_dict()
        return {"method": self.method, "optimizer": opt, "central_dp": dp}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore ``state_dict`` output (the method and DP setting must match)."""
        if state.get("method") != self.method:
            raise ValueError(
                f"strategy state is for {state.get('method')!r}, not {self.method!r}"
            )
        dp_state = state.get("central_dp")
        if (dp_state is None) != (self.central_dp is None):
            raise ValueError("strategy state and aggregator differ in central DP use")
        opt: Mapping[str, torch.Tensor] = state.get("optimizer", {})  # type: ignore[assignment]
        self._m = {k[2:]: t.clone() for k, t in opt.items() if k.startswith("m.")}
        self._v = {k[2:]: t.clone() for k, t in opt.items() if k.startswith("v.")}
        self._steps = {k[5:]: int(t) for k, t in opt.items() if k.startswith("step.")}
        if self.central_dp is not None:
            self.central_dp.load_state_dict(dict(dp_state))  # type: ignore[arg-type]


def _members(
    replies: Sequence[ValidatedReply], global_state: Mapping[str, torch.Tensor]
) -> dict[str, list[ValidatedReply]]:
    members: dict[str, list[ValidatedReply]] = {}
    for reply in replies:
        for group, arrays in reply.groups.items():
            for name, t in arrays.items():
                if name not in global_state or t.shape != global_state[name].shape:
                    raise ValueError(
                        f"reply array {name} does not match the global state"
                    )
            members.setdefault(group, []).append(reply)
    for group, sites in members.items():
        names = set(sites[0].groups[group])
        if any(set(r.groups[group]) != names for r in sites):
            raise ValueError(f"replies disagree on the arrays of group {group}")
    return dict(sorted(members.items()))


def _cast_like(
    out: dict[str, torch.Tensor], like: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return {
        n: t if t.dtype == like[n].dtype else t.to(like[n].dtype)
        for n, t in out.items()
    }

"""Site-level central DP: clip each site's update, add Gaussian noise, account epsilon.

Each site's whole update (reply - global, all its groups together) is clipped to L2 <= C
and the clipped replies of a group are averaged *uniformly* over the n_g sites that
returned it. The per-group sums then have sensitivity C under adding or removing one site,
and noise N(0, (z C)^2) on a sum is N(0, (z C / n_g)^2) on the group's mean: one Gaussian
release with noise multiplier z per round, whatever the groups.

Why not Flower's ``DifferentialPrivacyServerSideFixedClipping``: it wraps a ``Strategy``
(its ``start`` loop), clips and noises the single FedAvg average of all arrays with one
sigma = z C / n, and requires every site to report the same ``num-examples``. Task-aware
aggregation averages each head over a different subset of sites, so sigma differs per
group. Flower's accountant is used as is (``flwr.serverapp.RdpAccountant``) when its
``dp-accounting`` backend is installed; otherwise ``OpacusRdpAccountant`` implements the
same protocol with Opacus' RDP analysis at sample rate 1 (no amplification), and writes a
state that Flower's accountant can load and vice versa.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyAccountant,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)

from client.scope import param_group

logger = logging.getLogger(__name__)
# Opacus' default RDP orders (``RDPAccountant.DEFAULT_ALPHAS``).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
)


def _rdp_analysis() -> Any:
    # Imported on first use: importing opacus takes ~1.5 s and installs a root logging
    # handler (its ``logging.basicConfig``), which a server without central DP avoids.
    from opacus.accountants.analysis import rdp

    return rdp


class OpacusRdpAccountant:
    """Flower's ``PrivacyAccountant`` protocol on Opacus' RDP accountant.

    Only ``SamplingMethod.NO_AMPLIFICATION`` is supported: every release is a plain
    Gaussian mechanism (Opacus sample rate 1).
    """

    def __init__(self, config: PrivacyConfig) -> None:
        if config.sampling_method is not SamplingMethod.NO_AMPLIFICATION:
            raise ValueError("OpacusRdpAccountant supports only NO_AMPLIFICATION")
        self._config = config
        self._orders = RDP_ORDERS
        self._analysis = _rdp_analysis()
        self._compositions: list[tuple[GaussianPrivacyEvent, int]] = []

    @property
    def config(self) -> PrivacyConfig:
        """The privacy configuration."""
        return self._config

    @property
    def num_releases(self) -> int:
        """Number of composed releases."""
        return sum(c for _, c in self._compositions)

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        """Record ``count`` Gaussian releases."""
        self._check(event, count)
        self._compositions.append((event, count))

    def _rdp(self, compositions: list[tuple[GaussianPrivacyEvent, int]]) -> np.ndarray:
        total = np.zeros(len(self._orders))
        for event, count in compositions:
            total += self._analysis.compute_rdp(
                q=1.0,
                noise_multiplier=event.noise_multiplier,
                steps=count,
                orders=list(self._orders),
            )
        return total

    def _epsilon(self, compositions: list, delta: float) -> tuple[float, float]:
        if not compositions:
            return 0.0, float("nan")
        eps, order = self._analysis.get_privacy_spent(
            orders=list(self._orders), rdp=self._rdp(compositions), delta=delta
        )
        return float(eps), float(order)

    def get_epsilon(self, delta: float) -> float:
        """Cumulative epsilon at ``delta``."""
        return self._epsilon(self._compositions, delta)[0]

    def get_delta(self, epsilon: float) -> float:
        """Cumulative delta at ``epsilon`` (the inverse of Opacus' RDP conversion)."""
        if not self._compositions:
            return 0.0
        a = np.asarray(self._orders)
        log_delta = (a - 1) * (
            self._rdp(self._compositions) - epsilon + np.log1p(-1 / a)
        )
        return float(min(1.0, np.exp(np.min(log_delta - np.log(a)))))

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        """Cumulative (epsilon, delta) spent."""
        d = self._config.target_delta if delta is None else delta
        eps, order = self._epsilon(self._compositions, d)
        return PrivacySpent(eps, d, self.num_releases, "rdp", order)

    def would_exceed(
        self,
        event: GaussianPrivacyEvent,
        max_epsilon: float | None = None,
        count: int = 1,
    ) -> bool:
        """Whether composing ``event`` would exceed the epsilon limit (no state change)."""
        self._check(event, count)
        limit = self._config.max_epsilon if max_epsilon is None else max_epsilon
        if limit is None:
            raise ValueError("max_epsilon must be given in PrivacyConfig or here")
        projected = [*self._compositions, (event, count)]
        return self._epsilon(projected, self._config.target_delta)[0] > limit

    def state_dict(self) -> dict[str, object]:
        """JSON-serialisable state in the schema of Flower's ``RdpAccountant``."""
        cfg = self._config
        return {
            "schema_version": 1,
            "backend": "rdp",
            "implementation": "opacus",
            "config": {
                "target_delta": cfg.target_delta,
                "population_size": cfg.population_size,
                "neighboring_relation": cfg.neighboring_relation.value,
                "sampling_method": cfg.sampling_method.value,
                "max_epsilon": cfg.max_epsilon,
            },
            "orders": list(self._orders),
            "compositions": [
                {"event": asdict(e), "count": c} for e, c in self._compositions
            ],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a state from ``state_dict`` (this class's or Flower's)."""
        if state.get("schema_version") != 1 or state.get("backend") != "rdp":
            raise ValueError("accountant state has an unknown schema or backend")
        if _config_from_state(state) != self._config:
            raise ValueError("accountant state has a different privacy configuration")
        compositions = []
        for item in state["compositions"]:  # type: ignore[union-attr]
            event = GaussianPrivacyEvent(**item["event"])
            self._check(event, item["count"])
            compositions.append((event, int(item["count"])))
        self._compositions = compositions

    def _check(self, event: GaussianPrivacyEvent, count: int) -> None:
        if event.population_size != self._config.population_size:
            raise ValueError("event population_size differs from the PrivacyConfig")
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ValueError("count must be a positive integer")


def _config_from_state(state: Mapping[str, object]) -> PrivacyConfig:
    cfg = dict(state["config"])  # type: ignore[call-overload]
    return PrivacyConfig(
        target_delta=float(cfg["target_delta"]),
        population_size=int(cfg["population_size"]),
        neighboring_relation=NeighboringRelation(cfg["neighboring_relation"]),
        sampling_method=SamplingMethod(cfg["sampling_method"]),
        max_epsilon=None if cfg["max_epsilon"] is None else float(cfg["max_epsilon"]),
    )


def make_accountant(
    config: PrivacyConfig, *, prefer_flower: bool = True
) -> PrivacyAccountant:
    """Flower's ``RdpAccountant`` if ``dp_accounting`` is installed, else Opacus'."""
    if prefer_flower and importlib.util.find_spec("dp_accounting") is not None:
        from flwr.serverapp import RdpAccountant

        logger.info("central DP accounting: Flower RdpAccountant (dp-accounting)")
        return RdpAccountant(config)
    logger.info(
        "central DP accounting: Opacus RDP (sample rate 1); dp-accounting absent"
    )
    return OpacusRdpAccountant(config)


def _secure_generator() -> torch.Generator:
    # The noise must be unpredictable: a known seed would let anyone subtract it.
    return torch.Generator().manual_seed(secrets.randbits(63))


def clip_scale(norm: float, clip_norm: float) -> float:
    """Factor that brings an update of L2 ``norm`` to at most ``clip_norm``."""
    return 1.0 if norm <= clip_norm else clip_norm / norm


def central_dp_noise(
    aggregate: Mapping[str, torch.Tensor],
    clip_norm: float,
    noise_multiplier: float,
    num_sites: int | Mapping[str, int],
    generator: torch.Generator,
) -> dict[str, float]:
    """Add N(0, (z C / n_g)^2) in place to every array of an averaged (clipped) update.

    Args:
        aggregate: name -> averaged parameters (or update) of the updated groups.
        clip_norm: C, the L2 bound every site's update was clipped to.
        noise_multiplier: z.
        num_sites: n, the number of sites averaged, or n_g per parameter group.
        generator: the random generator for the noise.

    Returns:
        Parameter group -> the noise standard deviation added.
    """
    if clip_norm <= 0 or noise_multiplier <= 0:
        raise ValueError("clip_norm and noise_multiplier must be positive")
    stds: dict[str, float] = {}
    for name, tensor in aggregate.items():
        group = param_group(name)
        n = num_sites if isinstance(num_sites, int) else num_sites[group]
        std = noise_multiplier * clip_norm / n
        noise = torch.empty(tensor.shape, dtype=torch.float32)
        noise.normal_(0.0, std, generator=generator)
        tensor.add_(noise)
        stds[group] = std
    return stds


@dataclass
class CentralDp:
    """Central DP settings, the accountant and the noise generator of a run.

    Attributes:
        clip_norm: C, the L2 bound on each site's update.
        noise_multiplier: z.
        accountant: a Flower ``PrivacyAccountant`` (``make_accountant``).
        generator: noise source; by default seeded from ``secrets`` and never saved.
    """

    clip_norm: float
    noise_multiplier: float
    accountant: PrivacyAccountant
    generator: torch.Generator = field(default_factory=_secure_generator)

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ValueError("central DP clip_norm must be positive and finite")
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError("central DP noise_multiplier must be positive and finite")

    def _event(self, num_sites: int) -> GaussianPrivacyEvent:
        population = self.accountant.config.population_size
        if num_sites > population:
            # Without amplification the sample size is metadata only (epsilon does not
            # depend on it); Flower refuses a sample above the population, so clamp.
            logger.warning(
                "central DP: %d sites replied but population_size is %d",
                num_sites,
                population,
            )
        sample = min(num_sites, population)
        return GaussianPrivacyEvent(self.noise_multiplier, sample, population)

    def refusal(self, num_sites: int) -> str | None:
        """Why a release with ``num_sites`` sites must not happen, or ``None``."""
        limit = self.accountant.config.max_epsilon
        if limit is None or not self.accountant.would_exceed(self._event(num_sites)):
            return None
        spent = self.epsilon()
        return f"central DP budget: the next release would exceed max epsilon {limit} (spent {spent:.4g})"

    def record(self, num_sites: int) -> float:
        """Account one release; returns the cumulative epsilon."""
        self.accountant.compose(self._event(num_sites))
        return self.epsilon()

    def epsilon(self) -> float:
        """Cumulative epsilon at the configured target delta."""
        return self.accountant.get_epsilon(self.accountant.config.target_delta)

    def state_dict(self) -> dict[str, object]:
        """The accountant state (JSON-serialisable) for checkpoints."""
        return copy.deepcopy(self.accountant.state_dict())

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore the accountant state."""
        self.accountant.load_state_dict(copy.deepcopy(state))


def make_central_dp(
    clip_norm: float,
    noise_multiplier: float,
    *,
    population_size: int,
    target_delta: float,
    max_epsilon: float | None,
    generator: torch.Generator | None = None,
) -> CentralDp:
    """``CentralDp`` with a site-level, add-or-remove-one, no-amplification accountant."""
    config = PrivacyConfig(
        target_delta=target_delta,
        population_size=population_size,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=max_epsilon,
    )
    gen = generator if generator is not None else _secure_generator()
    return CentralDp(clip_norm, noise_multiplier, make_accountant(config), gen)

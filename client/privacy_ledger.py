"""The site's privacy ledger: every DP release on disk, epsilon from the RDP accountant.

The ledger (``<state_dir>/privacy_ledger.json``) is an append-only list of releases, one
per trained round: (run id, round, noise multiplier, sample rate, steps, timestamp), plus
the site's budget (epsilon, delta). Epsilon is recomputed from the whole recorded history
with Opacus' RDP accountant, so a restart never resets what was spent. Writes are
atomic (temporary file in the same folder, fsync, ``os.replace``) and serialized with a
lock file; a ledger that cannot be read or parsed raises ``PrivacyLedgerError`` and
training stops (fail closed), it is never treated as empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from .site_config import SiteConfig

logger = logging.getLogger(__name__)

LEDGER_NAME = "privacy_ledger.json"
LEDGER_FORMAT = 1
# Bisection range of the planned noise multiplier. Below 0.1 the Gaussian mechanism gives
# no useful guarantee at any practical sample rate; at 1e3 the RDP bound is at its floor.
MIN_NOISE_MULTIPLIER = 0.1
MAX_NOISE_MULTIPLIER = 1e3
_PLAN_REL_TOL = 1e-3
ALPHAS = tuple(RDPAccountant.DEFAULT_ALPHAS)  # RDP orders of Opacus' accountant


class PrivacyLedgerError(RuntimeError):
    """The ledger on disk is unreadable or corrupt; training must stop."""


class PrivacyBudgetExhausted(RuntimeError):
    """A release would take the site past its (epsilon, delta) budget.

    Attributes:
        spent: Epsilon already spent (at the budget's delta).
        budget: The site's epsilon budget.
    """

    def __init__(self, message: str, *, spent: float, budget: float) -> None:
        super().__init__(message)
        self.spent = spent
        self.budget = budget


@dataclass(frozen=True)
class Release:
    """One DP release: a round of DP-SGD whose result left the site.

    Attributes:
        run_id: The federated run's id.
        server_round: The server round the release answered.
        noise_multiplier: Gaussian noise std / clipping norm.
        sample_rate: Poisson sampling probability per step.
        steps: Number of noisy optimizer steps.
        timestamp: ISO-8601 UTC time of recording.
    """

    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    timestamp: str

    def __post_init__(self) -> None:
        """Reject values the accountant cannot use."""
        if not isinstance(self.run_id, str) or not isinstance(self.timestamp, str):
            raise ValueError("run_id and timestamp must be strings")
        for name in ("server_round", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        sigma, rate = self.noise_multiplier, self.sample_rate
        if not _finite_number(sigma) or sigma <= 0:
            raise ValueError(f"noise_multiplier must be > 0, got {sigma!r}")
        if not _finite_number(rate) or not 0 < rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {rate!r}")

    @property
    def accountant_entry(self) -> tuple[float, float, int]:
        """(noise_multiplier, sample_rate, steps) as Opacus' history holds it."""
        return (float(self.noise_multiplier), float(self.sample_rate), self.steps)


def _finite_number(value: object) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value)  # type: ignore[arg-type]


def _check_budget(epsilon: float, delta: float) -> None:
    if not _finite_number(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon budget must be a finite number > 0, got {epsilon!r}")
    if not _finite_number(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def epsilon_of(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of an Opacus history [(sigma, q, steps)]; 0 if empty.

    The same computation as ``RDPAccountant(history).get_epsilon(delta)``, with each
    (sigma, q) curve cached: Opacus recomputes every entry's RDP on each call (about
    0.05-0.8 s per entry on a CPU), which grows with the number of recorded rounds.
    """
    entries = [h for h in history if h[2] > 0]
    if not entries:
        return 0.0
    return _epsilon_from_rdp(sum(_rdp_vector(*e) for e in entries), delta)


def _exceeds(
    history: Sequence[tuple[float, float, int]],
    extra: tuple[float, float, int],
    delta: float,
    budget: float,
) -> bool:
    """Whether history + one more entry passes the epsilon budget."""
    return epsilon_of([*history, extra], delta) > budget


class PrivacyLedger:
    """The site's DP releases and budget, persisted on its disk (module docstring).

    Every query re-reads the file (small JSON; ``os.replace`` makes reads atomic), so
    releases recorded by another process count at once, and a ledger deleted or damaged
    after opening stops training instead of reading as empty.
    """

    def __init__(self, path: Path, *, epsilon_budget: float, delta: float) -> None:
        """Open the ledger at ``path``, creating an empty one if there is none.

        Args:
            path: The ledger file.
            epsilon_budget: The site's total epsilon budget (over all runs).
            delta: The site's delta.

        Raises:
            PrivacyLedgerError: When the file exists but cannot be read or parsed.
            ValueError: For an invalid budget.
        """
        _check_budget(epsilon_budget, delta)
        self.path = Path(path)
        self.epsilon_budget, self.delta = float(epsilon_budget), float(delta)
        with self._locked():
            found = self._read()
            if found is None:
                logger.info("new privacy ledger at %s", self.path)
            elif found[1] != (self.epsilon_budget, self.delta):
                logger.warning(
                    "site budget changed from (eps, delta) = %s to %s; spent epsilon "
                    "is recomputed at the new delta",
                    found[1],
                    (self.epsilon_budget, self.delta),
                )
            if found is None or found[1] != (self.epsilon_budget, self.delta):
                self._write([] if found is None else found[0])

    @classmethod
    def for_site(cls, cfg: SiteConfig) -> PrivacyLedger:
        """Open the ledger of a site config (``state_dir``, ``[privacy]`` budget)."""
        return cls(
            Path(cfg.state_dir) / LEDGER_NAME,
            epsilon_budget=cfg.privacy.epsilon,
            delta=cfg.privacy.delta,
        )

    @property
    def releases(self) -> tuple[Release, ...]:
        """All recorded releases, oldest first (read from disk)."""
        found = self._read()
        if found is None:
            raise self._corrupt("the file disappeared after it was opened")
        return tuple(found[0])

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The releases as an Opacus accountant history."""
        return [r.accountant_entry for r in self.releases]

    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent over every recorded release."""
        return epsilon_of(self.history, self.delta), self.delta

    def would_exceed(
        self, noise_multiplier: float, sample_rate: float, steps: int, rounds: int = 1
    ) -> bool:
        """Whether ``rounds`` more rounds of ``steps`` steps would pass the budget."""
        extra = (float(noise_multiplier), float(sample_rate), int(steps) * rounds)
        return _exceeds(self.history, extra, self.delta, self.epsilon_budget)

    def record(
        self,
        *,
        run_id: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> Release:
        """Append one release and persist it atomically (call BEFORE replying).

        Args:
            run_id: The federated run's id.
            server_round: The round being answered.
            noise_multiplier: Noise multiplier used.
            sample_rate: Poisson sample rate used.
            steps: Noisy steps taken.

        Returns:
            The recorded release.

        Raises:
            PrivacyBudgetExhausted: When the release would pass the budget (nothing is
                written then).
            PrivacyLedgerError: When the ledger on disk became unreadable.
        """
        release = Release(
            run_id=str(run_id),
            server_round=int(server_round),
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            steps=int(steps),
            timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._locked():
            releases = list(self.releases)
            history = [r.accountant_entry for r in releases]
            budget = self.epsilon_budget
            if _exceeds(history, release.accountant_entry, self.delta, budget):
                spent = epsilon_of(history, self.delta)
                raise PrivacyBudgetExhausted(
                    f"release would pass the budget {budget:.4g} (spent {spent:.4g})",
                    spent=spent,
                    budget=budget,
                )
            self._write([*releases, release])
        logger.info("recorded DP release %s", release)
        return release

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock on ``<ledger>.lock`` for a read-modify-write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _corrupt(self, reason: str) -> PrivacyLedgerError:
        return PrivacyLedgerError(
            f"privacy ledger {self.path} is unreadable ({reason}); training is stopped. "
            "Restore the file from a backup; deleting it would reset the spent budget."
        )

    def _read(self) -> tuple[list[Release], tuple[float, float]] | None:
        """(releases, stored budget) on disk, or None when there is no ledger yet."""
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise self._corrupt(type(err).__name__) from err
        try:
            if payload.get("format") != LEDGER_FORMAT:
                raise ValueError(f"format is {payload.get('format')!r}")
            names = {f.name for f in fields(Release)}
            entries = payload["releases"]
            if any(not isinstance(e, dict) or set(e) != names for e in entries):
                raise ValueError(f"a release lacks or adds keys (expected {names})")
            budget = payload["budget"]
            return (
                [Release(**e) for e in entries],
                (float(budget["epsilon"]), float(budget["delta"])),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise self._corrupt(str(err)) from err

    def _write(self, releases: Sequence[Release]) -> None:
        """Atomically replace the ledger file (temp file + fsync + os.replace)."""
        payload = {
            "format": LEDGER_FORMAT,
            "accountant": "rdp",
            "budget": {"epsilon": self.epsilon_budget, "delta": self.delta},
            "releases": [asdict(r) for r in releases],
        }
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (fsync of the directory entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rdp_vector(sigma: float, rate: float, steps: int) -> np.ndarray:
    """RDP curve over ``ALPHAS`` of ``steps`` subsampled Gaussian steps."""
    return np.asarray(_unit_rdp(float(sigma), float(rate))) * steps


@functools.lru_cache(maxsize=4096)
def _unit_rdp(sigma: float, rate: float) -> tuple[float, ...]:
    # Opacus' compute_rdp is linear in steps (it returns rdp * steps).
    curve = rdp_analysis.compute_rdp(
        q=rate, noise_multiplier=sigma, steps=1, orders=ALPHAS
    )
    return tuple(float(v) for v in curve)


def _epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def plan_noise_multiplier(
    ledger: PrivacyLedger,
    sample_rate: float,
    steps_per_round: int,
    rounds_left: int,
    epsilon_budget: float,
    delta: float,
) -> float:
    """Smallest noise multiplier that keeps history + ``rounds_left`` rounds in budget.

    Opacus' ``get_noise_multiplier`` builds a fresh accountant, i.e. assumes nothing was
    spent yet; a site that trained before would overshoot its budget. This bisects on
    log(sigma) over the same RDP computation as ``RDPAccountant`` with the recorded
    history included (its RDP curve is summed once; RDP composes additively).

    Args:
        ledger: The site's ledger (its recorded history is included).
        sample_rate: Poisson sample rate of the coming rounds.
        steps_per_round: Noisy steps per round.
        rounds_left: Rounds still to come, this one included (>= 1).
        epsilon_budget: Total epsilon budget.
        delta: Target delta.

    Returns:
        The noise multiplier, within 0.1% above the exact minimum (never below
        ``MIN_NOISE_MULTIPLIER``).

    Raises:
        PrivacyBudgetExhausted: When even ``MAX_NOISE_MULTIPLIER`` does not fit, or the
            next round alone would exceed the budget.
    """
    _check_budget(epsilon_budget, delta)
    if steps_per_round < 1 or rounds_left < 1:
        raise ValueError("steps_per_round and rounds_left must be >= 1")
    history = ledger.history
    spent = epsilon_of(history, delta)
    base = sum(
        (_rdp_vector(*e) for e in history if e[2] > 0),
        np.zeros(len(ALPHAS)),
    )
    steps = steps_per_round * rounds_left

    def fits(sigma: float) -> bool:
        rdp = base + _rdp_vector(sigma, sample_rate, steps)
        return _epsilon_from_rdp(rdp, delta) <= epsilon_budget

    if fits(MIN_NOISE_MULTIPLIER):
        return MIN_NOISE_MULTIPLIER
    lo, hi = MIN_NOISE_MULTIPLIER, 1.0
    while not fits(hi):  # widen the bracket upwards; RDP is slow at large sigma
        if hi >= MAX_NOISE_MULTIPLIER:
            raise PrivacyBudgetExhausted(
                f"epsilon spent {spent:.4g} of {epsilon_budget:.4g}: {rounds_left} "
                f"more round(s) of {steps_per_round} steps at q={sample_rate:.4g} do "
                f"not fit even with noise multiplier {MAX_NOISE_MULTIPLIER:g}",
                spent=spent,
                budget=epsilon_budget,
            )
        lo, hi = hi, min(4 * hi, MAX_NOISE_MULTIPLIER)
    lo, hi = math.log(lo), math.log(hi)
    while hi - lo > _PLAN_REL_TOL:  # invariant: exp(hi) fits, exp(lo) does not
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fits(math.exp(mid)) else (mid, hi)
    sigma = math.exp(hi)
    next_round = (sigma, float(sample_rate), int(steps_per_round))
    if _exceeds(history, next_round, delta, epsilon_budget):  # defensive
        raise PrivacyBudgetExhausted(
            "the next round would pass the budget", spent=spent, budget=epsilon_budget
        )
    return sigma

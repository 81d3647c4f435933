"""A lightweight in-process Grid whose sites answer with synthetic replies.

Unlike ``tests/server/fake_grid.FakeGrid`` (real site handlers, real training), each
site here perturbs the arrays it receives, so the server loop can be driven with many
sites, hostile replies, late sites and random dropouts at little cost.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from client.scope import param_group

# A hook that may rewrite an honest reply (arrays, metrics, site record, extras).
Tamper = Callable[[dict[str, torch.Tensor], dict, dict, dict], None]


@dataclass
class SyntheticSite:
    """One simulated site.

    Attributes:
        name: The site's configured name.
        task: The task whose head it trains (besides the trunk part of the scope).
        examples: Its example count.
        latency: Seconds its reply takes (simulated; past the deadline = no reply).
        tamper: Optional hook that makes its train replies hostile.
    """

    name: str
    task: str
    examples: int = 20
    latency: float = 0.0
    tamper: Tamper | None = None


@dataclass
class ScriptedGrid:
    """A Grid over synthetic sites; ``travel`` must be set to the loop's names.

    Attributes:
        sites: The sites, node id i + 1 for ``sites[i]``.
        drop_rate: Probability that a site does not answer a round at all.
        seed: Seed of the dropouts and the update noise.
        travel: Names a reply may carry (``FederatedLoop.travel``).
        timeouts: The ``timeout`` of every ``send_and_receive`` call.
        on_train_round: Called before each train round is delivered.
    """

    sites: list[SyntheticSite]
    drop_rate: float = 0.0
    seed: int = 0
    travel: set[str] = field(default_factory=set)
    timeouts: list[float | None] = field(default_factory=list)
    dropped: list[set[int]] = field(default_factory=list)
    on_train_round: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._down: set[int] = set()
        self._round = 0
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 0

    def get_node_ids(self) -> Iterable[int]:
        return list(range(1, len(self.sites) + 1))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        self.timeouts.append(timeout)
        train = bool(messages) and (
            messages[0].metadata.message_type == MessageType.TRAIN
        )
        if train:
            if self.on_train_round is not None:
                self.on_train_round()
            # Dropouts and update noise depend on (seed, round, node) only, so a
            # resumed run sees the same sites and updates as an uninterrupted one.
            self._round = int(messages[0].metadata.group_id)
            rng = random.Random(f"{self.seed}-{self._round}")
            self._down = {
                n for n in self.get_node_ids() if rng.random() < self.drop_rate
            }
            self.dropped.append(set(self._down))
        out = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            site = self.sites[nid - 1]
            if nid in self._down or (timeout is not None and site.latency > timeout):
                continue  # dropped, or its reply would arrive after the deadline
            content = self._train(msg, nid) if train else self._evaluate(site)
            out.append(Message(content, reply_to=msg))
        return out

    def _train(self, msg: Message, nid: int) -> RecordDict:
        site = self.sites[nid - 1]
        gen = torch.Generator().manual_seed(
            self.seed * 1_000_003 + self._round * 1009 + nid
        )
        received = msg.content["arrays"].to_torch_state_dict()
        groups = ("trunk", f"heads.{site.task}")
        arrays = {}
        for name, value in received.items():
            if name in self.travel and param_group(name) in groups:
                noise = torch.randn(value.shape, generator=gen, dtype=value.dtype)
                arrays[name] = value + 1e-3 * noise
        metrics: dict = {
            "status": 0,
            "num-examples": site.examples,
            "count.trunk": site.examples,
            f"count.heads.{site.task}": site.examples,
            "epsilon": 1.0,
            "delta": 1e-5,
        }
        site_record: dict = {"name": site.name}
        extras: dict = {}
        if site.tamper is not None:
            site.tamper(arrays, metrics, site_record, extras)
        content = RecordDict(
            {
                "metrics": MetricRecord(metrics),
                "site": ConfigRecord(site_record),
            }
        )
        if arrays:
            content["arrays"] = ArrayRecord(arrays)
        for key, record in extras.items():
            content[key] = record
        return content

    def _evaluate(self, site: SyntheticSite) -> RecordDict:
        metrics = {"status": 0, "num-examples": site.examples, "loss": 0.5}
        return RecordDict(
            {
                "metrics": MetricRecord(metrics),
                "site": ConfigRecord({"name": site.name}),
            }
        )

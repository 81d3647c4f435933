"""An in-process Grid that delivers messages straight to the ClientApp handlers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import evaluate, train


class FakeGrid:
    """Minimal Grid: node i runs the handlers with ``node_configs[i]``.

    Replies are kept in ``self.replies`` so tests can inspect every byte sent back.
    """

    def __init__(
        self,
        node_configs: list[Mapping[str, Any]],
        run_config: Mapping[str, Any],
        run_id: int = 1,
    ) -> None:
        self.node_configs = {i + 1: dict(c) for i, c in enumerate(node_configs)}
        self.run_config = dict(run_config)
        self.run_id = run_id
        self.replies: list[Message] = []
        self.states = {nid: RecordDict() for nid in self.node_configs}
        self.down: set[int] = set()
        # Messages created outside a Flower runtime need the task identity it would set.
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = (
            run_id,
            0,
            0,
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            if nid in self.down:
                continue  # a crashed site never answers
            ctx = Context(
                self.run_id,
                nid,
                self.node_configs[nid],
                self.states[nid],
                self.run_config,
            )
            handler = (
                train if msg.metadata.message_type == MessageType.TRAIN else evaluate
            )
            reply = handler(msg, ctx)
            self.replies.append(reply)
            out.append(reply)
        return out

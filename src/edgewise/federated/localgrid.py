"""A Flower Grid that runs every node's ClientApp in this process, one message after another.

Flower's simulation engine starts Ray (several seconds, several processes) to run ClientApps in parallel.
For a few small clients on one machine that start-up dominates, and a run that is serial and in one
process is easier to debug and reproducible to the bit. `LocalGrid` speaks the same Grid API the
ServerApp already uses, so the ServerApp, the ClientApp and their mods (DP clipping, SecAgg+) run
unchanged: messages are copied on the way in and out, as they would be serialized across processes,
and a ClientApp that raises answers with the same error reply the simulation engine gives.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"
FIRST_NODE_ID = 101  # the SuperLink is node 1


class LocalGrid(Grid):
    """`num_nodes` nodes (partition ids 0..n-1), each with its own Context that lasts the run."""

    def __init__(self, client_app: Any, num_nodes: int, run_id: int = 1) -> None:
        self._app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            FIRST_NODE_ID + i: Context(run_id=run_id, node_id=FIRST_NODE_ID + i, state=RecordDict(), run_config={},
                                       node_config={PARTITION_ID: i, NUM_PARTITIONS: num_nodes})
            for i in range(num_nodes)}
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self._contexts:
                raise ValueError(f"no node {node} in this grid")
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[msg.metadata.message_id] = self._deliver(copy.deepcopy(msg), self._contexts[node])
            ids.append(msg.metadata.message_id)
        return ids

    def _deliver(self, msg: Message, context: Context) -> Message:
        try:
            reply = self._app(message=msg, context=context)
        except Exception as exc:  # the simulation engine's answer to a ClientApp that raised
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=f"{type(exc)}:<'{exc}'>"), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return copy.deepcopy(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_local(server_app: Any, client_app: Any, num_nodes: int) -> None:
    """Run a ServerApp against `num_nodes` in-process ClientApps to its end."""
    grid = LocalGrid(client_app, num_nodes)
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    # Messages take their run and sender from the process's task identity, as in a ServerApp process.
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    try:
        server_app(grid=grid, context=context)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved

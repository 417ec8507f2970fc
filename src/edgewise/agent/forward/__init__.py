"""Store-and-forward: the durable queue, the sync loop, the upstream boundary, the receiver, the audit log."""

from edgewise.agent.forward.audit import AuditingUpstream, AuditLog
from edgewise.agent.forward.queue import DurableQueue, GroupCommitter, NewItem
from edgewise.agent.forward.receiver import EventStore
from edgewise.agent.forward.sync import Syncer
from edgewise.agent.forward.upstream import HttpUpstream, InProcessUpstream, Upstream, UpstreamUnavailable

__all__ = ["AuditLog", "AuditingUpstream", "DurableQueue", "EventStore", "GroupCommitter", "HttpUpstream",
           "InProcessUpstream", "NewItem", "Syncer", "Upstream", "UpstreamUnavailable"]

"""A forced takeover (``ssh CONSOLE.force``): the lease is taken at once whatever the policy, the old writer
is treated as if it had said yes (or evicted under ``refuse``), a waiting request is cancelled and its asker
told, and the takeover verb is still required.  Pure policy with a fake link; the real path is
tests/e2e/test_ssh.py."""

from __future__ import annotations

from typing import Any

import pytest

from serialmuxd.core.access import AccessPolicy, AttachMode, Identity, Verb
from serialmuxd.core.lease import LeaseInput, Outcome, WriterLease
from serialmuxd.core.policy import TakeoverPolicy
from serialmuxd.hub import EndReason, NoticeKind, PortHub, Role

from .test_hub import Sink, attach, make_hub


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        (TakeoverPolicy.EVICT, Outcome.GRANTED_EVICTING),
        (TakeoverPolicy.DEMOTE, Outcome.GRANTED_DEMOTING),
        (TakeoverPolicy.ASK, Outcome.GRANTED_DEMOTING),
        (TakeoverPolicy.REFUSE, Outcome.GRANTED_EVICTING),
    ],
)
def test_force_takes_a_held_lease_under_every_policy(policy: TakeoverPolicy, outcome: Outcome) -> None:
    lease = WriterLease(policy)
    lease.request(LeaseInput.ATTACH, 1, "a", 0.0)
    decision = lease.request(LeaseInput.FORCE, 2, "b", 1.0)
    assert decision.outcome is outcome
    assert lease.holds(2) and decision.displaced is not None and decision.displaced.session_id == 1
    assert lease.request(LeaseInput.FORCE, 2, "b", 2.0).outcome is Outcome.ALREADY_HELD


def test_force_on_a_free_lease_is_a_plain_grant() -> None:
    lease = WriterLease(TakeoverPolicy.REFUSE)
    decision = lease.request(LeaseInput.FORCE, 1, "a", 0.0)
    assert decision.outcome is Outcome.GRANTED and decision.displaced is None


def test_force_cancels_a_waiting_request_even_its_own() -> None:
    lease = WriterLease(TakeoverPolicy.ASK)
    lease.request(LeaseInput.ATTACH, 1, "a", 0.0)
    assert lease.request(LeaseInput.ATTACH, 2, "b", 1.0).outcome is Outcome.ASKING
    decision = lease.request(LeaseInput.FORCE, 3, "c", 2.0)
    assert decision.pending is not None and decision.pending.asker.session_id == 2
    assert lease.pending is None and lease.holds(3)
    # The asker itself forcing: its own request is settled by taking the lease.
    lease = WriterLease(TakeoverPolicy.ASK)
    lease.request(LeaseInput.ATTACH, 1, "a", 0.0)
    lease.request(LeaseInput.ATTACH, 2, "b", 1.0)
    assert lease.request(LeaseInput.FORCE, 2, "b", 2.0).outcome is Outcome.GRANTED_DEMOTING
    assert lease.pending is None and lease.holds(2)


def _force(hub: PortHub, who: str = "127.0.0.1:9") -> tuple[Any, Sink]:
    sink = Sink()
    session = hub.attach(sink, Identity("ssh", who), AttachMode.INTERACTIVE, force=True)
    return session, sink


@pytest.mark.asyncio
async def test_hub_force_under_ask_does_not_ask_and_tells_the_waiting_asker() -> None:
    hub, _link = make_hub(takeover=TakeoverPolicy.ASK)
    writer, writer_sink = attach(hub)
    _asker, asker_sink = attach(hub, who="127.0.0.1:2")
    assert NoticeKind.WAITING in asker_sink.kinds()
    forced, forced_sink = _force(hub)
    assert forced is not None and forced.role is Role.WRITER
    assert NoticeKind.TOOK_OVER in forced_sink.kinds()
    assert writer.role is Role.VIEWER and NoticeKind.DEMOTED in writer_sink.kinds()
    assert writer_sink.end_reason is None, "ask: the old writer stays attached read-only"
    assert asker_sink.notices[-1].kind is NoticeKind.REFUSED
    assert "your request is cancelled" in asker_sink.notices[-1].text


def test_hub_force_under_refuse_evicts() -> None:
    hub, _link = make_hub(takeover=TakeoverPolicy.REFUSE)
    _writer, writer_sink = attach(hub)
    forced, _ = _force(hub)
    assert forced is not None and forced.role is Role.WRITER
    assert writer_sink.end_reason is EndReason.EVICTED


class _NoTakeover:
    def allows(self, identity: Identity, verb: Verb, port: str) -> bool:
        return verb is not Verb.TAKE_OVER


def test_hub_force_needs_the_takeover_verb() -> None:
    hub, _link = make_hub(takeover=TakeoverPolicy.EVICT)
    hub.access = AccessPolicy(_NoTakeover())
    writer, _ = attach(hub)
    forced, forced_sink = _force(hub)
    assert forced is not None and forced.role is Role.VIEWER
    assert writer.role is Role.WRITER
    assert forced_sink.notices[-1].kind is NoticeKind.REFUSED

"""The one join handshake (``ringfl.runtime.session``) both sides of every session use: a
coordinator-mode peer, a ring peer joining its bootstrap or dialling a neighbour; the
coordinator, the bootstrap and a ring peer serving its in-neighbours."""

from __future__ import annotations

import pytest
import trio

from ringfl.model import load_spec
from ringfl.protocol import Connection, Heartbeat, JoinRequest, RejectReason, Role
from ringfl.runtime.session import (
    JoinRefused,
    OpenAdmission,
    SpecMismatch,
    client_handshake,
    server_handshake,
)
from ringfl.transport import MemoryStream, MessageStream
from tests.helpers import demo_config, serving

SPEC = load_spec("digits-mlp")


def _pair() -> tuple[MessageStream, MessageStream]:
    client, server = MemoryStream.pair(1 << 20)
    return (MessageStream(client, Connection(Role.CLIENT, local_id="alice", run_id="r"), timeout=5.0),
            MessageStream(server, Connection(Role.SERVER, local_id="bob", run_id="r"), timeout=5.0))


class Refusing(OpenAdmission):
    def refusal(self, join):
        return RejectReason.NOT_ALLOWED, f"{join.sender} may not"


async def _handshake(admission, confirm: str, *, heartbeat: bool = False):
    client, server = _pair()
    results = {}

    async def serve():
        results["server"] = await server_handshake(server, SPEC, admission)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            if heartbeat:  # the state table allows heartbeats before the join
                await client.send(Heartbeat())
            results["client"] = await client_handshake(client, JoinRequest(address="a:1"), confirm,
                                                       server="neighbour 1", name="alice", timeout=5.0)
        except JoinRefused as exc:
            refused = exc
        else:
            refused = None
        finally:
            nursery.cancel_scope.deadline = trio.current_time() + 5
    if refused is not None:
        raise refused
    return results


async def test_both_sides_agree_and_heartbeats_may_come_before_the_join():
    for heartbeat in (False, True):
        results = await _handshake(OpenAdmission(SPEC.num_params, SPEC, "ring"), SPEC.hash, heartbeat=heartbeat)
        accept, reply = results["client"]
        join, confirm = results["server"]
        assert accept.mode == "ring" and accept.spec_hash == SPEC.hash and reply.ok and not reply.spec_json
        assert join.sender == "alice" and join.address == "a:1" and confirm.spec_hash == SPEC.hash


async def test_an_empty_confirmation_gets_the_spec_and_another_model_fails_fast():
    results = await _handshake(OpenAdmission(SPEC.num_params, SPEC, "ring"), "")
    assert results["client"][1].spec_json == SPEC.canonical_json()
    with pytest.raises(SpecMismatch, match="neighbour 1 runs spec"):
        await _handshake(OpenAdmission(SPEC.num_params, SPEC, "ring"), "f" * 64)


async def test_a_refusal_is_a_reject_with_its_reason():
    with pytest.raises(JoinRefused, match="neighbour 1 refused to let 'alice' join: not_allowed") as info:
        await _handshake(Refusing(SPEC.num_params, SPEC, "ring"), SPEC.hash)
    assert info.value.reason == RejectReason.NOT_ALLOWED


async def test_the_coordinator_answers_a_join_after_a_heartbeat():
    """One handshake for every server: the coordinator, too, lets heartbeats come first."""
    config = demo_config()
    async with serving(config) as (coordinator, network, address, nursery):
        from ringfl.transport import dial

        stream = await dial(network, address, Connection(Role.CLIENT, local_id="carol", run_id=config.run_id),
                            timeout=10.0)
        await stream.send(Heartbeat())
        accept, reply = await client_handshake(stream, JoinRequest(), coordinator.spec.hash,
                                               server="coordinator", name="carol")
        assert accept.mode == "coordinator" and reply.ok and accept.info["index"] == 0
        with trio.fail_after(5):
            while "carol" not in coordinator.sessions:
                await trio.sleep(0.01)
        await stream.aclose()
        nursery.cancel_scope.cancel()  # the run itself is not the point

"""A coordinator-mode run over mutual TLS with an allowlist of certificate names."""

from __future__ import annotations

import pytest
import trio

from ringfl.certs import init_ca, issue
from ringfl.config import TLSConfig
from ringfl.coordinator import Coordinator
from ringfl.peer import JoinRefused, Peer, PeerOptions
from ringfl.transport import TlsConfig, TlsNetwork
from tests.helpers import demo_config


@pytest.fixture
def pki(tmp_path):
    init_ca(tmp_path)
    return {name: issue(tmp_path, name) for name in ("coordinator", "alice", "bob", "mallory")}


def _network(paths, **extra):
    return TlsNetwork(TlsConfig(ca=paths.ca, cert=paths.cert, key=paths.key, **extra))


async def test_mutual_tls_run_with_allowlist(pki):
    server = pki["coordinator"]
    tls = TLSConfig(ca=str(server.ca), cert=str(server.cert), key=str(server.key), require_client_cert=True,
                    allow=["alice", "bob"])
    config = demo_config(host="127.0.0.1", peers=2, min_peers=2, rounds=2, tls=tls)
    coordinator = Coordinator(config, _network(server, require_client_cert=True))
    refused: list[str] = []

    async def intruder(address: str) -> None:
        try:
            await Peer(_network(pki["mallory"]), PeerOptions(coordinator=address, name="mallory", run_id="test")).run()
        except JoinRefused as exc:
            refused.append(str(exc))

    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        await intruder(address)
        for name in ("alice", "bob"):
            nursery.start_soon(Peer(_network(pki[name]), PeerOptions(coordinator=address, name=name,
                                                                     run_id="test")).run)
    assert refused and "allowlist" in refused[0]
    assert sorted(coordinator.indices) == ["alice", "bob"]
    assert coordinator.history[-1]["accuracy"] > coordinator.history[0]["accuracy"]


async def test_certificate_must_match_the_claimed_peer_id(pki):
    server = pki["coordinator"]
    tls = TLSConfig(ca=str(server.ca), cert=str(server.cert), key=str(server.key), require_client_cert=True)
    coordinator = Coordinator(demo_config(host="127.0.0.1", peers=1, rounds=1, tls=tls),
                              _network(server, require_client_cert=True))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        with pytest.raises(JoinRefused, match="certificate is for 'bob'"):
            await Peer(_network(pki["bob"]), PeerOptions(coordinator=address, name="alice", run_id="test")).run()
        nursery.cancel_scope.cancel()


async def test_run_token_admits_members_and_refuses_others(tmp_path, monkeypatch):
    from ringfl.config import load_token
    from ringfl.transport import MemoryNetwork

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-run-token-0123456789abcdef\n")
    token = load_token(str(token_file))
    config = demo_config(peers=2, min_peers=2, rounds=2, token_file=str(token_file))
    network = MemoryNetwork()
    coordinator = Coordinator(config, network)
    refused = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        for wrong in (None, b"another-token-of-enough-length!!"):
            with pytest.raises(JoinRefused) as info:
                await Peer(network, PeerOptions(coordinator=address, name="eve", run_id="test", token=wrong)).run()
            refused.append(str(info.value))
        for name in ("alice", "bob"):
            nursery.start_soon(Peer(network, PeerOptions(coordinator=address, name=name, run_id="test",
                                                         token=token)).run)
    assert len(refused) == 2 and "eve" not in coordinator.indices
    assert coordinator.history[-1]["accuracy"] > coordinator.history[0]["accuracy"]
    monkeypatch.setenv("RINGFL_TOKEN", "short")
    from ringfl.errors import ConfigError

    with pytest.raises(ConfigError, match="at least"):
        load_token(None)

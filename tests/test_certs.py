"""Certificate tooling: CA/peer issuance, one-line errors, and real mutual TLS over loopback."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ringfl.certs import (
    CertPaths,
    PeerIdentityError,
    certificate_name,
    client_context,
    init_ca,
    issue,
    server_context,
)
from ringfl.errors import ConfigError


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    folder = tmp_path / "pki"
    init_ca(folder)
    issue(folder, "coordinator")
    issue(folder, "alice")
    return folder


# ----------------------------------------------------------------------------- issuance


def test_init_and_issue_chain_to_the_ca_with_name_san_and_eku(tmp_path):
    folder = tmp_path / "pki"
    ca_path = init_ca(folder, name="test CA")
    paths = issue(folder, "peer-1", ips=["127.0.0.1", "::1"], dns=["localhost", "peer1.lan"])
    assert paths == CertPaths(folder / "ca.pem", folder / "peer-1.pem", folder / "peer-1-key.pem")
    ca, leaf = load(ca_path), load(paths.cert)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer == ca.subject
    assert [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["peer-1"]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["peer-1", "localhost", "peer1.lan"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc

    # An independent RFC 5280 path validation (cryptography's verifier), as server and client.
    store = Store([ca])
    verified = PolicyBuilder().store(store).build_client_verifier().verify(leaf, [])
    assert verified.subjects is not None
    for host in (x509.DNSName("peer-1"), x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        PolicyBuilder().store(store).build_server_verifier(host).verify(leaf, [])


def test_key_files_are_private(pki):
    for key in (pki / "ca-key.pem", pki / "alice-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "alice.pem").stat().st_mode) == 0o644
    assert not list(pki.glob(".*tmp"))  # atomic writes leave no temporaries


def test_server_only_certificate_has_only_server_auth(pki):
    leaf = load(issue(pki, "hub", client=False).cert)
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]


def test_refuses_to_overwrite_unless_forced(pki):
    before = (pki / "ca.pem").read_bytes()
    with pytest.raises(ConfigError, match=r"ca\.pem: CA already exists"):
        init_ca(pki)
    with pytest.raises(ConfigError, match=r"alice\.pem: certificate 'alice' already exists"):
        issue(pki, "alice")
    assert (pki / "ca.pem").read_bytes() == before
    init_ca(pki, force=True)
    assert (pki / "ca.pem").read_bytes() != before
    issue(pki, "alice", force=True)  # re-issued under the new CA


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil", "invalid certificate name"),
        ("a/b", "invalid certificate name"),
        ("a\\b", "invalid certificate name"),
        ("*", "invalid certificate name"),
        ("", "invalid certificate name"),
        ("x" * 64, "invalid certificate name"),
        ("ca", "collide"),
        ("CA", "collide"),
        ("alice-key", "collide"),
    ],
)
def test_bad_names_are_refused(pki, name, message):
    with pytest.raises(ConfigError, match=message) as info:
        issue(pki, name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ips": ["300.1.1.1"]}, "invalid IP address '300.1.1.1'"),
        ({"dns": ["*.example.com"]}, "invalid DNS name"),
        ({"days": 0}, "validity days"),
        ({"client": False, "server": False}, "needs client and/or server"),
    ],
)
def test_bad_issue_arguments(pki, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        issue(pki, "bob", **kwargs)
    assert not (pki / "bob.pem").exists() and not (pki / "bob-key.pem").exists()


def test_missing_and_corrupt_files_are_named(tmp_path, pki):
    with pytest.raises(ConfigError, match=r"empty[/\\]ca\.pem: CA certificate does not exist"):
        issue(tmp_path / "empty", "alice")
    (pki / "ca.pem").write_text("garbage")
    with pytest.raises(ConfigError, match=r"ca\.pem: not a valid PEM or DER certificate"):
        issue(pki, "bob")

    paths = CertPaths.in_folder(pki, "alice")
    paths.key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"alice-key\.pem: not a valid PEM private key"):
        server_context(paths, require_client_cert=False)
    with pytest.raises(ConfigError, match=r"nope\.pem: certificate does not exist"):
        server_context(CertPaths(paths.ca, pki / "nope.pem", paths.key), False)


def test_mismatched_encrypted_and_wrong_ca_files(pki):
    alice, coord = CertPaths.in_folder(pki, "alice"), CertPaths.in_folder(pki, "coordinator")
    with pytest.raises(ConfigError, match=r"alice-key\.pem: key does not match"):
        server_context(CertPaths(coord.ca, coord.cert, alice.key), False)

    key = serialization.load_pem_private_key(alice.key.read_bytes(), password=None)
    alice.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="encrypted"):  # and no passphrase prompt
        client_context(alice)

    with pytest.raises(ConfigError, match=r"coordinator\.pem: contains a certificate that is not a CA"):
        client_context(coord.cert)
    with pytest.raises(ConfigError, match="needs both cert and key"):
        client_context(coord.ca, cert=coord.cert)


def test_expired_certificate_is_reported_at_startup(pki):
    ca_key = serialization.load_pem_private_key((pki / "ca-key.pem").read_bytes(), None)
    ca, alice = load(pki / "ca.pem"), load(pki / "alice.pem")
    old = (x509.CertificateBuilder(extensions=list(alice.extensions))
           .subject_name(alice.subject).issuer_name(ca.subject).public_key(alice.public_key())
           .serial_number(1).not_valid_before(ca.not_valid_before_utc)
           .not_valid_after(ca.not_valid_before_utc).sign(ca_key, hashes.SHA256()))
    (pki / "alice.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=r"alice\.pem: certificate expired on"):
        server_context(CertPaths.in_folder(pki, "alice"), True)


def test_certificate_name_accepts_every_form(pki):
    path = pki / "alice.pem"
    cert = load(path)
    der = cert.public_bytes(serialization.Encoding.DER)
    peercert = {"subject": ((("countryName", "XX"),), (("commonName", "alice"),))}
    for form in (path, str(path), path.read_bytes(), path.read_text(), der, cert, peercert):
        assert certificate_name(form) == "alice"
    with pytest.raises(PeerIdentityError, match="no certificate"):
        certificate_name(None)
    with pytest.raises(PeerIdentityError, match="not verified"):
        certificate_name({})
    two = {"subject": ((("commonName", "alice"),), (("commonName", "mallory"),))}
    with pytest.raises(PeerIdentityError, match="2 common names"):
        certificate_name(two)


# --------------------------------------------------------------------- TLS over loopback


async def tls_exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                       server_hostname: str = "127.0.0.1") -> tuple[object, object]:
    """One connection: returns (server outcome, client outcome); each is data or an exception."""
    outcome: dict[str, object] = {}
    done = trio.Event()

    async def handler(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            await stream.do_handshake()
            name = certificate_name(stream.getpeercert())
            assert certificate_name(stream) == name  # the stream itself works too
            data = await stream.receive_some(100)
            await stream.send_all(b"hello " + name.encode())
            outcome["server"] = (name, data)
            await stream.aclose()
        except (trio.BrokenResourceError, PeerIdentityError) as e:
            outcome["server"] = e
        finally:
            done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = trio.SSLStream(tcp, client_ctx, server_hostname=server_hostname)
            try:
                await client.send_all(b"ping")  # handshakes first
                outcome["client"] = await client.receive_some(100)
                await client.aclose()
            except trio.BrokenResourceError as e:
                outcome["client"] = e
                await tcp.aclose()
            await done.wait()
            nursery.cancel_scope.cancel()
    return outcome["server"], outcome["client"]


async def test_mutual_tls_handshake_exchanges_bytes_and_names_the_client(pki):
    server = server_context(CertPaths.in_folder(pki, "coordinator"), require_client_cert=True)
    client = client_context(CertPaths.in_folder(pki, "alice"))
    server_out, client_out = await tls_exchange(server, client)
    assert server_out == ("alice", b"ping")
    assert client_out == b"hello alice"


async def test_client_can_verify_the_server_by_its_name(pki):
    server = server_context(CertPaths.in_folder(pki, "coordinator"), require_client_cert=True)
    client = client_context(CertPaths.in_folder(pki, "alice"))
    assert (await tls_exchange(server, client, "coordinator"))[1] == b"hello alice"
    _, client_out = await tls_exchange(server, client, "bob")  # a different identity
    assert isinstance(client_out.__cause__, ssl.SSLCertVerificationError)


async def test_client_without_certificate_is_rejected(pki):
    server = server_context(CertPaths.in_folder(pki, "coordinator"), require_client_cert=True)
    server_out, client_out = await tls_exchange(server, client_context(pki / "ca.pem"))
    assert isinstance(server_out, trio.BrokenResourceError)
    assert server_out.__cause__.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    # TLS 1.3: the client finishes its side first, then sees the server hang up.
    assert client_out == b"" or isinstance(client_out, trio.BrokenResourceError)


async def test_client_trusting_another_ca_rejects_the_server(tmp_path, pki):
    other = tmp_path / "other"
    init_ca(other)
    issue(other, "alice")
    server = server_context(CertPaths.in_folder(pki, "coordinator"), require_client_cert=True)
    client = client_context(CertPaths.in_folder(other, "alice"))
    server_out, client_out = await tls_exchange(server, client)
    assert isinstance(client_out, trio.BrokenResourceError)
    assert isinstance(client_out.__cause__, ssl.SSLCertVerificationError)
    assert isinstance(server_out, trio.BrokenResourceError)


async def test_client_certificate_from_another_ca_is_rejected(tmp_path, pki):
    other = tmp_path / "other"
    init_ca(other)
    forged = issue(other, "alice")  # same name, wrong CA
    server = server_context(CertPaths.in_folder(pki, "coordinator"), require_client_cert=True)
    client = client_context(pki / "ca.pem", cert=forged.cert, key=forged.key)
    server_out, client_out = await tls_exchange(server, client)
    assert isinstance(server_out, trio.BrokenResourceError)
    assert isinstance(server_out.__cause__, ssl.SSLCertVerificationError)
    assert client_out == b"" or isinstance(client_out, trio.BrokenResourceError)


async def test_server_without_client_auth_gives_no_identity(pki):
    server = server_context(CertPaths.in_folder(pki, "coordinator"), require_client_cert=False)
    server_out, client_out = await tls_exchange(server, client_context(pki / "ca.pem"))
    assert isinstance(server_out, PeerIdentityError)
    assert ssl.TLSVersion.TLSv1_2 <= server.minimum_version

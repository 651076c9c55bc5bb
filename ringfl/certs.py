"""Certificate tooling for mutual TLS: a private CA, per-peer certificates, and ssl contexts.

A run's identities come from one small CA that the operator creates with ``ringfl certs init``;
every peer and the coordinator get a certificate whose subject CN (and a DNS SAN) is the peer's
*name*. The transport trusts only that CA, so any certificate it signed is a member; the
coordinator narrows membership further with an allowlist of names read by
:func:`certificate_name`. Keys are ECDSA P-256 and unencrypted on disk (mode 0600), because
peers are unattended processes: a passphrase prompt would hang them.

All cryptography is done by the ``cryptography`` package and the stdlib :mod:`ssl` module.
Every problem with a file or argument raises a one-line :class:`~ringfl.errors.ConfigError`
naming the file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ringfl.errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"

# Letters, digits, '.', '_', '-'; starts and ends with a letter or digit. This keeps a name safe
# as a file name (no separators, no '..'), as a CN (<= 64 chars) and as a DNS SAN (no '*', so a
# name can never be a wildcard).
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_DNS = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                  r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*")
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between machines


class PeerIdentityError(ValueError):
    """A peer's certificate carries no usable name (none presented, unverified, no single CN).

    Not a ConfigError: the remote side, not the local user, is at fault; the coordinator should
    drop the connection.
    """


@dataclass(frozen=True)
class CertPaths:
    """The three PEM files one endpoint needs: the CA to trust, its certificate, its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_folder(cls, folder: str | os.PathLike[str], name: str) -> CertPaths:
        """Where :func:`init_ca` and :func:`issue` put the files for ``name`` in ``folder``."""
        folder = Path(folder)
        return cls(folder / CA_CERT, folder / f"{name}.pem", folder / f"{name}-key.pem")


# ----------------------------------------------------------------------------------- issuing


def init_ca(folder: str | os.PathLike[str], name: str = "ringfl CA", days: int = 825,
            force: bool = False) -> Path:
    """Create a CA in ``folder`` (``ca.pem`` and ``ca-key.pem``) and return the certificate path.

    Refuses to overwrite an existing CA unless ``force``: replacing it silently would orphan
    every certificate already handed out.
    """
    folder = _prepare_folder(Path(folder))
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not name or len(name) > 64 or "\n" in name:
        raise ConfigError(f"CA name {name!r} must be 1-64 characters on one line")
    _check_days(days)
    if not force:
        _refuse_existing([cert_path, key_path], "CA")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def issue(folder: str | os.PathLike[str], name: str, *, ips: Sequence[str] = ("127.0.0.1",),
          dns: Sequence[str] = ("localhost",), days: int = 397, client: bool = True,
          server: bool = True, force: bool = False) -> CertPaths:
    """Issue ``NAME.pem`` / ``NAME-key.pem`` in ``folder``, signed by the CA there.

    The CN and a DNS SAN are ``name``: the CN is what allowlists match, the SAN lets a client
    verify a server *by name* (``server_hostname=name``) rather than by a host every certificate
    shares. ``ips``/``dns`` add the addresses clients dial. The validity never outlives the CA.
    Refuses to replace an existing certificate unless ``force``.
    """
    folder = Path(folder)
    check_name(name)
    _check_days(days)
    if not (client or server):
        raise ConfigError(f"certificate {name!r}: needs client and/or server use")
    san: list[x509.GeneralName] = []
    for host in _unique([name, *dns]):
        if not _DNS.fullmatch(host):
            raise ConfigError(f"invalid DNS name {host!r} (letters, digits, '-', '_', '.'; "
                              "no wildcards)")
        san.append(x509.DNSName(host))
    for ip in _unique(ips):
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ConfigError(f"invalid IP address {ip!r}") from None
    ca_cert, ca_key = _load_ca(folder)
    paths = CertPaths.in_folder(folder, name)
    if not force:
        _refuse_existing([paths.cert, paths.key], f"certificate {name!r}")

    now = dt.datetime.now(dt.timezone.utc)
    ca_end = ca_cert.not_valid_after_utc
    if ca_end <= now:
        raise ConfigError(f"{folder / CA_CERT}: CA expired on {ca_end:%Y-%m-%d}; "
                          "create a new one with force")
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_end))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(paths.key, _key_pem(key), 0o600)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def check_name(name: str) -> str:
    """Return ``name`` if it can be a peer name, else raise ConfigError.

    Names become file names, CNs and DNS SANs, so path separators, wildcards, whitespace and
    names that would collide with the CA's files (``ca``, ``*-key``) are refused.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"invalid certificate name {name!r}: use 1-63 letters, digits, "
                          "'.', '_' or '-', starting and ending with a letter or digit")
    lowered = name.lower()
    if lowered == "ca" or lowered.endswith("-key"):
        raise ConfigError(f"invalid certificate name {name!r}: it would collide with a key or "
                          "CA file")
    return name


# ------------------------------------------------------------------------------ identities


def certificate_name(cert: Any) -> str:
    """The peer name (subject CN) of a certificate, for allowlist checks.

    Accepts DER or PEM bytes, PEM text, a file path, an ``x509.Certificate``, the dict from
    ``SSLObject.getpeercert()``, or an object with ``getpeercert`` (``ssl.SSLObject``,
    ``ssl.SSLSocket``, ``trio.SSLStream``). From a connection only a *verified* certificate
    counts (Python returns an empty dict for an unverified one). Raises
    :class:`PeerIdentityError` when there is no certificate or not exactly one CN.
    """
    if hasattr(cert, "getpeercert") and not isinstance(cert, Mapping):
        cert = cert.getpeercert()
    if cert is None:
        raise PeerIdentityError("peer presented no certificate")
    if isinstance(cert, Mapping):
        if not cert:
            raise PeerIdentityError("peer certificate was not verified")
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn
                 if key == "commonName"]
    else:
        if isinstance(cert, os.PathLike) or (isinstance(cert, str) and "-----BEGIN" not in cert):
            cert = _read(Path(cert), "certificate")
        if isinstance(cert, str):
            cert = cert.encode()
        if isinstance(cert, (bytes, bytearray, memoryview)):
            cert = _parse_cert(bytes(cert), "certificate")
        if not isinstance(cert, x509.Certificate):
            raise TypeError(f"certificate_name: unsupported input {type(cert).__name__}")
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(names) != 1:
        raise PeerIdentityError(f"peer certificate has {len(names)} common names, expected 1")
    return names[0]


# ------------------------------------------------------------------------------ contexts


def server_context(paths: CertPaths, require_client_cert: bool) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``paths.cert``.

    With ``require_client_cert`` clients must present a certificate chaining to ``paths.ca``
    (mutual TLS; the handshake fails otherwise). Without it, no client certificate is asked
    for, so :func:`certificate_name` has nothing to read: an allowlist needs mutual TLS.
    """
    ctx = _context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, Path(paths.cert), Path(paths.key))
    if require_client_cert:
        _load_trust(ctx, Path(paths.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(paths_or_ca: CertPaths | str | os.PathLike[str],
                   cert: str | os.PathLike[str] | None = None,
                   key: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ client context trusting only the given CA, with hostname checks on.

    Pass a :class:`CertPaths` (its certificate is presented to servers that ask), or a CA path
    plus an optional ``cert``/``key`` (no certificate: fine unless the server requires one).
    Dial with ``server_hostname`` set to an IP/DNS name in the server's SAN, or to its name.
    """
    if isinstance(paths_or_ca, CertPaths):
        if cert is not None or key is not None:
            raise ConfigError("client_context: give either CertPaths or cert/key, not both")
        ca, cert, key = paths_or_ca.ca, paths_or_ca.cert, paths_or_ca.key
    else:
        ca = paths_or_ca
    if (cert is None) != (key is None):
        raise ConfigError(f"{cert or key}: a client certificate needs both cert and key")
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_trust(ctx, Path(ca))
    if cert is not None and key is not None:
        _load_chain(ctx, Path(cert), Path(key))
    return ctx


# ------------------------------------------------------------------------------- helpers


def _context(protocol: int) -> ssl.SSLContext:
    """A context that trusts nothing yet (not the system store: only the run's CA may vouch)."""
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # our certificates meet RFC 5280; demand it
    return ctx


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"validity days must be a positive integer, got {days!r}")


def _unique(items: Sequence[str]) -> list[str]:
    if isinstance(items, str):  # a lone string would otherwise be split into characters
        items = [items]
    return list(dict.fromkeys(items))


def _prepare_folder(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # it will hold private keys
    except OSError as e:
        raise ConfigError(f"{folder}: cannot create directory: {e.strerror}") from None
    return folder


def _refuse_existing(files: Sequence[Path], what: str) -> None:
    for file in files:
        if file.exists():
            raise ConfigError(f"{file}: {what} already exists; refusing to overwrite "
                              "(use force to replace it)")


def write_secret(path: Path, data: bytes, *, force: bool = False) -> Path:
    """A secret (a run token, a peer token) written 0600, never over an existing file unless forced."""
    if not force:
        _refuse_existing([path], "a secret")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: the folder {path.parent} does not exist")
    _write(path, data, 0o600)
    return path


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically; the temporary file is 0600 from creation so a key is never exposed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write: {e.strerror}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None


def _parse_cert(data: bytes, where: str) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{where}: not a valid PEM or DER certificate") from None


def _load_cert_file(path: Path, what: str = "certificate") -> x509.Certificate:
    return _parse_cert(_read(path, what), str(path))


def _load_key_file(path: Path) -> ec.EllipticCurvePrivateKey | Any:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{path}: private key is encrypted; ringfl needs an unencrypted key "
                          "(protect it with file permissions)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{path}: not a valid PEM private key") from None


def _same_key(cert: x509.Certificate, key: Any) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _load_ca(folder: Path) -> tuple[x509.Certificate, Any]:
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not cert_path.exists():
        raise ConfigError(f"{cert_path}: CA certificate does not exist "
                          f"(create it with `ringfl certs init {folder}`)")
    cert = _load_cert_file(cert_path, "CA certificate")
    key = _load_key_file(key_path)
    if not _is_ca(cert):
        raise ConfigError(f"{cert_path}: not a CA certificate")
    if not _same_key(cert, key):
        raise ConfigError(f"{key_path}: key does not match the CA certificate {cert_path}")
    return cert, key


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    """Fail at startup with a clear message rather than later with an opaque handshake alert."""
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"{path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"{path}: certificate is not valid before "
                          f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def _load_trust(ctx: ssl.SSLContext, ca: Path) -> None:
    data = _read(ca, "CA certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{ca}: not a valid PEM CA certificate") from None
    for cert in certs:
        if not _is_ca(cert):
            raise ConfigError(f"{ca}: contains a certificate that is not a CA "
                              f"({cert.subject.rfc4514_string()}); point tls.ca at ca.pem")
        _check_validity(cert, ca)
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except ssl.SSLError as e:
        raise ConfigError(f"{ca}: cannot load CA certificate: {e.reason or e}") from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKey  # never let OpenSSL prompt on a terminal: a daemon would hang


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    parsed = _load_cert_file(cert)
    private = _load_key_file(key)
    if not _same_key(parsed, private):
        raise ConfigError(f"{key}: key does not match the certificate {cert}")
    _check_validity(parsed, cert)
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(f"{key}: private key is encrypted") from None
    except (OSError, ssl.SSLError) as e:  # a file changed under us; unlikely after the checks
        raise ConfigError(f"{cert}: cannot load certificate/key: {e}") from None

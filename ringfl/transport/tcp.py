"""TCP and TLS over TCP: addresses are ``host:port``; TLS finishes its handshake before any
message, with certificates from :mod:`ringfl.certs` (mutual TLS when the server asks for it)."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ringfl.errors import ConfigError
from ringfl.transport.base import (
    AddressError,
    ConnectError,
    DeadlineError,
    Network,
    StreamHandler,
    deadline,
    describe_error,
    format_address,
    nothing_to_prepare,
    parse_address,
    run_handler,
)

# --- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig:
    """Certificate paths (PEM). A server needs ``cert`` + ``key``; ``require_client_cert`` makes
    it verify clients against ``ca`` (mutual TLS). A client verifies the server against ``ca``
    (system roots if None) and presents ``cert`` + ``key`` if given."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    require_client_cert: bool = False
    server_hostname: str | None = None  # client: name to verify instead of the address host


def _load(what: str, load: Callable[..., Any], *paths: str | Path | None) -> None:
    try:
        load(*(str(p) if p else None for p in paths))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS {what} {', '.join(map(str, filter(None, paths)))}: {exc}"
        ) from exc


def server_ssl_context(config: TlsConfig) -> ssl.SSLContext:
    """An SSL context for the accepting side (built by :mod:`ringfl.certs`: TLS 1.2+, and with
    mutual TLS only ``config.ca`` vouches for clients — no system roots)."""
    from ringfl.certs import CertPaths, server_context

    if not config.cert:
        raise ConfigError("a TLS server needs a certificate (cert) and key")
    if config.require_client_cert and not config.ca:
        raise ConfigError("mutual TLS needs a CA (ca) to verify client certificates")
    key = config.key or config.cert  # a PEM may hold both
    paths = CertPaths(Path(config.ca or config.cert), Path(config.cert), Path(key))
    return server_context(paths, config.require_client_cert)


def client_ssl_context(config: TlsConfig) -> ssl.SSLContext:
    """An SSL context for the dialling side: trusts only ``config.ca`` if given (system roots
    otherwise) and presents ``config.cert`` for mutual TLS."""
    if config.ca:
        from ringfl.certs import client_context

        key = config.key or config.cert  # a PEM may hold both
        return client_context(config.ca, config.cert, key if config.cert else None)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.cert:
        _load("certificate", context.load_cert_chain, config.cert, config.key)
    return context


# --- networks ----------------------------------------------------------------------------------


class TcpNetwork(Network):
    """Plain TCP (``trio.open_tcp_stream`` / listeners); addresses are ``host:port``."""

    async def connect(self, address: str) -> trio.abc.Stream:
        host, port = parse_address(address)
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {address}: {exc}") from exc
        return await self._secure_client(stream, host, address)

    async def serve(
        self,
        address: str,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = parse_address(address)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise AddressError(f"cannot listen on {address}: {exc}") from exc
        bound = format_address(host, listeners[0].socket.getsockname()[1])
        task_status.started(bound)
        run = functools.partial(run_handler, handler, self._secure_server)
        await trio.serve_listeners(run, [self._wrap_listener(x) for x in listeners])

    async def _secure_client(
        self, stream: trio.abc.Stream, host: str, address: str
    ) -> trio.abc.Stream:
        """Hook: the dialled stream as messages will use it (TLS wraps it here)."""
        return stream

    async def _secure_server(self, stream: trio.abc.Stream) -> None:
        """Hook: runs on each accepted stream before the handler (TLS handshakes here)."""
        await nothing_to_prepare(stream)

    def _wrap_listener(self, listener: trio.SocketListener) -> trio.abc.Listener:
        """Hook: the listener accepted streams come from (TLS wraps it here)."""
        return listener


class TlsNetwork(TcpNetwork):
    """TLS over TCP (``trio.SSLStream``); the handshake completes before any message."""

    def __init__(self, config: TlsConfig, *, handshake_timeout: float = 10.0) -> None:
        self.config = config
        self.handshake_timeout = handshake_timeout

    @functools.cached_property
    def _client_context(self) -> ssl.SSLContext:
        return client_ssl_context(self.config)

    @functools.cached_property
    def _server_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.config)

    async def _secure_client(
        self, stream: trio.abc.Stream, host: str, address: str
    ) -> trio.abc.Stream:
        hostname = self.config.server_hostname or host
        tls = trio.SSLStream(stream, self._client_context, server_hostname=hostname)
        try:
            with deadline(self.handshake_timeout, f"TLS handshake with {address}"):
                await tls.do_handshake()
        except (trio.BrokenResourceError, DeadlineError) as exc:
            await trio.aclose_forcefully(tls)
            raise ConnectError(f"TLS handshake with {address} failed: {describe_error(exc)}") from exc
        return tls

    async def _secure_server(self, stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SSLStream)
        with deadline(self.handshake_timeout, "TLS handshake"):
            await stream.do_handshake()

    def _wrap_listener(self, listener: trio.SocketListener) -> trio.abc.Listener:
        return trio.SSLListener(listener, self._server_context)

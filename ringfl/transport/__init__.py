"""Byte streams for the protocol, behind one interface: TCP, TLS over TCP and in-memory pairs.

``base`` holds the :class:`Network` interface, the transport errors and :class:`MessageStream`
(a trio stream joined to a sans-IO :class:`~ringfl.protocol.state.Connection`); ``tcp`` the TCP
and TLS networks; ``memory`` the in-process network with bounded buffers.
"""

from ringfl.transport.base import (
    CONNECTION_ERRORS,
    AddressError,
    ConnectError,
    DeadlineError,
    MessageStream,
    Network,
    PeerClosedError,
    PeerError,
    StreamHandler,
    TransportError,
    deadline,
    dial,
    format_address,
    parse_address,
)
from ringfl.transport.memory import MemoryNetwork, MemoryStream
from ringfl.transport.tcp import (
    TcpNetwork,
    TlsConfig,
    TlsNetwork,
    client_ssl_context,
    server_ssl_context,
)

__all__ = [
    "CONNECTION_ERRORS",
    "AddressError",
    "ConnectError",
    "DeadlineError",
    "MemoryNetwork",
    "MemoryStream",
    "MessageStream",
    "Network",
    "PeerClosedError",
    "PeerError",
    "StreamHandler",
    "TcpNetwork",
    "TlsConfig",
    "TlsNetwork",
    "TransportError",
    "client_ssl_context",
    "deadline",
    "dial",
    "format_address",
    "parse_address",
    "server_ssl_context",
]

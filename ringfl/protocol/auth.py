"""Run-token authentication, free of I/O: who may talk on a session.

A **run token** is a pre-shared random secret (at least :data:`MIN_TOKEN_SIZE` bytes; make it with
``secrets.token_bytes(32)`` or ``secrets.token_hex(32)``). With a token, a session starts with a
challenge-response inside the join (1001 carries the client's nonce, 1005 the server's nonce and
its proof of the token), both sides derive per-direction session keys with HKDF-SHA256 from the
token, both nonces and the two handshake frames, and from then on every frame carries an
HMAC-SHA256 tag that the receiver checks over the raw bytes *before* decoding anything. The byte
layout is specified in ``docs/protocol.md``, section "Authentication".

Only :mod:`hmac`, :mod:`hashlib` and :mod:`secrets` are used; tags and proofs are compared with
:func:`hmac.compare_digest`. :class:`RunAuth` is driven by
:class:`~ringfl.protocol.state.Connection`; the functions are public so that the derivation can be
checked against the documentation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from ringfl.protocol.codec import FRAME_HEADER
from ringfl.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ringfl.protocol.messages import Accept, Code, JoinRequest, Message

TAG_SIZE = 32
"""Bytes of HMAC-SHA256 tag appended to every frame after the handshake (not truncated)."""
NONCE_SIZE = 32
MIN_TOKEN_SIZE = 16
INFO_KEY = "auth"
"""The ``info`` key of 1001 and 1005 that carries the handshake; reserved when a token is set."""

PEER_KEY_LABEL = b"ringfl-peer-key"
PROOF_LABEL = b"ringfl-server-proof"
SESSION_LABEL = b"ringfl-session"
CLIENT_TO_SERVER = b"client->server"
SERVER_TO_CLIENT = b"server->client"
_COUNTER = struct.Struct(">Q")
_HEX_NONCE = 2 * NONCE_SIZE
_HEX_DIGEST = 2 * hashlib.sha256().digest_size


def check_token(token: Any) -> bytes:
    """``token`` as bytes; TypeError if it is not bytes, ValueError if it is too short."""
    if not isinstance(token, (bytes, bytearray)):
        raise TypeError(f"a run token must be bytes, got {type(token).__name__}")
    if len(token) < MIN_TOKEN_SIZE:
        raise ValueError(
            f"a run token must be at least {MIN_TOKEN_SIZE} random bytes, got {len(token)}"
        )
    return bytes(token)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def _hmac(key: bytes, *parts: bytes | memoryview) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def peer_token(run_token: bytes, peer_id: str) -> bytes:
    """A peer's own token, HMAC(run token, "ringfl-peer-key" ‖ UTF-8 id) as 64 hex characters:
    it proves membership under that id only, and the server derives it from the id in the join."""
    return _hmac(check_token(run_token), PEER_KEY_LABEL, peer_id.encode()).hex().encode()


def server_proof(token: bytes, join_frame: bytes, server_nonce: bytes) -> bytes:
    """HMAC-SHA256(token, "ringfl-server-proof" || SHA-256(join frame) || server nonce)."""
    return _hmac(token, PROOF_LABEL, hashlib.sha256(join_frame).digest(), server_nonce)


def session_keys(
    token: bytes, client_nonce: bytes, server_nonce: bytes, join_frame: bytes, accept_frame: bytes
) -> tuple[bytes, bytes]:
    """(client→server key, server→client key): HKDF-SHA256 (RFC 5869) with the token as input
    key material, salt "ringfl-session" || client nonce || server nonce, and info
    SHA-256(join frame || accept frame) || direction label, 32 bytes each."""
    prk = _hmac(SESSION_LABEL + client_nonce + server_nonce, token)  # HKDF-Extract
    transcript = hashlib.sha256(join_frame + accept_frame).digest()
    return tuple(  # type: ignore[return-value]
        _hmac(prk, transcript, label, b"\x01")  # HKDF-Expand, one block
        for label in (CLIENT_TO_SERVER, SERVER_TO_CLIENT)
    )


class FrameMac:
    """One direction of a session: HMAC-SHA256 under its key over a frame counter and the frame.

    The counter (u64, big-endian, starting at 0) counts the frames tagged in this direction, so a
    replayed, reordered or dropped frame fails the next check.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.counter = 0

    def _tag(self, parts: Iterable[bytes | memoryview]) -> bytes:
        return _hmac(self._key, _COUNTER.pack(self.counter), *parts)

    def tag(self, parts: Iterable[bytes | memoryview]) -> bytes:
        """The tag for the next frame (``parts``: its bytes up to the tag); advances the counter."""
        tag = self._tag(parts)
        self.counter += 1
        return tag

    def verify(self, parts: Iterable[bytes | memoryview], tag: bytes | memoryview) -> bool:
        """Constant-time check of the next frame's tag; the counter advances only on success."""
        ok = hmac.compare_digest(self._tag(parts), bytes(tag))
        if ok:
            self.counter += 1
        return ok


def _auth_error(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail, ErrorCode.AUTH)


def _nonce(info: dict[str, Any], what: str, who: str) -> tuple[bytes, dict[str, Any]]:
    """The nonce in ``info["auth"]`` and the auth map; RemoteProtocolError(AUTH) if malformed."""
    auth = info.get(INFO_KEY)
    if not isinstance(auth, dict):
        raise _auth_error(
            f"{what} carries no run-token handshake (info[{INFO_KEY!r}]): the {who} has no run "
            "token, and this side requires one"
        )
    nonce = _hex(auth.get("nonce"), _HEX_NONCE)
    if nonce is None:
        raise _auth_error(f"{what} has no valid {NONCE_SIZE}-byte nonce in info[{INFO_KEY!r}]")
    return nonce, auth


def _hex(value: Any, length: int) -> bytes | None:
    if not (isinstance(value, str) and len(value) == length):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _without_auth(message: Message) -> Message:
    info = {k: v for k, v in message.info.items() if k != INFO_KEY}  # type: ignore[attr-defined]
    return replace(message, info=info)


class RunAuth:
    """The token handshake and frame tags of one session, driven by its ``Connection``.

    Client: adds its nonce to the 1001 it sends; checks the server's proof in the 1005 it receives,
    derives the keys and from its next frame on tags what it sends and checks what it receives.
    Server: requires a nonce in the 1001; adds its nonce and proof to the 1005 it sends and from
    then on tags and checks. ``authenticated`` turns true once the peer has proven the token (the
    client: a valid proof; the server: the client's first valid tag). A server with ``per_peer``
    holds the run token but runs each session under :func:`peer_token` of the id in the 1001.
    """

    def __init__(self, token: bytes, *, client: bool, per_peer: bool = False) -> None:
        self._token = check_token(token)
        self._run_token = self._token if per_peer and not client else None
        self.client = client
        self.authenticated = False
        self.send_mac: FrameMac | None = None
        self.recv_mac: FrameMac | None = None
        self._client_nonce: bytes | None = None
        self._join_frame: bytes | None = None  # exact bytes of the 1001
        self._pending_nonce: bytes | None = None  # our nonce in a message not yet sent
        self._plain: tuple[int, int, memoryview] | None = None  # last untagged frame received
        self._handshake_type: type[Message] = JoinRequest if client else Accept  # ours to extend

    # --- sending ---------------------------------------------------------------------------

    def refusal(self, code: Code, joining: bool) -> str | None:
        """Why this side may not send ``code`` now, if the handshake forbids it.

        Between its 1001 and the server's answer a client sends nothing but ``Error``: the
        server checks tags on everything after its 1005, so an untagged frame crossing it would
        be rejected. A server cannot accept before a join with a nonce arrived.
        """
        if self.client:
            if joining and code is not Code.ERROR:
                return "with a run token the client sends nothing between its join and the answer"
        elif code is Code.ACCEPT and self.send_mac is None and self._join_frame is None:
            return "cannot accept: no join with a run-token nonce arrived"
        return None

    def outgoing(self, message: Message) -> Message:
        """``message`` with the handshake fields added if it is this side's handshake message
        (the client's first 1001, the server's 1005 before any tag)."""
        done = self._join_frame is not None if self.client else self.send_mac is not None
        if done or not isinstance(message, self._handshake_type):
            return message
        if INFO_KEY in message.info:
            raise LocalProtocolError(f"info key {INFO_KEY!r} is reserved for the run token")
        nonce = self._pending_nonce = new_nonce()
        auth: dict[str, str] = {"nonce": nonce.hex()}
        if not self.client:
            assert self._join_frame is not None
            auth["proof"] = server_proof(self._token, self._join_frame, nonce).hex()
        return replace(message, info={**message.info, INFO_KEY: auth})

    def seal(self, parts: list[bytes | memoryview]) -> bytes:
        """The frame (``parts`` from ``encode_parts(..., trailer=TAG_SIZE)``) with its tag."""
        assert self.send_mac is not None
        return b"".join([*parts, self.send_mac.tag(parts)])

    def sent(self, message: Message, frame: bytes) -> None:
        """Record a handshake frame once it is committed to the wire (after ``outgoing``)."""
        if self._pending_nonce is None or not isinstance(message, self._handshake_type):
            return
        if self.client:
            self._client_nonce, self._join_frame = self._pending_nonce, frame
        else:
            assert self._client_nonce is not None and self._join_frame is not None
            keys = session_keys(
                self._token, self._client_nonce, self._pending_nonce, self._join_frame, frame
            )
            self.recv_mac, self.send_mac = (FrameMac(key) for key in keys)
        self._pending_nonce = None

    # --- receiving -------------------------------------------------------------------------

    def open(self, code: int, length: int, body: memoryview) -> memoryview:
        """The frame verifier (``FrameDecoder.next_frame``): after the handshake, check the tag
        over the raw bytes and strip it, before anything in the frame is parsed."""
        if self.recv_mac is None:
            self._plain = (code, length, body)
            return body
        if length < TAG_SIZE:
            raise _auth_error(f"frame of {length} bytes is too short to carry a tag")
        content, tag = body[: length - TAG_SIZE], body[length - TAG_SIZE :]
        if not self.recv_mac.verify((FRAME_HEADER.pack(code, length), content), tag):
            raise _auth_error(
                f"frame {self.recv_mac.counter} of this session failed authentication "
                "(wrong run token, or a forged, altered, replayed or reordered frame)"
            )
        self.authenticated = True
        return content

    def received(self, message: Message) -> Message:
        """Check a received handshake message (the first 1001 at a server, the untagged 1005 at
        a client); returns it without its ``auth`` info entry."""
        plain, self._plain = self._plain, None
        if plain is None:  # tagged: the handshake is over
            return message
        if self.client and isinstance(message, Accept):
            return self._check_accept(message, _frame_bytes(plain))
        if not self.client and isinstance(message, JoinRequest) and self._join_frame is None:
            self._client_nonce, _ = _nonce(message.info, "the join", "client")
            if self._run_token is not None:
                if not message.sender:
                    raise _auth_error("per-peer tokens: the join must name its sender")
                self._token = peer_token(self._run_token, message.sender)
            self._join_frame = _frame_bytes(plain)
            return _without_auth(message)
        return message

    def _check_accept(self, accept: Accept, frame: bytes) -> Accept:
        if self._client_nonce is None or self._join_frame is None:
            raise _auth_error("an accept arrived, but this client has not joined")
        server_nonce, auth = _nonce(accept.info, "the accept", "server")
        proof = _hex(auth.get("proof"), _HEX_DIGEST)
        expected = server_proof(self._token, self._join_frame, server_nonce)
        if proof is None or not hmac.compare_digest(proof, expected):
            raise _auth_error(
                "the server's proof does not match the run token (it does not know the token, "
                "or the tokens differ)"
            )
        keys = session_keys(self._token, self._client_nonce, server_nonce, self._join_frame, frame)
        self.send_mac, self.recv_mac = (FrameMac(key) for key in keys)
        self.authenticated = True
        return _without_auth(accept)  # type: ignore[return-value]


def _frame_bytes(plain: tuple[int, int, memoryview] | None) -> bytes:
    assert plain is not None, "handshake messages arrive untagged"
    code, length, body = plain
    assert len(body) == length
    return FRAME_HEADER.pack(code, length) + bytes(body)


__all__ = [
    "INFO_KEY",
    "MIN_TOKEN_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "FrameMac",
    "RunAuth",
    "check_token",
    "new_nonce",
    "peer_token",
    "server_proof",
    "session_keys",
]

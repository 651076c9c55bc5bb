"""Write-ahead log of accepted uploads, so nothing the coordinator acknowledged is ever lost.

An upload is acknowledged as accepted only after it is in this log on disk (written with the
wire codec — never pickled — and fsynced; uploads that arrive together share one fsync). A
checkpoint records how many uploads it contains; on ``--resume`` the log entries after that
count are applied again, then the log restarts with the next checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from ringfl.errors import ConfigError
from ringfl.protocol import (
    EOF,
    NEED_DATA,
    FrameDecoder,
    Limits,
    RemoteProtocolError,
    Upload,
    encode,
)


class UpdateLog:
    """Append-only file of ``Upload`` frames; ``seq`` holds the upload's global applied index."""

    def __init__(self, path: Path, num_params: int) -> None:
        self.path = path
        self.limits = Limits().for_model(num_params)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the run

    def append(self, uploads: list[Upload]) -> None:
        """Write and fsync (blocking: call it off the event loop)."""
        self._file.write(b"".join(encode(upload, self.limits) for upload in uploads))
        self._file.flush()
        os.fsync(self._file.fileno())

    def read(self) -> list[Upload]:
        """Every complete entry; a torn last write (crash mid-append) is ignored: it was never acked."""
        decoder = FrameDecoder(self.limits)
        data = self.path.read_bytes() if self.path.exists() else b""
        if data:
            decoder.receive_data(data)
        decoder.receive_data(b"")  # EOF
        entries = []
        while True:
            try:
                frame = decoder.next_frame()
            except RemoteProtocolError as exc:
                if "in the middle of" in str(exc):  # torn final write
                    break
                raise ConfigError(f"cannot resume: update log {self.path} is corrupt ({exc})") from None
            if frame is EOF or frame is NEED_DATA:
                break
            if isinstance(frame.message, Upload):
                entries.append(frame.message)
        return entries

    def reset(self) -> None:
        """Start empty (after a checkpoint that contains every logged upload)."""
        self._file.truncate(0)
        self._file.seek(0)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

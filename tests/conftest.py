"""Shared fixtures: small in-memory runs on the bundled digits data."""

from __future__ import annotations

import logging

import pytest

logging.getLogger("ringfl").setLevel(logging.WARNING)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"

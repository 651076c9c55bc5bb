"""The dashboard web server: quart-trio on hypercorn, inside the coordinator's trio nursery.

Pages and their JS/CSS are package data (``ringfl/dashboard/static``): nothing is fetched from a
CDN, so the page works offline. With a run token the pages and the API ask for it (``?token=``
or ``Authorization: Bearer``); with TLS configured the dashboard serves HTTPS with the run's
certificate (and, with ``require_client_cert``, wants a client certificate too).
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from ringfl.config import TLSConfig
from ringfl.dashboard.builder import inspect_spec, save_spec
from ringfl.dashboard.state import RunView
from ringfl.errors import ConfigError, RingflError
from ringfl.model.schema import spec_schema
from ringfl.model.spec import builtin_spec_data, builtin_specs
from ringfl.transport import AddressError, parse_address

log = logging.getLogger(__name__)
UPDATE_EVERY = 0.5  # seconds between live snapshots


def create_app(view: RunView | None = None, *, token: bytes | None = None,
               specs_dir: Path | None = None) -> QuartTrio:
    """The dashboard app: run view (when ``view`` is given) and model builder."""
    app = QuartTrio(__name__, static_folder="static", static_url_path="/static")

    @app.before_request
    async def _require_token() -> Any:
        if token is None or request.path.startswith("/static/"):
            return None
        given = request.args.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if hmac.compare_digest(given.strip().encode(), token):
            return None
        return Response("this dashboard needs the run token: add ?token=... to the address\n", 401,
                        mimetype="text/plain")

    @app.get("/")
    async def index() -> Any:
        return await app.send_static_file("run.html" if view is not None else "builder.html")

    @app.get("/builder")
    async def builder() -> Any:
        return await app.send_static_file("builder.html")

    @app.get("/api/run")
    async def run_state() -> Any:
        if view is None:
            return {"error": "no run in this process: only the model builder"}, 404
        return view.snapshot()

    @app.get("/api/events")
    async def events() -> Any:
        if view is None:
            return {"error": "no run in this process"}, 404
        return Response(_stream(view), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/api/schema")
    async def schema() -> Any:
        return spec_schema()

    @app.get("/api/specs")
    async def shipped() -> Any:
        return {"specs": builtin_specs()}

    @app.get("/api/specs/<name>")
    async def shipped_spec(name: str) -> Any:
        if name not in builtin_specs():
            return {"error": f"no shipped spec {name!r}"}, 404
        return builtin_spec_data(name)

    @app.post("/api/spec/check")
    async def check() -> Any:
        return inspect_spec(await request.get_json(force=True, silent=True))

    @app.post("/api/spec/save")
    async def save() -> Any:
        if specs_dir is None:
            return {"error": "saving is off: start the dashboard with a specs folder"}, 403
        body = await request.get_json(force=True, silent=True) or {}
        try:
            path = save_spec(specs_dir, body.get("name"), body.get("spec"))
        except RingflError as exc:
            return {"error": str(exc)}, 400
        return {"path": str(path)}

    return app


async def _stream(view: RunView) -> AsyncIterator[bytes]:
    """Server-sent events: a snapshot whenever it changed, checked every UPDATE_EVERY seconds."""
    last = ""
    while True:
        snapshot = view.snapshot()
        snapshot.pop("time")
        text = json.dumps(snapshot)
        if text != last:
            last = text
            yield f"data: {text}\n\n".encode()
        await trio.sleep(UPDATE_EVERY)


def check_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` for the dashboard, or a one-line error before anything starts."""
    try:
        return parse_address(listen)
    except AddressError as exc:
        raise ConfigError(f"--dashboard: {exc}") from None


def hypercorn_config(listen: str, tls: TLSConfig | None = None) -> HypercornConfig:
    """Bind address (validated like every ringfl address) and, with TLS, the run's certificate."""
    host, port = check_listen(listen)
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    if tls is not None and tls.cert:
        config.certfile, config.keyfile = tls.cert, tls.key
        if tls.require_client_cert:
            config.ca_certs, config.verify_mode = tls.ca, ssl.CERT_REQUIRED
    return config


async def serve_dashboard(app: QuartTrio, listen: str, tls: TLSConfig | None = None, *,
                          task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``nursery.start`` gives the URLs it listens on."""
    await serve(app, hypercorn_config(listen, tls), task_status=task_status)  # type: ignore[arg-type]


async def run_with_dashboard(server: Any, clients: Callable[[str], Awaitable[Any]], listen: str, *,
                             specs_dir: Path | None = None,
                             announce: Callable[[str], None] = lambda line: print(line, flush=True),
                             ) -> dict[str, Any]:
    """``serve_until_done(server, clients)`` with the dashboard beside it in the same nursery."""
    from ringfl.launch import serve_until_done

    app = create_app(RunView(server), token=server.token, specs_dir=specs_dir)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve_dashboard, app, listen, server.config.tls)
        announce(f"dashboard on {urls[0]}")
        summary = await serve_until_done(server, clients)
        nursery.cancel_scope.cancel()
    return summary


def dashboard_runner(listen: str, out_dir: Path | None) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A drop-in for ``serve_until_done`` that also serves the dashboard; the builder saves specs
    into ``OUT/specs`` (no ``--out``: saving is off)."""
    check_listen(listen)
    specs_dir = out_dir / "specs" if out_dir else None

    async def run(server: Any, clients: Callable[[str], Awaitable[Any]]) -> dict[str, Any]:
        return await run_with_dashboard(server, clients, listen, specs_dir=specs_dir)

    return run


async def serve_builder(listen: str, specs_dir: Path | None) -> None:
    """``ringfl dashboard``: the model builder alone, until interrupted."""
    check_listen(listen)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve_dashboard, create_app(specs_dir=specs_dir), listen)
        print(f"model builder on {urls[0]}/builder", flush=True)

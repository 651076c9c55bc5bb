"""The dashboard in a real headless Chromium (Debian's ``chromium`` driven by Playwright):
a spec built by clicks is the expected JSON and trains; the run view of a live 3-peer run shows
round 3's accuracy and marks a killed peer dead. Also the server side without a browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ringfl.certs import init_ca, issue
from ringfl.cli import main
from ringfl.config import AcceptanceConfig, TLSConfig
from ringfl.dashboard import create_app, serve_dashboard
from ringfl.dashboard.builder import inspect_spec
from ringfl.dashboard.state import RunView
from ringfl.errors import SpecError
from ringfl.launch import child_env
from ringfl.model.schema import schema_errors, spec_schema
from ringfl.model.spec import builtin_specs, describe, load_spec, parse_spec
from ringfl.peer import Peer, PeerOptions
from ringfl.ring import Bootstrap
from ringfl.topology import generate
from ringfl.transport import MemoryNetwork
from tests.helpers import demo_config, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = Path(__file__).resolve().parent.parent / "docs"
SHOTS = os.environ.get("RINGFL_SCREENSHOTS")  # "1": refresh the screenshots in docs/
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


# --- without a browser ------------------------------------------------------------------------


def test_every_shipped_spec_satisfies_the_published_schema():
    assert spec_schema()["$defs"]["layer"]["properties"]["type"]["enum"]
    for name in builtin_specs():
        raw = load_spec(name).raw  # normalised: defaults filled in, still valid
        assert schema_errors(raw) == [], name


def test_builder_check_locates_each_error_at_its_field():
    result = inspect_spec({"input_shape": [1, 8, 8], "layers": [
        {"type": "conv2d", "channels": 4, "kernel": 9}, {"type": "flatten"},
        {"type": "dense", "units": "ten"}, {"type": "dropout", "rate": 1.0}]})
    located = {tuple(e["path"]): e["message"] for e in result["errors"]}
    assert "cannot apply to 8x8" in located[("layers", 0, "kernel")]
    assert "'ten' is not of type 'integer'" in located[("layers", 2, "units")]
    assert ("layers", 3, "rate") in located
    missing = inspect_spec({"input_shape": [4], "layers": [{"type": "activation"}, {"type": "dense", "units": 10}]})
    assert missing["errors"] == [{"path": ["layers", 0, "function"], "message": "'function' is required"}]
    assert not result["ok"]


def test_builder_check_of_a_valid_spec_is_model_show():
    result = inspect_spec({"name": "m", "input_shape": [28, 28], "num_classes": 10,
                           "layers": [{"type": "gru", "hidden": 16}, {"type": "dense", "units": 10}]})
    assert result["ok"] and result["errors"] == []
    spec = load_spec("rnn")  # a different model: the numbers must come from the given spec
    assert result["num_params"] != spec.num_params
    assert [layer["output_shape"] for layer in result["layers"]] == [[16], [10]]
    assert result["num_params"] == 3 * (16 * 28 + 16 * 16 + 2 * 16) + 16 * 10 + 10


async def _snapshots_of_a_run(config: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run in memory with three peers; a snapshot after every round and one after the run."""
    snapshots: list[dict[str, Any]] = []
    async with serving(config) as (coordinator, network, address, nursery):
        view = RunView(coordinator)
        coordinator.on_round.append(lambda record: snapshots.append(view.snapshot()))
        for i in range(3):
            options = PeerOptions(coordinator=address, name=f"p{i}", peers=3, index=i, run_id=config.run_id)
            nursery.start_soon(Peer(network, options).run)
    snapshots.append(view.snapshot())
    return coordinator, snapshots


async def test_run_view_lists_every_peer_and_round_of_a_run():
    coordinator, snapshots = await _snapshots_of_a_run(demo_config(rounds=3, peers=3))
    during, after = snapshots[-2], snapshots[-1]
    assert [r["round"] for r in after["history"]] == [0, 1, 2, 3]
    assert after["history"][3]["accuracy"] == pytest.approx(coordinator.history[3]["accuracy"])
    assert after["pool"]["applied"] == coordinator.pool.stats.applied == 9
    assert {p["name"]: p["state"] for p in during["peers"]} == {"p0": "ready", "p1": "ready", "p2": "ready"}
    assert all(p["state"] == "left" for p in after["peers"])  # the run ended: gone, not dead
    assert all(p["round"] == 3 and p["bytes_sent"] > 0 for p in during["peers"])  # rounds count from 1: round 3 closed
    assert after["topology"]["kind"] == "star" and sorted(after["topology"]["nodes"]) == ["p0", "p1", "p2"]
    json.dumps(after, allow_nan=False)  # strict JSON: NaN would break the page


async def test_run_view_counts_each_peers_rejected_uploads_by_reason():
    config = demo_config(rounds=2, peers=3, acceptance=AcceptanceConfig(max_norm=1e-9))
    _, snapshots = await _snapshots_of_a_run(config)
    last = snapshots[-2]["peers"]
    assert [p["rejected"] for p in last] == [{"norm too large": 2}] * 3
    assert snapshots[-1]["pool"]["reasons"] == {"norm too large": 6}


def test_ring_view_marks_dead_nodes_and_the_links_made_around_them():
    ring = generate("ring", 6)
    bootstrap = Bootstrap(demo_config(algorithm="gossip-dssgd"), MemoryNetwork(), topology=ring)
    bootstrap.dead = {2}
    topology = RunView(bootstrap).snapshot()["topology"]
    labels = ring.labels
    assert topology["dead"] == [labels[2]]
    assert topology["relinked"] == [[labels[1], labels[3]]]  # the ring stays a ring
    assert [labels[1], labels[2]] in topology["edges"]  # the original links are still drawn
    assert RunView(bootstrap).snapshot()["pool"] is None


async def test_a_run_token_is_required_by_pages_and_api():
    token = b"0123456789abcdef0123456789abcdef"
    app = create_app(token=token)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve_dashboard, app, "127.0.0.1:0")

        def status(path: str, header: str | None = None) -> int:
            req = urllib.request.Request(urls[0] + path, headers={"Authorization": header} if header else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await trio.to_thread.run_sync(status, "/api/schema") == 401
        assert await trio.to_thread.run_sync(status, "/builder?token=wrong") == 401
        assert await trio.to_thread.run_sync(status, f"/builder?token={token.decode()}") == 200
        assert await trio.to_thread.run_sync(status, "/api/schema", f"Bearer {token.decode()}") == 200
        assert await trio.to_thread.run_sync(status, "/static/chart.js") == 200  # shipped code is public
        nursery.cancel_scope.cancel()


async def test_with_tls_the_dashboard_serves_https_with_the_runs_certificate(tmp_path):
    init_ca(tmp_path)
    paths = issue(tmp_path, "coordinator")
    tls = TLSConfig(ca=str(paths.ca), cert=str(paths.cert), key=str(paths.key))
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve_dashboard, create_app(), "127.0.0.1:0", tls)
        assert urls[0].startswith("https://")

        def fetch(context: ssl.SSLContext) -> int:
            with urllib.request.urlopen(urls[0] + "/api/schema", context=context, timeout=10) as resp:
                return resp.status

        assert await trio.to_thread.run_sync(fetch, ssl.create_default_context(cafile=str(paths.ca))) == 200
        with pytest.raises(urllib.error.URLError):  # an unknown CA is refused
            await trio.to_thread.run_sync(fetch, ssl.create_default_context())
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("argv", [["dashboard", "nonsense"],
                                  ["coordinator", "--dashboard", "localhost", "--out", "{out}"]])
def test_a_bad_dashboard_address_is_a_one_line_error_before_anything_starts(argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([a.format(out=out) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dashboard: address must look like host:port") and err.count("\n") == 1
    assert not out.exists()


def test_model_schema_command_prints_the_shipped_schema():
    out = subprocess.run([sys.executable, "-m", "ringfl", "model", "schema"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == spec_schema()


# --- in Chromium ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def _start(command: list[str], *patterns: str, timeout: float = 60.0) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a ringfl process; return it and the first match of each pattern in its output."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=child_env(1))
    found: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while len(found) < len(patterns) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(patterns[len(found)], line)
        if match:
            found.append(match.group(1))
    if len(found) < len(patterns):
        proc.kill()
        raise AssertionError(f"{command[3]} did not print {patterns[len(found)]!r}")
    return proc, found


def _stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _screenshot(page: Any, name: str, tmp_path: Path) -> None:
    """Into the test's folder; into docs/ only when asked (tests do not change the checkout)."""
    page.screenshot(path=str((DOCS if SHOTS == "1" else tmp_path) / name), full_page=True)


def _checked(page: Any) -> None:
    """Wait until the server answered the builder's last change."""
    page.wait_for_selector("body:not([data-checked=''])[data-checked]", timeout=15000)


def _add(page: Any, kind: str, **fields: Any) -> None:
    page.select_option("#new-layer-type", kind)
    page.click("#add-layer")
    _checked(page)
    card = page.locator(".layer").last
    for key, value in fields.items():
        field = card.locator(f".field[data-field='{key}'] [name='{key}']")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(str(value))
        else:
            field.fill(str(value))
        _checked(page)


EXPECTED_SPEC = {
    "name": "clicked-cnn", "input_shape": [1, 8, 8], "num_classes": 10,
    "layers": [
        {"type": "conv2d", "channels": 8, "kernel": 3, "activation": "relu"},
        {"type": "maxpool", "pool": 2},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 10},
    ],
}


@needs_chromium
@pytest.mark.e2e
def test_a_spec_built_by_clicks_is_the_expected_json_and_trains(browser, tmp_path):
    specs = tmp_path / "specs"
    server, (url,) = _start([sys.executable, "-m", "ringfl", "dashboard", "127.0.0.1:0", "--specs", str(specs)],
                            r"model builder on (\S+)")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.goto(url)
        _checked(page)
        page.fill("#f-name", "clicked-cnn")
        page.fill("#f-input_shape", "1, 8, 8")
        _add(page, "conv2d", channels=8, kernel=3, activation="relu")
        _add(page, "dense", units=10)  # added too early: moved down below
        _add(page, "maxpool", pool=2)
        _add(page, "batchnorm")  # added by mistake: removed
        page.locator(".layer").last.locator("[data-action=remove]").click()
        _checked(page)
        page.locator(".layer").nth(2).locator("[data-action=up]").click()  # maxpool above dense
        _checked(page)
        _add(page, "flatten")
        page.locator(".layer").last.locator("[data-action=up]").click()
        _checked(page)
        _add(page, "dropout", rate="0.25")
        page.locator(".layer").last.locator("[data-action=up]").click()
        _checked(page)
        assert page.inner_text("#status") == "valid"
        shapes = page.locator(".layer .shape").all_inner_texts()
        assert shapes[0].startswith("→ [8, 6, 6] · 80 params") and shapes[-1].startswith("→ [10]")
        _screenshot(page, "dashboard-builder.png", tmp_path)

        with page.expect_download() as download:
            page.click("#download")
        built = json.loads(Path(download.value.path()).read_text())
        assert built == EXPECTED_SPEC
        page.fill("#save-name", "clicked")
        page.click("#save")
        page.wait_for_selector("#save-result:has-text('saved to')")
        saved = specs / "clicked.json"
        assert json.loads(saved.read_text()) == EXPECTED_SPEC

        shown = subprocess.run([sys.executable, "-m", "ringfl", "model", "show", str(saved)],
                               capture_output=True, text=True, check=True).stdout
        assert page.inner_text("#table").strip() == shown.strip()
        trained = subprocess.run([sys.executable, "-m", "ringfl", "train", "--model", str(saved), "--data", "digits",
                                  "--epochs", "3"], capture_output=True, text=True, check=True, env=child_env(1),
                                 timeout=300).stdout
        accuracies = [float(a) for a in re.findall(r"accuracy (\d\.\d+)", trained)]
        assert len(accuracies) == 3 and accuracies[-1] > 0.8, trained
    finally:
        _stop(server)


@needs_chromium
def test_bad_input_gets_a_message_next_to_its_field(browser):
    server, (url,) = _start([sys.executable, "-m", "ringfl", "dashboard", "127.0.0.1:0"], r"model builder on (\S+)")
    try:
        page = browser.new_page()
        page.goto(url)
        _checked(page)
        page.fill("#f-input_shape", "1, 8, 8")
        _add(page, "conv2d", channels=4, kernel=9)
        kernel = page.locator(".layer").first.locator(".field[data-field=kernel]")
        assert "cannot apply to 8x8" in kernel.locator(".error").inner_text()
        assert "invalid" in kernel.get_attribute("class")
        _add(page, "dense", units="ten")
        units = page.locator(".layer").last.locator(".field[data-field=units] .error")
        assert "'ten' is not of type 'integer'" in units.inner_text()
        page.select_option("#start-from", "cnn")  # a shipped spec, then broken on purpose
        page.wait_for_selector("#status:has-text('valid')")
        assert page.inner_text("#table").strip() == describe(load_spec("cnn"))  # what `ringfl model show cnn` prints
        assert page.locator(".layer").count() == 7
        page.fill("#f-num_classes", "1")
        _checked(page)
        assert "minimum of 2" in page.inner_text(".field[data-path=num_classes] .error")
        assert page.inner_text("#status") != "valid"
    finally:
        _stop(server)


@needs_chromium
@pytest.mark.e2e
def test_run_view_shows_round_3_of_a_live_run_and_a_killed_peer_dead(browser, tmp_path):
    out, token = tmp_path / "run", tmp_path / "token"
    assert main(["token", "new", str(token)]) == 0
    coordinator, (dashboard, address) = _start(
        [sys.executable, "-m", "ringfl", "coordinator", "--port", "0", "--peers", "3", "--min-peers", "2",
         "--rounds", "100000", "--out", str(out), "--dashboard", "127.0.0.1:0", "--token-file", str(token)],
        r"dashboard on (\S+)", r"coordinator listening on (\S+);")
    peers = [subprocess.Popen([sys.executable, "-m", "ringfl", "peer", "--coordinator", address, "--name", f"p{i}",
                               "--peers", "3", "--index", str(i), "--quiet", "--token-file", str(token)],
                              env=child_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(3)]
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        assert page.goto(dashboard).status == 401  # the run has a token: so has its dashboard
        page.goto(f"{dashboard}/?token={token.read_text().strip()}")
        cell = page.wait_for_selector("#rounds tr[data-round='3'] td.accuracy", timeout=120000)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        round3 = next(r for r in records if r["round"] == 3)
        assert cell.inner_text() == f"{round3['accuracy']:.4f}"
        for i in range(3):
            assert page.locator(f"#peers tr[data-peer='p{i}']").count() == 1
        peers[2].send_signal(signal.SIGKILL)
        page.wait_for_selector("#peers tr[data-peer='p2'].dead", timeout=30000)
        page.wait_for_selector("#topology g.node.dead[data-node='p2']", timeout=10000)
        assert page.inner_text("#peers tr[data-peer='p2'] td.state") == "dead"
        assert page.inner_text("#peers tr[data-peer='p0'] td.state") != "dead"
        page.wait_for_timeout(1500)  # a few more rounds in the chart
        _screenshot(page, "dashboard-run.png", tmp_path)
        assert coordinator.poll() is None  # the run goes on without p2
    finally:
        _stop(coordinator, *peers)
    assert os.path.exists(out / "metrics.jsonl")


@needs_chromium
@pytest.mark.e2e
def test_ring_view_draws_a_killed_peer_dead_and_the_link_made_around_it(browser, tmp_path):
    ring = tmp_path / "ring5.yaml"
    ring.write_text("name: ring5\nnodes: 5\ngenerator:\n  kind: ring\ndirected: false\n")
    bootstrap, (dashboard, address) = _start(
        [sys.executable, "-m", "ringfl", "coordinator", "--topology", str(ring), "--port", "0", "--rounds", "100000",
         "--algorithm", "gossip-dssgd", "--dashboard", "127.0.0.1:0"],
        r"dashboard on (\S+)", r"coordinator listening on (\S+);")
    peers = [subprocess.Popen([sys.executable, "-m", "ringfl", "peer", "--coordinator", address, "--topology",
                               str(ring), "--id", str(i), "--quiet", "--eval-samples", "200"], env=child_env(5),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(5)]
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(dashboard)
        page.wait_for_selector("#rounds tr[data-round='2']", timeout=120000)
        assert page.locator("#topology line.relinked").count() == 0
        peers[2].send_signal(signal.SIGKILL)
        page.wait_for_selector("#topology g.node.dead[data-node='2']", timeout=60000)
        page.wait_for_selector("#topology line.relinked", timeout=30000)
        assert page.locator("#topology line.relinked").count() == 1  # 1 -- 3 bridges the dead 2
        assert page.inner_text("#peers tr[data-peer='2'] td.state") == "dead"
        page.wait_for_timeout(2000)
        _screenshot(page, "dashboard-ring.png", tmp_path)
        assert bootstrap.poll() is None
    finally:
        _stop(bootstrap, *peers)


FIELD_VALUES = st.one_of(st.integers(-2, 12), st.sampled_from([None, "relu", "tanh", "ten", 0.25, 1.5, True]))


@st.composite
def layer_lists(draw: Any) -> list[dict[str, Any]]:
    """Layers of every type with each schema field present or not, holding good or bad values."""
    layers = []
    for kind in draw(st.lists(st.sampled_from(list(spec_schema()["$defs"]["layer"]["properties"]["type"]["enum"])),
                              min_size=1, max_size=4)):
        fields = [f for f in spec_schema()["$defs"][kind]["properties"] if f != "type"]
        chosen = draw(st.dictionaries(st.sampled_from(fields), FIELD_VALUES)) if fields else {}
        layers.append({"type": kind, **chosen})
    return layers


@settings(max_examples=300, deadline=None)
@given(layers=layer_lists(), input_shape=st.sampled_from([[64], [1, 8, 8], [8, 8]]))
@example(layers=[{"type": "lstm", "hidden": 4, "return_sequences": 3}], input_shape=[8, 8])  # found by review:
@example(layers=[{"type": "dropout", "rate": False}], input_shape=[64])  # spec.py took these, the schema not
def test_the_schema_and_the_spec_code_agree(layers, input_shape):
    """What spec.py accepts the schema accepts; what the schema accepts, spec.py refuses only for
    shapes (which JSON Schema cannot express)."""
    data = {"input_shape": input_shape, "num_classes": 10, "layers": [*layers, {"type": "flatten"},
                                                                      {"type": "dense", "units": 10}]}
    try:
        parse_spec(data)
        accepted = True
    except SpecError as exc:
        accepted, message = False, str(exc)
    errors = schema_errors(data)
    if accepted:
        assert errors == [], errors
    elif not errors:
        assert re.search(r"cannot apply|needs a|outputs", message), message

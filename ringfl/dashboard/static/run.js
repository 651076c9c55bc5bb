// Run view: live snapshots from /api/events (server-sent events), drawn without any library.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const $ = id => document.getElementById(id);
let lastSnapshot = null;

function fmt(v, digits) { return v === null || v === undefined ? "–" : v.toFixed(digits); }
function bytes(n) {
  if (n < 1024) return n + " B";
  const u = ["KiB", "MiB", "GiB"]; let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(1) + " " + u[i];
}
function cell(tr, text, cls) { const td = tr.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }

function renderRounds(s) {
  const body = $("rounds").tBodies[0];
  body.replaceChildren();
  for (const r of s.history.slice().reverse()) {
    const tr = body.insertRow();
    tr.dataset.round = r.round;
    cell(tr, r.round);
    cell(tr, fmt(r.accuracy, 4), "num accuracy");
    cell(tr, fmt(r.loss, 4), "num loss");
    cell(tr, r.rejected === undefined || r.rejected === null ? "–" : r.rejected, "num");
  }
  lineChart($("chart"), [
    { name: "accuracy", color: "#2563eb", max: 1, points: s.history.map(r => [r.round, r.accuracy]) },
    { name: "loss", color: "#d97706", axis: "right", points: s.history.map(r => [r.round, r.loss]) },
  ], { xlabel: "round" });
}

function renderPeers(s) {
  const body = $("peers").tBodies[0];
  body.replaceChildren();
  for (const p of s.peers) {
    const tr = body.insertRow();
    tr.dataset.peer = p.name;
    tr.className = p.state;
    cell(tr, p.name);
    cell(tr, p.index, "num");
    const st = cell(tr, "", "state");
    const badge = document.createElement("span");
    badge.className = "badge " + p.state; badge.textContent = p.state; st.appendChild(badge);
    cell(tr, Math.max(0, s.time - p.last_seen).toFixed(1) + " s ago", "num");
    cell(tr, p.round, "num");
    cell(tr, bytes(p.bytes_sent), "num");
    cell(tr, bytes(p.bytes_received), "num");
    cell(tr, fmt(p.epsilon, 3), "num");
    const reasons = Object.entries(p.rejected || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    cell(tr, reasons || "none", "rejected");
  }
}

function renderTopology(s) {
  const svg = $("topology"), t = s.topology, W = 420, H = 300;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const nodes = t.kind === "star" ? [t.center, ...t.nodes] : t.nodes;
  const pos = {}, ring = t.kind === "star" ? t.nodes : t.nodes, R = Math.min(W, H) / 2 - 36;
  ring.forEach((n, i) => {
    const a = 2 * Math.PI * i / Math.max(1, ring.length) - Math.PI / 2;
    pos[n] = [W / 2 + R * Math.cos(a), H / 2 + R * Math.sin(a)];
  });
  if (t.kind === "star") pos[t.center] = [W / 2, H / 2];
  const dead = new Set(t.dead);
  const line = (a, b, attrs) => el("line", { x1: pos[a][0], y1: pos[a][1], x2: pos[b][0], y2: pos[b][1], ...attrs }, svg);
  for (const [a, b] of t.edges)
    line(a, b, { stroke: dead.has(a) || dead.has(b) ? "#fca5a5" : "#94a3b8", "stroke-width": 2,
                 "stroke-dasharray": dead.has(a) || dead.has(b) ? "2 4" : "" });
  for (const [a, b] of t.relinked) line(a, b, { stroke: "#f59e0b", "stroke-width": 3, "stroke-dasharray": "6 4", class: "relinked" });
  for (const n of nodes) {
    const g = el("g", { class: "node" + (dead.has(n) ? " dead" : ""), "data-node": n }, svg);
    const center = t.kind === "star" && n === t.center;
    el("circle", { cx: pos[n][0], cy: pos[n][1], r: center ? 22 : 16,
                   fill: dead.has(n) ? "#fee2e2" : center ? "#111827" : "#dbeafe",
                   stroke: dead.has(n) ? "#dc2626" : "#2563eb", "stroke-width": 2 }, g);
    const label = el("text", { x: pos[n][0], y: pos[n][1] + 4, "text-anchor": "middle" }, g);
    label.textContent = center ? "coord" : n;
    if (center) label.setAttribute("style", "fill:#fff");
    if (dead.has(n)) el("text", { x: pos[n][0], y: pos[n][1] + 32, "text-anchor": "middle", style: "fill:#dc2626;font-weight:700" }, g).textContent = "dead";
  }
}

function renderPool(s) {
  if (!s.pool) { $("pool-section").style.display = "none"; return; }
  const p = s.pool;
  $("pool-meter").style.width = (100 * p.depth / Math.max(1, p.capacity)) + "%";
  const reasons = Object.entries(p.reasons).map(([k, v]) => `${k} ${v}`).join(", ");
  $("pool").textContent = `depth ${p.depth} of ${p.capacity} (peak ${p.peak}) · submitted ${p.submitted}, ` +
    `applied ${p.applied}, rejected ${p.rejected}` + (reasons ? ` (${reasons})` : "");
}

function render(s) {
  lastSnapshot = s;
  $("run-id").textContent = s.run_id;
  $("run-kind").textContent = `${s.mode} · ${s.algorithm} · ${s.model} (${s.num_params.toLocaleString()} parameters)`;
  $("round").textContent = s.round;
  $("rounds-total").textContent = s.rounds;
  $("status").textContent = s.running ? "live" : "run finished";
  renderRounds(s); renderPeers(s); renderTopology(s); renderPool(s);
}

$("builder-link").href = "builder" + q;
const source = new EventSource("api/events" + q);
source.onmessage = e => { const s = JSON.parse(e.data); s.time = Date.now() / 1000; render(s); };
source.onerror = () => { $("status").textContent = lastSnapshot ? "disconnected (run over?)" : "cannot connect"; };

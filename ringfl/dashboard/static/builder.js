// Model builder: the layer fields come from the published JSON Schema (/api/schema); every change
// is checked by the server (/api/spec/check), which answers with shapes, parameter counts and
// errors located by JSON path, shown next to their field.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const $ = id => document.getElementById(id);
let schema = null, layers = [], checkSeq = 0, lastResult = null;

function layerDef(type) { return schema.$defs[type]; }

function parseValue(text, prop) {
  const t = text.trim();
  if (t === "") return undefined;
  if (prop.type === "integer" && /^-?\d+$/.test(t)) return parseInt(t, 10);
  if (prop.type === "number" && t !== "" && !isNaN(Number(t))) return Number(t);
  return t;  // left as text: the schema names the problem
}

function currentSpec() {
  const spec = {};
  const name = $("f-name").value.trim();
  if (name) spec.name = name;
  const dims = $("f-input_shape").value.split(/[\s,x×]+/).filter(Boolean);
  spec.input_shape = dims.map(d => /^\d+$/.test(d) ? parseInt(d, 10) : d);
  const classes = parseValue($("f-num_classes").value, { type: "integer" });
  if (classes !== undefined) spec.num_classes = classes;
  spec.layers = layers.map(l => {
    const out = { type: l.type };
    for (const [k, v] of Object.entries(l.fields)) if (v !== undefined && v !== "") out[k] = v;
    return out;
  });
  return spec;
}

function fieldInput(layer, key, prop) {
  const wrap = document.createElement("div");
  wrap.className = "field"; wrap.dataset.field = key;
  const label = document.createElement("label"); label.textContent = key; label.title = prop.description || "";
  wrap.appendChild(label);
  let input;
  if (prop.enum) {
    input = document.createElement("select");
    for (const v of prop.enum) {
      const o = document.createElement("option"); o.value = v === null ? "" : v; o.textContent = v === null ? "(none)" : v;
      input.appendChild(o);
    }
    if (!prop.enum.includes(null)) { const o = document.createElement("option"); o.value = ""; o.textContent = "(choose)"; input.prepend(o); }
    input.value = layer.fields[key] ?? "";
    input.onchange = () => { layer.fields[key] = input.value || undefined; changed(); };
  } else if (prop.type === "boolean") {
    input = document.createElement("input"); input.type = "checkbox"; input.checked = !!layer.fields[key];
    input.onchange = () => { layer.fields[key] = input.checked || undefined; changed(); };
  } else {
    input = document.createElement("input"); input.type = "text";
    input.value = layer.fields[key] ?? ""; input.placeholder = prop.minimum !== undefined ? `≥ ${prop.minimum}` : "";
    input.oninput = () => { layer.fields[key] = parseValue(input.value, prop); changed(); };
  }
  input.name = key; input.setAttribute("aria-label", key);
  wrap.appendChild(input);
  const err = document.createElement("span"); err.className = "error"; wrap.appendChild(err);
  return wrap;
}

function button(text, action, title) {
  const b = document.createElement("button"); b.textContent = text; b.title = title; b.dataset.action = action; return b;
}

function renderLayers() {
  const box = $("layers");
  box.replaceChildren();
  layers.forEach((layer, i) => {
    const card = document.createElement("div");
    card.className = "layer"; card.dataset.index = i; card.dataset.type = layer.type;
    const head = document.createElement("div"); head.className = "head";
    const kind = document.createElement("span"); kind.className = "kind"; kind.textContent = `${i}. ${layer.type}`;
    head.appendChild(kind);
    const up = button("↑", "up", "move up"), down = button("↓", "down", "move down"), del = button("✕", "remove", "remove");
    up.onclick = () => move(i, -1); down.onclick = () => move(i, 1); del.onclick = () => { layers.splice(i, 1); renderLayers(); changed(); };
    head.append(up, down, del);
    const shape = document.createElement("span"); shape.className = "shape"; head.appendChild(shape);
    card.appendChild(head);
    for (const [key, prop] of Object.entries(layerDef(layer.type).properties))
      if (key !== "type") card.appendChild(fieldInput(layer, key, prop));
    const err = document.createElement("div"); err.className = "error layer-error"; card.appendChild(err);
    box.appendChild(card);
  });
}

function move(i, by) {
  const j = i + by;
  if (j < 0 || j >= layers.length) return;
  [layers[i], layers[j]] = [layers[j], layers[i]];
  renderLayers(); changed();
}

function addLayer(type) {
  const fields = {};
  for (const key of layerDef(type).required) if (key !== "type") fields[key] = undefined;
  layers.push({ type, fields });
  renderLayers(); changed();
}

function clearErrors() {
  document.querySelectorAll(".field").forEach(f => { f.classList.remove("invalid"); f.querySelector(".error").textContent = ""; });
  document.querySelectorAll(".layer").forEach(c => { c.classList.remove("invalid"); c.querySelector(".layer-error").textContent = ""; });
  $("spec-error").textContent = "";
}

function showError(e) {
  const [head, index, key] = e.path;
  let target = null;
  if (head === "layers" && index !== undefined) {
    const card = document.querySelector(`.layer[data-index="${index}"]`);
    if (card) {
      card.classList.add("invalid");
      const field = key !== undefined && card.querySelector(`.field[data-field="${key}"]`);
      target = field ? field.querySelector(".error") : card.querySelector(".layer-error");
      if (field) field.classList.add("invalid");
    }
  } else if (head !== undefined && head !== "layers") {
    const field = document.querySelector(`#model-fields .field[data-path="${head}"]`);
    if (field) { field.classList.add("invalid"); target = field.querySelector(".error"); }
  }
  target = target || $("spec-error");
  target.textContent = (target.textContent ? target.textContent + "; " : "") + e.message;
}

function showResult(spec, r) {
  clearErrors();
  lastResult = r;
  r.errors.forEach(showError);
  document.querySelectorAll(".layer").forEach((card, i) => {
    const info = r.layers[i];
    card.querySelector(".shape").textContent = info ? `→ [${info.output_shape.join(", ")}] · ${info.params.toLocaleString()} params` : "";
  });
  $("totals").textContent = r.ok ? `${r.num_params.toLocaleString()} parameters · hash ${r.hash.slice(0, 16)}` : "not a valid spec yet";
  $("table").textContent = r.ok ? r.table : "";
  $("json").textContent = JSON.stringify(spec, null, 2);
  $("status").textContent = r.ok ? "valid" : `${r.errors.length} problem(s)`;
  document.body.dataset.checked = String(checkSeq);
}

async function changed() {
  const seq = ++checkSeq, spec = currentSpec();
  document.body.dataset.checked = "";
  const resp = await fetch("api/spec/check" + q, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(spec) });
  const r = await resp.json();
  if (seq === checkSeq) showResult(spec, r);
}

function download() {
  const spec = currentSpec();
  const blob = new Blob([JSON.stringify(spec, null, 2) + "\n"], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = (spec.name || "model") + ".json";
  document.body.appendChild(a); a.click(); a.remove();
}

async function save() {
  const resp = await fetch("api/spec/save" + q, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: $("save-name").value.trim() || $("f-name").value.trim(), spec: currentSpec() }) });
  const r = await resp.json();
  $("save-result").textContent = resp.ok ? `saved to ${r.path}` : r.error;
  $("save-result").className = resp.ok ? "note" : "error";
}

async function load(name) {
  const spec = await (await fetch(`api/specs/${encodeURIComponent(name)}` + q)).json();
  $("f-name").value = spec.name || name;
  $("f-input_shape").value = spec.input_shape.join(", ");
  $("f-num_classes").value = spec.num_classes ?? "";
  layers = spec.layers.map(({ type, ...fields }) => ({ type, fields }));
  renderLayers(); changed();
}

async function start() {
  schema = await (await fetch("api/schema" + q)).json();
  const select = $("new-layer-type");
  for (const type of schema.$defs.layer.properties.type.enum) {
    const o = document.createElement("option"); o.value = o.textContent = type; select.appendChild(o);
  }
  $("add-layer").onclick = () => addLayer(select.value);
  for (const name of (await (await fetch("api/specs" + q)).json()).specs) {
    const o = document.createElement("option"); o.value = o.textContent = name; $("start-from").appendChild(o);
  }
  $("start-from").onchange = e => { if (e.target.value) load(e.target.value); };
  for (const id of ["f-name", "f-input_shape", "f-num_classes"]) $(id).oninput = changed;
  $("download").onclick = download;
  $("save").onclick = save;
  $("run-link").href = "./" + q;
  changed();
}
start();

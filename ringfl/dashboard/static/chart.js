// A small SVG line chart (shipped with ringfl, no library): series of {x, y} on one x axis,
// each series scaled to its own y range when asked (accuracy 0..1, loss 0..max).
"use strict";
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// series: [{name, color, points: [[x, y|null]...], max (optional fixed y max), axis: "left"|"right"}]
function lineChart(svg, series, opts) {
  const W = opts.width || 520, H = opts.height || 240, L = 44, R = 44, T = 10, B = 28;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const xs = series.flatMap(s => s.points.map(p => p[0]));
  const x0 = Math.min(0, ...xs), x1 = Math.max(1, ...xs);
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const axes = el("g", { class: "axis" }, svg);
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B }, axes);
  const step = Math.max(1, Math.ceil((x1 - x0) / 10));
  for (let x = Math.ceil(x0); x <= x1; x += step) {
    el("line", { x1: sx(x), y1: H - B, x2: sx(x), y2: H - B + 4 }, axes);
    el("text", { x: sx(x), y: H - B + 16, "text-anchor": "middle" }, axes).textContent = x;
  }
  el("text", { x: (W - R + L) / 2, y: H - 1, "text-anchor": "middle" }, axes).textContent = opts.xlabel || "";
  for (const s of series) {
    const ys = s.points.map(p => p[1]).filter(y => y !== null && isFinite(y));
    const top = s.max || niceMax(Math.max(0, ...ys));
    const sy = y => H - B - y / top * (H - B - T);
    const right = s.axis === "right", ax = right ? W - R : L;
    el("line", { x1: ax, y1: T, x2: ax, y2: H - B, stroke: s.color }, axes);
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4;
      el("text", { x: right ? ax + 4 : ax - 4, y: sy(v) + 4, "text-anchor": right ? "start" : "end", fill: s.color },
         axes).textContent = +v.toFixed(2);
    }
    const pts = s.points.filter(p => p[1] !== null && isFinite(p[1]));
    if (pts.length) {
      el("polyline", { points: pts.map(p => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none",
                       stroke: s.color, "stroke-width": 2 }, svg);
      for (const p of pts) {
        const dot = el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.color }, svg);
        el("title", {}, dot).textContent = `${s.name} round ${p[0]}: ${p[1].toFixed(4)}`;
      }
    }
  }
}

// A small SVG line chart: lineChart(container, series, options). No dependencies.
// series: [{name, color, points: [[t, y], ...]}] with t in seconds; the x axis spans
// options.span seconds up to the newest point.
"use strict";

function lineChart(container, series, options) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 600, height = 160, left = 42, right = 8, top = 8, bottom = 20;
  const span = (options && options.span) || 120;
  const unit = (options && options.unit) || "";
  const all = series.flatMap((s) => s.points);
  const tMax = all.length ? Math.max(...all.map((p) => p[0])) : 0;
  const tMin = tMax - span;
  let yMax = Math.max(1, ...all.map((p) => p[1]));
  const step = Math.pow(10, Math.floor(Math.log10(yMax)));
  yMax = Math.ceil(yMax / step) * step;
  const x = (t) => left + ((t - tMin) / span) * (width - left - right);
  const y = (v) => top + (1 - v / yMax) * (height - top - bottom);

  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  };
  for (const frac of [0, 0.5, 1]) {
    const v = yMax * frac;
    add("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "axis" });
    add("text", { x: left - 4, y: y(v) + 3, "text-anchor": "end" }, fmtNumber(v) + unit);
  }
  add("text", { x: left, y: height - 4 }, `-${span} s`);
  add("text", { x: width - right, y: height - 4, "text-anchor": "end" }, "now");
  for (const s of series) {
    const pts = s.points.filter((p) => p[0] >= tMin);
    if (!pts.length) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    const area = `${d.join("")}L${x(pts[pts.length - 1][0]).toFixed(1)},${y(0)}L${x(pts[0][0]).toFixed(1)},${y(0)}Z`;
    add("path", { d: area, fill: s.color, "fill-opacity": "0.12", stroke: "none" });
    add("path", { d: d.join(""), fill: "none", stroke: s.color, "stroke-width": "2" });
  }
  container.replaceChildren(svg);
}

function fmtNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

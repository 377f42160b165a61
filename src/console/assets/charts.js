// Charts of a node's own metrics over the last minutes (sampled by the node every 2 s):
// tasks/s by outcome, queue depth, step latency percentiles, restarts per supervisor.
// Drawn on canvases by hand; refreshed every 2 s.

import { api, esc } from "/console/api.js";

const PALETTE = ["#1a7f37", "#cf222e", "#0969da", "#9a6700", "#8250df", "#8c959f", "#bc4c00"];

export function mount(view, params) {
  let node = params.node || "";
  let stopped = false;
  view.innerHTML = `<div class="row"><h2 class="grow">Charts <span class="muted" id="of"></span></h2>
    <label>node <select id="node" data-testid="chart-node"></select></label></div>
    <div id="charts" data-testid="charts"></div>`;
  const box = view.querySelector("#charts");
  const select = view.querySelector("#node");
  select.addEventListener("change", () => { location.hash = `charts?node=${encodeURIComponent(select.value)}`; });
  (async () => {
    let names = [];
    try { names = (await api("/admin/cluster")).members.map((m) => m.node); } catch { /* alone */ }
    const me = (await api("/admin/actors")).node;
    if (!names.includes(me)) names.unshift(me);
    if (!node) node = me;
    select.innerHTML = names.map((n) => `<option ${n === node ? "selected" : ""}>${esc(n)}</option>`).join("");
    while (!stopped) {
      try { draw(box, await api(`/admin/metrics/history?node=${encodeURIComponent(node)}`)); }
      catch (e) { box.textContent = e.message; }
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return () => { stopped = true; };
}

function draw(box, history) {
  const points = history.points;
  const series = (pick) => {
    const keys = new Set();
    points.forEach((p) => Object.keys(pick(p) || {}).forEach((k) => keys.add(k)));
    return [...keys].sort().map((k) => ({ name: k, values: points.map((p) => (pick(p) || {})[k] || 0) }));
  };
  const charts = [
    ["tasks/s by outcome", series((p) => p.tasks_per_sec)],
    ["queue depth and running", [{ name: "queued", values: points.map((p) => p.queued) },
      { name: "running", values: points.map((p) => p.running) }]],
    ["step latency (ms)", [{ name: "p50", values: points.map((p) => p.step_p50_ms) },
      { name: "p99", values: points.map((p) => p.step_p99_ms) }]],
    ["restarts per supervisor (per sample)", series((p) => p.restarts)],
  ];
  if (!box.childElementCount) {
    box.innerHTML = charts.map(([title], i) => `<div class="chart panel" data-chart="${i}">
      <div>${esc(title)}</div><canvas width="560" height="180"></canvas><div class="legend muted"></div></div>`).join("");
  }
  charts.forEach(([, lines], i) => {
    const panel = box.querySelector(`[data-chart="${i}"]`);
    plot(panel.querySelector("canvas"), points.map((p) => p.at_ms), lines);
    panel.querySelector(".legend").innerHTML = lines.map((l, j) =>
      `<span style="color:${PALETTE[j % PALETTE.length]}">■</span> ${esc(l.name)} ${fmt(l.values[l.values.length - 1])}`).join(" &nbsp; ");
  });
}

const fmt = (v) => (v === undefined ? "" : v >= 100 ? v.toFixed(0) : v.toFixed(1));

function plot(canvas, times, lines) {
  const g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 44, B = 18;
  g.clearRect(0, 0, W, H);
  const max = Math.max(1, ...lines.flatMap((l) => l.values)) * 1.1;
  g.strokeStyle = "#e2e2dc"; g.fillStyle = "#6b7280"; g.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = H - B - ((H - B - 6) * i) / 4;
    g.beginPath(); g.moveTo(L, y); g.lineTo(W, y); g.stroke();
    g.fillText(fmt((max * i) / 4), 2, y + 4);
  }
  if (times.length) {
    const span = Math.max(1, times[times.length - 1] - times[0]);
    g.fillText(`last ${Math.round(span / 1000)} s`, L, H - 4);
    lines.forEach((l, j) => {
      g.strokeStyle = PALETTE[j % PALETTE.length]; g.lineWidth = 1.5; g.beginPath();
      l.values.forEach((v, k) => {
        const x = L + ((W - L - 4) * (times[k] - times[0])) / span;
        const y = H - B - ((H - B - 6) * v) / max;
        k ? g.lineTo(x, y) : g.moveTo(x, y);
      });
      g.stroke();
    });
  }
}

// Tasks: a filtered list, submit, and one task in detail — its steps as a graph coloured
// by state (attempts, agents, nodes, verdicts on hover and below), its trace streaming
// live from the cluster's event feed, cancel.

import { api, post, follow, esc } from "/console/api.js";
import { setLive } from "/console/app.js";

const COLOURS = { succeeded: "#1a7f37", running: "#0969da", failed: "#cf222e", timed_out: "#cf222e",
  queued: "#9a6700", pending: "#afb8c1", skipped: "#d0d7de", cancelled: "#8c959f",
  awaiting_approval: "#bf8700" };

export function mount(view, params) {
  return params.id ? detail(view, params.id) : list(view, params);
}

function list(view, params) {
  const status = params.status || "";
  view.innerHTML = `<div class="row"><h2 class="grow">Tasks</h2>
    <label>status <select id="status">${["", "queued", "running", "succeeded", "failed",
      "cancelled", "timed_out"].map((s) => `<option ${s === status ? "selected" : ""}>${s}</option>`).join("")}
    </select></label></div>
    <div class="row"><div class="grow"><table data-testid="tasks"><thead><tr><th>task</th><th>status</th>
      <th>priority</th><th>description</th><th>created</th><th>finished</th></tr></thead><tbody></tbody></table>
      <p><button id="more">more</button></p></div>
    <form class="panel" id="submit" style="width: 28rem"><h3>Submit</h3>
      <textarea id="spec" data-testid="spec">{"steps": [
  {"id": "a", "tool": "echo", "args": {"text": "hello"}},
  {"id": "b", "tool": "echo", "args": {"text": "world"}, "depends_on": ["a"]}
]}</textarea><p><button data-testid="submit">submit</button> <span id="submitted" class="muted"></span></p>
    </form></div>`;
  const body = view.querySelector("tbody");
  let cursor = null;
  const load = async (more) => {
    const q = new URLSearchParams({ limit: "50" });
    if (status) q.set("status", status);
    if (more && cursor) q.set("cursor", cursor);
    const page = await api(`/admin/api/v1/tasks?${q}`);
    cursor = page.next_cursor;
    const rows = page.tasks.map((t) => `<tr><td><a href="#tasks?id=${esc(t.task_id)}">${esc(t.task_id)}</a></td>
      <td class="s-${esc(t.status)}">${esc(t.status)}</td><td>${esc(t.priority)}</td>
      <td>${esc(t.description || "")}</td><td class="muted">${esc(t.created_at)}</td>
      <td class="muted">${esc(t.finished_at || "")}</td></tr>`).join("");
    body.innerHTML = more ? body.innerHTML + rows : rows;
    view.querySelector("#more").disabled = !cursor;
  };
  view.querySelector("#status").addEventListener("change", (e) => {
    location.hash = `tasks?status=${encodeURIComponent(e.target.value)}`;
  });
  view.querySelector("#more").addEventListener("click", () => load(true));
  view.querySelector("#submit").addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = view.querySelector("#submitted");
    try {
      const spec = JSON.parse(view.querySelector("#spec").value);
      const r = await post("/admin/api/v1/tasks", spec);
      location.hash = `tasks?id=${r.task_id}`;
    } catch (err) { out.textContent = err.message; }
  });
  load(false).catch((e) => { body.innerHTML = `<tr><td>${esc(e.message)}</td></tr>`; });
  const timer = setInterval(() => load(false).catch(() => {}), 3000);
  return () => clearInterval(timer);
}

function detail(view, id) {
  view.innerHTML = `<p><a href="#tasks">← tasks</a></p><div class="row"><h2 class="grow">Task
    <span data-testid="task-id">${esc(id)}</span> <span id="status" data-testid="task-status"></span></h2>
    <button class="danger" id="cancel">cancel</button></div>
    <div class="panel"><svg id="graph" data-testid="graph" width="100%" height="120"></svg></div>
    <div class="row" style="margin-top:1rem"><div class="grow panel"><h3>Steps</h3><div id="steps"></div></div>
    <div class="panel grow"><h3>Trace <span class="muted">live</span></h3>
    <div class="trace" id="trace" data-testid="trace"></div></div></div>`;
  const trace = view.querySelector("#trace");
  let refreshing = false, again = false, done = false;
  const refresh = async () => {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const t = await api(`/admin/api/v1/tasks/${encodeURIComponent(id)}`);
      const st = view.querySelector("#status");
      st.className = `s-${t.status}`;
      st.textContent = t.status;
      drawGraph(view.querySelector("#graph"), t.steps);
      view.querySelector("#steps").innerHTML = steps(t.steps);
      // What the feed has not brought (it was down, or is slow) comes with the task.
      for (const e of t.events) {
        if (!trace.querySelector(`[data-seq="${e.seq}"]`)) addTrace(trace, e);
      }
      done = FINAL.includes(t.status);
    } catch (e) { view.querySelector("#status").textContent = e.message; }
    refreshing = false;
    if (again) { again = false; refresh(); }
  };
  view.querySelector("#cancel").addEventListener("click", async () => {
    if (!confirm(`Cancel task ${id}?`)) return;
    try { await post(`/admin/api/v1/tasks/${encodeURIComponent(id)}/cancel`); } catch (e) { alert(e.message); }
    refresh();
  });
  refresh().then(() => {});
  const seen = new Set();
  const stop = follow({ task: id, since: new Date(Date.now() - 3600e3).toISOString() }, (frame) => {
    const e = frame.event;
    if (seen.has(e.seq)) return;
    seen.add(e.seq);
    if (trace.querySelector(`[data-seq="${e.seq}"]`)) return;
    addTrace(trace, { seq: e.seq, at_ms: e.at_ms, kind: e.event, data: e.data }, frame.node);
    refresh();
  }, setLive);
  // The feed drives the view; a slow poll keeps it true should the feed be down.
  const timer = setInterval(() => { if (!done) refresh(); }, 5000);
  return () => { clearInterval(timer); stop(); };
}

const FINAL = ["succeeded", "failed", "cancelled", "timed_out"];

function addTrace(box, e, node) {
  const at = new Date(e.at_ms).toISOString().slice(11, 23);
  const data = e.data && Object.keys(e.data).length ? esc(JSON.stringify(e.data)) : "";
  const line = document.createElement("div");
  line.dataset.seq = e.seq;
  line.dataset.kind = e.kind;
  line.innerHTML = `<span class="muted">${at} #${e.seq}${node ? " " + esc(node) : ""}</span>
    <b>${esc(e.kind)}</b> <span class="muted">${data}</span>`;
  const after = [...box.children].find((c) => Number(c.dataset.seq) > e.seq);
  box.insertBefore(line, after || null);
  box.scrollTop = box.scrollHeight;
}

function steps(list) {
  return `<table><thead><tr><th>step</th><th>tool</th><th>status</th><th>attempts</th></tr></thead><tbody>${
    list.map((s) => `<tr data-step="${esc(s.id)}"><td>${esc(s.id)}</td><td>${esc(s.tool)}</td>
      <td class="s-${esc(s.status)}">${esc(s.status)}</td><td>${s.attempts.map((a) =>
        `#${a.attempt} ${esc(a.status || "")} <span class="muted">${esc(a.agent || "")}@${esc(a.node || "")}</span>
         ${a.verdict ? `<span class="${a.verdict.passed ? "s-succeeded" : "s-failed"}">${esc(a.verdict.reason)}</span>` : ""}
         ${a.error ? `<span class="s-failed">${esc(a.error)}</span>` : ""}`).join("<br>")}
      ${s.output !== undefined && s.output !== null ? `<pre>${esc(JSON.stringify(s.output).slice(0, 400))}</pre>` : ""}</td></tr>`).join("")
  }</tbody></table>`;
}

/** The steps as a DAG: columns by depth (longest chain of dependencies), arrows from each
 * dependency, boxes coloured by state. */
function drawGraph(svg, list) {
  const depth = new Map();
  const byId = new Map(list.map((s) => [s.id, s]));
  const d = (s, seen = new Set()) => {
    if (depth.has(s.id)) return depth.get(s.id);
    if (seen.has(s.id)) return 0;
    seen.add(s.id);
    const v = Math.max(-1, ...s.depends_on.map((p) => (byId.has(p) ? d(byId.get(p), seen) : -1))) + 1;
    depth.set(s.id, v);
    return v;
  };
  list.forEach((s) => d(s));
  const cols = new Map();
  for (const s of list) { const c = depth.get(s.id); cols.set(c, [...(cols.get(c) || []), s]); }
  const W = 150, H = 34, GX = 50, GY = 14, pos = new Map();
  let rows = 1;
  for (const [c, ss] of cols) {
    rows = Math.max(rows, ss.length);
    ss.forEach((s, r) => pos.set(s.id, { x: 10 + c * (W + GX), y: 10 + r * (H + GY) }));
  }
  svg.setAttribute("height", 20 + rows * (H + GY));
  svg.setAttribute("width", Math.max(300, 20 + cols.size * (W + GX)));
  const arrows = list.flatMap((s) => s.depends_on.filter((p) => pos.has(p)).map((p) => {
    const a = pos.get(p), b = pos.get(s.id);
    return `<line x1="${a.x + W}" y1="${a.y + H / 2}" x2="${b.x}" y2="${b.y + H / 2}" stroke="#8c959f"
      marker-end="url(#arrow)"/>`;
  }));
  const boxes = list.map((s) => {
    const p = pos.get(s.id), a = s.attempts[s.attempts.length - 1];
    const tip = a ? `attempt ${a.attempt} on ${a.agent || "?"}@${a.node || "?"}` : "not started";
    return `<g data-step="${esc(s.id)}" data-status="${esc(s.status)}"><title>${esc(tip)}</title>
      <rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="5" fill="${COLOURS[s.status] || "#afb8c1"}"/>
      <text x="${p.x + 8}" y="${p.y + 21}" fill="#fff">${esc(s.id)} · ${esc(s.tool)} · ${esc(s.status)}</text></g>`;
  });
  svg.innerHTML = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6"
    markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#8c959f"/></marker></defs>
    ${arrows.join("")}${boxes.join("")}`;
}

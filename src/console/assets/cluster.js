// Cluster: every member with status, failure-detector value, heartbeat age, link, load and
// roles; tasks taken over; drain. Polled every 2 s and at once on a node event.

import { api, post, follow, esc, ago } from "/console/api.js";
import { setLive } from "/console/app.js";

export function mount(view) {
  view.innerHTML = `<h2>Cluster</h2><div id="summary" class="muted"></div>
    <table data-testid="members"><thead><tr><th>node</th><th>status</th><th>heartbeat</th>
    <th>detector</th><th>link</th><th>running</th><th>queued</th><th>actors</th><th>roles</th>
    <th>version</th><th></th></tr></thead><tbody></tbody></table>`;
  const body = view.querySelector("tbody");
  const summary = view.querySelector("#summary");
  let stopped = false;

  const render = async () => {
    let snap;
    try {
      snap = await api("/admin/cluster");
    } catch (e) {
      if (!String(e.message).startsWith("not_clustered")) { summary.textContent = e.message; return; }
      const me = await api("/admin/actors");
      summary.textContent = "This node runs alone (no NATS): no other members.";
      body.innerHTML = `<tr data-node="${esc(me.node)}"><td>${esc(me.node)}</td><td class="s-up">up</td>
        <td colspan="9" class="muted">single node</td></tr>`;
      return;
    }
    summary.innerHTML = `cluster <b>${esc(snap.cluster)}</b>, seen from <b>${esc(snap.node)}</b> · bus
      ${esc(snap.bus)} · tasks taken over here: <b data-testid="taken-over">${snap.tasks_taken_over}</b> ·
      decode errors: ${snap.decode_errors}`;
    body.innerHTML = snap.members.map((m) => `<tr data-node="${esc(m.node)}">
      <td><a href="#tree?node=${encodeURIComponent(m.node)}">${esc(m.node)}</a></td>
      <td class="s-${esc(m.status)}" data-testid="status">${esc(m.status)}</td>
      <td>${ago(m.last_heartbeat_ms)}</td>
      <td>${Number(m.detector).toFixed(2)} <span class="muted">${esc(m.detector_kind)}</span></td>
      <td class="s-${esc(m.link)}">${esc(m.link)}</td>
      <td>${m.load.running}</td><td>${m.load.queued}</td><td>${m.load.actors}</td>
      <td class="muted">${m.serves.map((s) => `${esc(s.role)}×${s.instances}`).join(" ")}</td>
      <td class="muted">${esc(m.version)}</td>
      <td>${m.status === "up" ? `<button class="danger" data-drain="${esc(m.node)}">drain</button>` : ""}</td>
    </tr>`).join("");
  };

  view.addEventListener("click", async (e) => {
    const node = e.target.dataset && e.target.dataset.drain;
    if (!node) return;
    if (!confirm(`Drain ${node}? It takes no new tasks, finishes its runs, leaves and exits.`)) return;
    try { await post(`/admin/nodes/${encodeURIComponent(node)}/drain`); } catch (err) { alert(err.message); }
    render();
  });

  const loop = async () => { while (!stopped) { await render().catch(() => {}); await sleep(2000); } };
  loop();
  const stopFeed = follow({ kind: "node_joined,node_down,node_left,tasks_taken_over" },
    () => render(), setLive);
  return () => { stopped = true; stopFeed(); };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Events: the cluster's event feed, live, with its filters; the latest 500 kept on screen.
// At most RATE events a second are sent (the node counts the rest and says how many): a
// page cannot show more, and a busy cluster has tens of thousands.

import { follow, esc } from "/console/api.js";
import { setLive } from "/console/app.js";

const KEEP = 500;
const RATE = 50;

export function mount(view, params) {
  const fields = ["kind", "task", "session", "node", "actor"];
  view.innerHTML = `<h2>Events</h2><form id="filters" class="row">${fields.map((f) =>
    `<label>${f} <input name="${f}" value="${esc(params[f] || "")}" size="14"></label>`).join("")}
    <button>follow</button></form>
    <table data-testid="events"><thead><tr><th>seq</th><th>at</th><th>node</th><th>kind</th><th>what</th></tr></thead>
    <tbody></tbody></table>`;
  view.querySelector("#filters").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams([...new FormData(e.target)].filter(([, v]) => v));
    location.hash = `events?${q}`;
  });
  const body = view.querySelector("tbody");
  const query = Object.fromEntries(fields.filter((f) => params[f]).map((f) => [f, params[f]]));
  query.max_rate = RATE;
  return follow(query, (frame) => {
    if (frame.kind === "skipped") {
      const row = document.createElement("tr");
      row.className = "muted";
      row.innerHTML = `<td colspan="5">… ${frame.count.toLocaleString()} more events up to seq
        ${frame.last_seq} not shown (at most ${RATE} a second; narrow the filters to see them all)</td>`;
      body.prepend(row);
      return;
    }
    const e = frame.event;
    const { kind, at, ...rest } = e;
    const row = document.createElement("tr");
    row.innerHTML = `<td>${frame.seq}</td><td class="muted">${esc(at)}</td><td>${esc(frame.node)}</td>
      <td>${esc(kind)}</td><td><pre>${esc(JSON.stringify(rest))}</pre></td>`;
    body.prepend(row);
    while (body.childElementCount > KEEP) body.lastElementChild.remove();
  }, setLive);
}

// Supervision tree of any node, live (polled every second; a restart flashes its line),
// collapsible; an actor's detail with stop / kill / restart (confirmed).

import { api, post, esc } from "/console/api.js";

export function mount(view, params) {
  let node = params.node || "";
  let selected = null;          // the selected actor's path of names
  const collapsed = new Set();  // paths of names, which survive restarts (ids do not)
  const restarts = new Map();   // path -> restarts seen, to flash a restart
  let opNote = null;            // the last operation's result: { key, text }, kept across re-renders
  let stopped = false;

  view.innerHTML = `<div class="row"><h2 class="grow">Supervision tree
      <span class="muted" id="of"></span></h2>
      <label>node <select id="node" data-testid="node-select"></select></label></div>
    <div class="row"><div class="grow panel" id="tree" data-testid="tree"></div>
    <div class="panel" id="detail" data-testid="detail" style="width: 26rem">
      <span class="muted">Select an actor.</span></div></div>`;
  const treeBox = view.querySelector("#tree");
  const detail = view.querySelector("#detail");
  const select = view.querySelector("#node");
  const q = () => (node ? `?node=${encodeURIComponent(node)}` : "");

  const fillNodes = async () => {
    let names = [];
    try { names = (await api("/admin/cluster")).members.map((m) => m.node); } catch { /* alone */ }
    const me = (await api("/admin/actors")).node;
    if (!names.includes(me)) names.unshift(me);
    if (!node) node = me;
    select.innerHTML = names.map((n) =>
      `<option ${n === node ? "selected" : ""}>${esc(n)}</option>`).join("");
  };
  select.addEventListener("change", () => { location.hash = `tree?node=${encodeURIComponent(select.value)}`; });

  const line = (a, path) => {
    const key = path.join("/");
    const kids = a.children || [];
    const before = restarts.get(key);
    restarts.set(key, a.restarts);
    const flash = before !== undefined && a.restarts > before ? " flash" : "";
    const sel = selected === key ? " sel" : "";
    const twist = kids.length ? (collapsed.has(key) ? "▸" : "▾") : "";
    const work = a.current_work ? ` <span class="muted">— ${esc(a.current_work)}</span>` : "";
    const err = a.last_error ? ` <span class="s-failed" title="${esc(a.last_error)}">⚠</span>` : "";
    const sub = kids.length && !collapsed.has(key)
      ? `<ul class="tree">${kids.map((c) => line(c, [...path, c.name])).join("")}</ul>` : "";
    return `<li><span class="node-line${sel}${flash}" data-key="${esc(key)}" data-id="${esc(a.id)}"
        data-name="${esc(a.name)}" data-testid="actor">
      <span class="twist" data-twist="${esc(key)}">${twist}</span>${esc(a.name)}
      <span class="muted">${esc(a.role || a.kind)}</span>
      <span class="s-${esc(a.status)}">${esc(a.status)}</span>
      <span class="muted">restarts</span> <span data-testid="restarts">${a.restarts}</span>
      <span class="muted">handled ${a.messages_handled}</span>${err}${work}</span>${sub}</li>`;
  };

  const render = async () => {
    const t = await api(`/admin/actors${q()}`);
    view.querySelector("#of").textContent = `of ${t.node}`;
    treeBox.innerHTML = `<ul class="tree" style="padding-left:0">${line(t.root, [t.root.name])}</ul>`;
    if (selected) {
      const chosen = treeBox.querySelector(`[data-key="${CSS.escape(selected)}"]`);
      if (chosen) showDetail(chosen.dataset.id);
    }
  };

  const showDetail = async (id) => {
    let d;
    try { d = await api(`/admin/actors/${encodeURIComponent(id)}${q()}`); } catch (e) {
      detail.innerHTML = `<span class="muted">${esc(e.message)}</span>`; return;
    }
    const a = d.actor;
    const rows = [["id", a.id], ["parent", d.parent], ["kind", a.kind], ["role", a.role],
      ["domain", a.domain], ["status", a.status], ["strategy", a.strategy], ["restart", a.restart],
      ["restarts", a.restarts], ["errors", a.errors], ["messages handled", a.messages_handled],
      ["mailbox", a.mailbox], ["current work", a.current_work], ["last error", a.last_error],
      ["children", (a.children || []).length]]
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => `<tr><th>${k}</th><td data-field="${k}">${esc(v)}</td></tr>`).join("");
    detail.innerHTML = `<h3>${esc(a.name)}</h3><table>${rows}</table><p>
      <button data-op="restart" data-id="${esc(a.id)}">restart</button>
      <button data-op="stop" data-id="${esc(a.id)}" class="danger">stop</button>
      <button data-op="kill" data-id="${esc(a.id)}" class="danger" data-testid="kill">kill</button></p>
      <p id="op-result" class="muted" data-testid="op-result"></p>`;
    // The detail is drawn again every second: keep the last operation's result showing.
    if (opNote && opNote.key === selected) detail.querySelector("#op-result").textContent = opNote.text;
  };

  view.addEventListener("click", async (e) => {
    const twist = e.target.closest("[data-twist]");
    if (twist && twist.textContent) {
      const k = twist.dataset.twist;
      collapsed.has(k) ? collapsed.delete(k) : collapsed.add(k);
      render();
      return;
    }
    const op = e.target.closest("[data-op]");
    if (op) {
      const name = detail.querySelector("h3").textContent;
      if (!confirm(`${op.dataset.op} ${name} on ${node}?`)) return;
      const key = selected;
      let text;
      try {
        const r = await post(`/admin/actors/${encodeURIComponent(op.dataset.id)}/${op.dataset.op}${q()}`);
        text = JSON.stringify(r);
      } catch (err) { text = err.message; }
      opNote = { key, text };
      const out = detail.querySelector("#op-result");
      if (out && selected === key) out.textContent = text;
      render();
      return;
    }
    const lineEl = e.target.closest(".node-line");
    if (lineEl) {
      if (selected !== lineEl.dataset.key) opNote = null;
      selected = lineEl.dataset.key;
      for (const s of treeBox.querySelectorAll(".sel")) s.classList.remove("sel");
      lineEl.classList.add("sel");
      showDetail(lineEl.dataset.id);
    }
  });

  (async () => {
    await fillNodes().catch(() => {});
    while (!stopped) { await render().catch((e) => { treeBox.textContent = e.message; }); await sleep(1000); }
  })();
  return () => { stopped = true; };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Sessions: the list, and one session as a conversation — each turn's message, its tool
// calls and results (from the turn's task), the answer, calls awaiting approval with
// approve / deny — live while a turn runs.

import { api, post, follow, esc } from "/console/api.js";
import { setLive } from "/console/app.js";

export function mount(view, params) {
  return params.id ? conversation(view, params.id) : list(view);
}

function list(view) {
  view.innerHTML = `<h2>Sessions</h2><table data-testid="sessions"><thead><tr><th>session</th>
    <th>status</th><th>node</th><th>turns</th><th>created</th><th>updated</th></tr></thead><tbody></tbody></table>`;
  const body = view.querySelector("tbody");
  const load = async () => {
    const page = await api("/admin/api/v1/sessions?limit=100");
    body.innerHTML = page.sessions.map((s) => `<tr><td><a href="#sessions?id=${esc(s.session_id)}">
      ${esc(s.session_id)}</a></td><td class="s-${s.status === "open" ? "running" : "cancelled"}">${esc(s.status)}</td>
      <td>${esc(s.node)}</td><td>${s.turns}</td><td class="muted">${esc(s.created_at)}</td>
      <td class="muted">${esc(s.updated_at)}</td></tr>`).join("") || `<tr><td class="muted">no sessions</td></tr>`;
  };
  load().catch((e) => { body.innerHTML = `<tr><td>${esc(e.message)}</td></tr>`; });
  const timer = setInterval(() => load().catch(() => {}), 3000);
  return () => clearInterval(timer);
}

function conversation(view, id) {
  view.innerHTML = `<p><a href="#sessions">← sessions</a></p><h2>Session ${esc(id)}</h2>
    <p class="muted" id="meta"></p><div id="turns" data-testid="turns"></div>`;
  const turns = view.querySelector("#turns");
  let stopFeed = () => {};
  let following = null;

  const render = async () => {
    const s = await api(`/admin/api/v1/sessions/${encodeURIComponent(id)}`);
    view.querySelector("#meta").innerHTML = `${esc(s.status)} · node ${esc(s.node)} · coordinator
      ${esc(s.coordinator || "—")} · ${s.usage.llm_calls} LLM calls, ${s.usage.tool_calls} tool calls,
      ${s.usage.input_tokens} tokens in, ${s.usage.output_tokens} out`;
    const parts = [];
    for (const t of s.turns) {
      const calls = await toolCalls(t.task_id).catch(() => []);
      parts.push(`<div data-turn="${t.turn}">
        <div class="bubble user"><span class="muted">turn ${t.turn} · ${esc(t.status)}</span><br>${esc(t.message)}</div>
        ${t.summary ? `<div class="bubble tool"><b>summary</b> ${esc(t.summary)}</div>` : ""}
        ${calls.map((c) => `<div class="bubble tool"><b>${esc(c.tool)}</b> <span class="s-${esc(c.status)}">${esc(c.status)}</span>
          <pre>${esc(JSON.stringify(c.args))}</pre>${c.output !== undefined ? `<pre>→ ${esc(JSON.stringify(c.output).slice(0, 600))}</pre>` : ""}</div>`).join("")}
        ${t.awaiting_approval.map((a) => `<div class="bubble tool s-awaiting_approval">awaits approval:
          <b>${esc(a.tool)}</b> <pre>${esc(JSON.stringify(a.arguments))}</pre>
          <button data-decide="approve" data-turn="${t.turn}" data-step="${esc(a.step)}">approve</button>
          <button data-decide="deny" data-turn="${t.turn}" data-step="${esc(a.step)}" class="danger">deny</button></div>`).join("")}
        ${t.answer ? `<div class="bubble agent">${esc(t.answer)}</div>` : ""}
        ${t.error ? `<div class="bubble tool s-failed">${esc(t.error)}</div>` : ""}</div>`);
    }
    turns.innerHTML = parts.join("");
    const last = s.turns[s.turns.length - 1];
    const running = last && !["succeeded", "failed", "cancelled", "timed_out"].includes(last.status);
    if (running && following !== last.task_id) {
      stopFeed();
      following = last.task_id;
      stopFeed = follow({ task: last.task_id }, () => render().catch(() => {}), setLive);
    }
  };

  view.addEventListener("click", async (e) => {
    const b = e.target.closest("[data-decide]");
    if (!b) return;
    const reason = b.dataset.decide === "deny" ? prompt("Reason the model will read:") || "" : undefined;
    try {
      await post(`/admin/api/v1/sessions/${encodeURIComponent(id)}/turns/${b.dataset.turn}/${b.dataset.decide}`,
        { step: b.dataset.step, ...(reason !== undefined ? { reason } : {}) });
    } catch (err) { alert(err.message); }
    render();
  });
  render().catch((e) => { turns.textContent = e.message; });
  const timer = setInterval(() => render().catch(() => {}), 5000);
  return () => { clearInterval(timer); stopFeed(); };
}

/** A turn's tool calls as its task recorded them (the `t<n>_<j>` steps). */
async function toolCalls(taskId) {
  const t = await api(`/admin/api/v1/tasks/${encodeURIComponent(taskId)}`);
  return t.steps.filter((s) => /^t\d+_\d+$/.test(s.id)).map((s) => {
    const a = s.attempts[s.attempts.length - 1] || {};
    return { tool: s.tool, status: s.status, args: a.args ?? null, output: s.output ?? undefined };
  });
}

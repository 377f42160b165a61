// How the console talks to its node: the admin routes with the admin token (asked once,
// kept in sessionStorage), and the event feed as a WebSocket (the token in the query:
// browsers cannot set headers on a WebSocket).

const KEY = "ms-admin-token";

export function token() { return sessionStorage.getItem(KEY) || ""; }

function askToken() {
  const dialog = document.getElementById("login");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
      resolve();
    }, { once: true });
    if (!dialog.open) dialog.showModal();
  });
}

/** JSON from an admin route; a 401 asks for the token and tries again. */
export async function api(path, options = {}) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = { ...(options.headers || {}) };
    if (token()) headers.authorization = `Bearer ${token()}`;
    if (options.body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(path, { ...options, headers });
    if (res.status === 401) { await askToken(); continue; }
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = { raw: text }; }
    if (!res.ok) {
      const msg = body && body.error ? `${body.error.code}: ${body.error.message}` : `${res.status}`;
      throw new Error(msg);
    }
    return body;
  }
  throw new Error("no valid admin token");
}

export const post = (path, body) =>
  api(path, { method: "POST", body: body === undefined ? undefined : JSON.stringify(body) });

/**
 * Follows the event feed with `query` (an object of filters), calling `onEvent(frame)` per
 * event (and per `skipped` frame of a feed with `max_rate`); reconnects after a drop and resumes after the last sequence seen, so nothing is
 * missed or repeated. Returns a function that stops it.
 */
export function follow(query, onEvent, onState = () => {}) {
  let lastSeq = null, socket = null, stopped = false, retry = 500;
  const open = () => {
    const q = new URLSearchParams({ ...query });
    if (lastSeq !== null) { q.delete("since"); q.set("after_seq", lastSeq); }
    if (token()) q.set("access_token", token());
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/admin/events/ws?${q}`);
    socket.onopen = () => { retry = 500; onState(true); };
    socket.onmessage = (m) => {
      const frame = JSON.parse(m.data);
      if (frame.kind === "hello") return;
      // A sampled feed's `skipped` frame counts too: a resume goes on after what it skipped.
      lastSeq = frame.kind === "skipped" ? Math.max(lastSeq ?? 0, frame.last_seq) : frame.seq;
      onEvent(frame);
    };
    socket.onclose = () => {
      onState(false);
      if (!stopped) { setTimeout(open, retry); retry = Math.min(retry * 2, 5000); }
    };
  };
  open();
  return () => { stopped = true; if (socket) socket.close(); };
}

/** Escapes text for HTML. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

export const el = (html) => {
  const t = document.createElement("template");
  t.innerHTML = html.trim();
  return t.content.firstElementChild;
};

export const ago = (ms) => (ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);

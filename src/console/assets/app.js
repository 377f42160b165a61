// The console's shell: tabs in the URL's hash (`#tree?node=n2`), one view mounted at a
// time (each view returns how to unmount it: its timers and feeds stop with it), and the
// feed indicator.

import { api, esc } from "/console/api.js";
import * as cluster from "/console/cluster.js";
import * as tree from "/console/tree.js";
import * as tasks from "/console/tasks.js";
import * as sessions from "/console/sessions.js";
import * as charts from "/console/charts.js";
import * as events from "/console/events.js";

const VIEWS = { cluster, tree, tasks, sessions, charts, events };
let unmount = () => {};

export function setLive(on) {
  const live = document.getElementById("live");
  live.classList.toggle("on", on);
  live.textContent = on ? "● feed" : "○ feed";
}

function route() {
  const [name, query] = (location.hash.slice(1) || "cluster").split("?");
  const params = Object.fromEntries(new URLSearchParams(query || ""));
  const view = VIEWS[name] ? name : "cluster";
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("on", a.dataset.tab === view);
  }
  unmount();
  // Each view gets an element of its own: the listeners a view adds to it go with it (on
  // the shared <main>, an earlier view's click handlers would still answer, e.g. a kill
  // on another node's tree).
  const host = document.createElement("div");
  document.getElementById("view").replaceChildren(host);
  unmount = VIEWS[view].mount(host, params) || (() => {});
}

async function start() {
  window.addEventListener("hashchange", route);
  route();
  try {
    const me = await api("/admin/actors");
    document.getElementById("where").innerHTML = `node <b>${esc(me.node)}</b>`;
  } catch (e) {
    document.getElementById("where").textContent = `(${e.message})`;
  }
}

start();

// The status page of flexingest: every sync, refreshed every few seconds, from GET /v1/syncs.
// The API key is asked once and kept in this tab's sessionStorage (never in a URL or a cookie).
// Everything that comes from the service (keys, errors, names) is set as text, never as HTML.
"use strict";

const KEY = "flexingest-api-key";
const REFRESH_MS = 3000;
const said = new Map(); // sync name -> the answer to its last button, kept across refreshes
let timer = null;
let latest = 0; // the newest refresh: an older one still in flight neither renders nor schedules

class Refused extends Error {}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(method, path) {
  const headers = { "Accept": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers["X-API-KEY"] = key;
  const response = await fetch(path, { method, headers, cache: "no-store", credentials: "omit" });
  const body = await response.json().catch(() => null);
  if (response.status === 401) throw new Refused(key ? "That key was refused." : "");
  if (!response.ok) {
    const detail = body && body.detail;
    throw new Error(typeof detail === "string" ? detail : `${method} ${path}: HTTP ${response.status}`);
  }
  return body;
}

function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  if (isNaN(moment)) return iso;
  const seconds = Math.round((moment - Date.now()) / 1000);
  const size = Math.abs(seconds);
  const span = size < 90 ? `${size}s` : size < 5400 ? `${Math.round(size / 60)}min` :
    size < 172800 ? `${Math.round(size / 3600)}h` : `${Math.round(size / 86400)}d`;
  return `${moment.toLocaleString()} (${seconds <= 0 ? span + " ago" : "in " + span})`;
}

function counts(entry) {
  const list = el("dl", { class: "counts" });
  for (const name of ["done", "skipped", "failed", "dead", "pending", "gone", "backlog"]) {
    list.append(el("div", { "data-count": name }, el("dt", null, name), el("dd", null, entry[name] ?? 0)));
  }
  return list;
}

function lastPass(run) {
  if (!run) return el("p", { class: "line" }, "Last pass: never");
  const result = run.result || "running";
  const text = `Last pass: ${when(run.started_at)} — ${result}` + (run.ended_at ?
    `; listed ${run.listed}, new ${run.new}, changed ${run.changed}, done ${run.done}, failed ${run.failed}, ` +
    `dead ${run.dead}, gone ${run.gone}` : "");
  return el("p", { class: "line" }, text, run.error ? el("br") : null, run.error ? `Error: ${run.error}` : null);
}

function problems(entry) {
  if (!entry.problems.length) return null;
  const body = el("tbody");
  for (const p of entry.problems) {
    body.append(el("tr", { class: "problem" }, el("td", { class: "key" }, p.key), el("td", null, p.status),
      el("td", null, p.attempts), el("td", { class: "error" }, p.error || "")));
  }
  return el("table", { class: "problems" },
    el("caption", { class: "said" }, "Most recent failures"),
    el("thead", null, el("tr", null, el("th", null, "key"), el("th", null, "status"), el("th", null, "tries"),
      el("th", null, "error"))), body);
}

function button(label, name, action, answer) {
  const b = el("button", { type: "button", "data-action": action }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      said.set(name, answer(await api("POST", `/v1/syncs/${encodeURIComponent(name)}/${action}`)));
    } catch (error) {
      if (error instanceof Refused) return ask(error.message);
      said.set(name, error.message);
    }
    refresh();
  });
  return b;
}

function card(name, entry) {
  const health = entry.health || "ok";
  return el("section", { class: "sync", "data-sync": name },
    el("h2", null, name, el("span", { class: `health ${health.replace(" ", "-")}` }, health),
      entry.running ? el("span", { class: "running" }, "pass running") : null),
    entry.note ? el("p", { class: "line said" }, entry.note) : null,
    counts(entry), lastPass(entry.last_run),
    el("p", { class: "line" }, `Next pass: ${when(entry.next_due)}`),
    problems(entry),
    el("div", { class: "actions" },
      button("Run a pass now", name, "run", (a) => a.run === "joined" ? "A pass was running: joined it." :
        "A pass started."),
      button("Retry failed objects", name, "retry", (a) => `${a.retried} object(s) will be processed again.`),
      el("span", { class: "said", "data-said": name }, said.get(name) || "")));
}

function render(report) {
  document.getElementById("pipeline").textContent = report.pipeline;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const names = Object.keys(report.syncs);
  const cards = names.map((name) => card(name, report.syncs[name]));
  document.getElementById("syncs").replaceChildren(...(cards.length ? cards :
    [el("p", { class: "line" }, "No syncs are declared.")]));
}

async function refresh() {
  clearTimeout(timer);
  const mine = ++latest;
  try {
    const report = await api("GET", "/v1/syncs");
    if (mine !== latest) return;
    render(report);
    document.getElementById("error").textContent = "";
  } catch (error) {
    if (mine !== latest) return;
    if (error instanceof Refused) return ask(error.message);
    document.getElementById("error").textContent = `Cannot reach the service: ${error.message}`;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function ask(message) {
  clearTimeout(timer);
  latest++;
  sessionStorage.removeItem(KEY);
  document.getElementById("syncs").replaceChildren();
  document.getElementById("login-error").textContent = message || "";
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("key").focus();
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault(); // the key never goes into a URL
  const input = document.getElementById("key");
  sessionStorage.setItem(KEY, input.value);
  input.value = "";
  event.target.hidden = true;
  refresh();
});

refresh();

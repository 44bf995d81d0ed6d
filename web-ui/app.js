// meshgate admin UI. Plain JavaScript, no build step, no framework.
//
// Security notes: every value from the API is put into the page with
// textContent (never innerHTML), so policy names or client addresses cannot
// inject markup; the CSP forbids inline script anyway. The session cookie is
// HttpOnly; the CSRF token lives only in this page's memory and is sent as
// X-CSRF-Token on every state-changing request.
"use strict";

const state = { csrf: null, stream: null, features: null };
const main = () => document.getElementById("main");

// ---------- DOM helpers ----------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const badge = (text, cls) => h("span", { class: `badge ${cls || text}` }, text);
const modeBadge = (m) => badge(m, ["STRICT", "PERMISSIVE", "DISABLE"].includes(m) ? m : "plain");
function table(headers, rows, emptyText) {
  if (!rows.length) return h("p", { class: "empty" }, emptyText || "Nothing to show.");
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: x.cls }, x.label || x)))),
      h("tbody", {}, rows)));
}
function setView(title, ...nodes) {
  document.title = `${title} · meshgate`;
  main().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}
function loading(what) { return h("p", { class: "loading", role: "status" }, `Loading ${what}…`); }
function errorPanel(err, retry) {
  return h("div", { class: "panel error", role: "alert" },
    h("h2", {}, "Something went wrong"),
    h("p", {}, err.message || String(err)),
    (err.details || []).length ? h("ul", {}, err.details.map((d) => h("li", {}, detailText(d)))) : null,
    retry ? h("button", { type: "button", onclick: retry }, "Try again") : null);
}
function toast(msg) {
  const t = document.getElementById("toast");
  t.textContent = msg;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 4000);
}
function ago(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso || "–";
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 0) return "in " + dur(-s);
  return dur(s) + " ago";
}
function until(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "–";
  const s = Math.round((t - Date.now()) / 1000);
  return s < 0 ? `expired ${dur(-s)} ago` : `in ${dur(s)}`;
}
function dur(s) {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}
function expiryBadge(iso, warnSecs) {
  const left = (Date.parse(iso) - Date.now()) / 1000;
  if (Number.isNaN(left)) return badge("unknown", "plain");
  if (left <= 0) return badge("expired", "bad");
  if (left < warnSecs) return badge("expires soon", "warn");
  return badge("healthy", "ok");
}
function detailText(d) {
  const where = [];
  if (d.file) where.push(d.file);
  if (d.line) where.push(`line ${d.line}${d.column ? ":" + d.column : ""}`);
  if (d.document) where.push(`document ${d.document}`);
  if (d.field) where.push(`field ${d.field}`);
  return (where.length ? where.join(", ") + ": " : "") + d.message;
}

// ---------- API ----------
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.details = (body && body.details) || [];
  }
}
async function api(method, path, body, contentType) {
  const headers = {};
  if (method !== "GET" && method !== "HEAD" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = contentType || "application/json";
    payload = contentType ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin", cache: "no-store" });
  let data = null;
  const ct = resp.headers.get("content-type") || "";
  if (resp.status !== 204) data = ct.includes("json") ? await resp.json().catch(() => null) : await resp.text();
  if (resp.status === 401 && path !== "/ui/session") {
    state.csrf = null;
    showLogin("Your session ended. Log in again.");
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// ---------- login ----------
function showLogin(message) {
  closeStream();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  const err = h("p", { class: "form-error", id: "login-error", role: "alert" }, message || "");
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", required: true, "aria-describedby": "token-hint login-error" });
  const button = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h("form", { class: "panel login", onsubmit: async (e) => {
    e.preventDefault();
    button.disabled = true;
    err.textContent = "";
    try {
      const r = await api("POST", "/ui/session", { token: input.value });
      state.csrf = r.csrf_token;
      input.value = "";
      startApp();
    } catch (x) {
      err.textContent = x.status === 429 ? "Too many failed attempts. Wait a moment and try again." :
        x.status === 401 ? "That token is not the admin token." : x.message;
      input.focus();
    } finally { button.disabled = false; }
  } },
  h("h1", {}, "Log in to meshgate"),
  h("div", { class: "field" },
    h("label", { for: "token" }, "Admin token"),
    input,
    h("p", { class: "hint", id: "token-hint" }, "Printed once when the gateway first started; a copy readable only by its user is in the data directory (admin-token).")),
  button, err);
  setView("Log in", form);
  input.focus();
}

async function boot() {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/ui/session"); } catch (_) { /* already gone */ }
    state.csrf = null;
    location.hash = "#/";
    showLogin("Logged out.");
  });
  const dlg = document.getElementById("dialog");
  dlg.addEventListener("close", () => { if (dlg.returnFocus) dlg.returnFocus.focus(); });
  try {
    const r = await fetch("/ui/session", { credentials: "same-origin", cache: "no-store" });
    if (r.ok) { state.csrf = (await r.json()).csrf_token; startApp(); return; }
  } catch (_) { /* fall through to login */ }
  showLogin();
}

function startApp() {
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  window.onhashchange = route;
  route();
}

// ---------- routing ----------
const routes = [
  [/^#?\/?$/, viewOverview],
  [/^#\/ns\/([^/]+)$/, viewNamespace],
  [/^#\/policies$/, viewPolicies],
  [/^#\/traffic$/, viewTraffic],
  [/^#\/edge$/, viewEdge],
  [/^#\/certificates$/, viewCertificates],
  [/^#\/audit$/, viewAudit],
];
function route() {
  if (!state.csrf) return showLogin();
  closeStream();
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll("#nav a")) {
    const target = a.getAttribute("href");
    const current = target === "#/" ? hash === "#/" || hash.startsWith("#/ns/") : hash.startsWith(target);
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  for (const [re, view] of routes) {
    const m = hash.match(re);
    if (m) { view(...m.slice(1).map(decodeURIComponent)); main().focus({ preventScroll: true }); return; }
  }
  setView("Not found", h("div", { class: "panel" }, h("h1", {}, "No such page"), h("a", { href: "#/" }, "Back to the overview")));
}

async function guarded(title, what, render) {
  setView(title, loading(what));
  try { await render(); } catch (e) {
    if (e.status === 401) return;
    setView(title, errorPanel(e, () => guarded(title, what, render)));
  }
}

// ---------- overview ----------
function viewOverview() {
  return guarded("Overview", "the overview", async () => {
    const [ns, status, ca, certs] = await Promise.all([
      api("GET", "/api/v1/namespaces"), api("GET", "/api/v1/status"),
      api("GET", "/api/v1/ca"), api("GET", "/api/v1/certificates"),
    ]);
    const rows = ns.items.map((n) => h("tr", {},
      h("td", {}, h("a", { href: `#/ns/${encodeURIComponent(n.name)}` }, n.name), n.root ? h("span", { class: "muted" }, " (mesh root)") : null),
      h("td", {}, modeBadge(n.mode), n.has_overrides ? h("span", { class: "muted" }, " + port overrides") : null),
      h("td", { class: "num" }, n.plaintext_clients.length ? badge(String(n.plaintext_clients.length), "warn") : "0"),
      h("td", { class: "num hide-narrow" }, String(n.services.length)),
      h("td", { class: "num hide-narrow" }, String(n.policies.length))));
    const gw = certs.gateway;
    setView("Overview",
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Overview"),
        h("p", { class: "muted" }, `Configuration generation ${status.generation}`))),
      status.last_error ? h("div", { class: "panel error", role: "alert" }, h("h2", {}, "Last change was rejected"), h("p", { class: "mono" }, status.last_error)) : null,
      h("section", { class: "panel", "aria-labelledby": "ns-h" },
        h("h2", { id: "ns-h" }, "Namespaces"),
        h("p", { class: "hint" }, ns.traffic_recorded ? "Plaintext clients: distinct addresses seen talking plaintext to the namespace in the last 15 minutes — the ones a switch to STRICT would cut off." : "The data plane is not running, so no traffic is recorded."),
        table(["Namespace", "Mode", { label: "Plaintext clients", cls: "num" }, { label: "Services", cls: "num hide-narrow" }, { label: "Policies", cls: "num hide-narrow" }], rows, "No namespaces yet: no services, policies or traffic.")),
      h("div", { class: "grid" },
        h("section", { class: "panel", "aria-labelledby": "cert-h" },
          h("h2", { id: "cert-h" }, "Certificate health"),
          h("dl", { class: "kv" },
            h("dt", {}, "Gateway certificate"), h("dd", {}, gw.not_after ? [expiryBadge(gw.not_after, 3600), " expires ", until(gw.not_after)] : badge("none", "bad")),
            h("dt", {}, "Identity"), h("dd", { class: "mono" }, gw.spiffe_id || "–"),
            h("dt", {}, "Signing chain"), h("dd", {}, expiryBadge(ca.signing_not_after, 30 * 86400), " expires ", until(ca.signing_not_after)),
            h("dt", {}, "Trusted roots"), h("dd", {}, String(ca.roots.length), ca.roots.length > 1 ? " (roll-over in progress)" : ""),
            h("dt", {}, "Revocations"), h("dd", {}, String(ca.active_revocations))),
          h("p", {}, h("a", { href: "#/certificates" }, "Certificates →"))),
        h("section", { class: "panel", "aria-labelledby": "lis-h" },
          h("h2", { id: "lis-h" }, "Listeners"),
          table(["Name", "Address"], status.listeners.map(([n, a]) => h("tr", {}, h("td", {}, n), h("td", { class: "mono" }, a))), "No data-plane listeners."))));
  });
}

// ---------- namespace ----------
function decidingText(port) {
  if (!port.deciding.length) return "Istio default (no policy applies)";
  return port.deciding.map((d) => `${d.scope}: ${d.namespace}/${d.name} → ${d.mode}`).join("; ");
}
function viewNamespace(name) {
  return guarded(name, "the namespace", async () => {
    const n = await api("GET", `/api/v1/namespaces/${encodeURIComponent(name)}`);
    const src = n.mode_source.policy ? `set by ${n.mode_source.scope} policy ${n.mode_source.policy.namespace}/${n.mode_source.policy.name}` : "Istio default: no policy sets it";
    const editable = !n.namespace_policy || n.namespace_policy.origin.type === "api";
    const modes = h("fieldset", { class: "modes" }, h("legend", {}, "Namespace mode"),
      ["STRICT", "PERMISSIVE", "DISABLE"].map((m) => h("label", {},
        h("input", { type: "radio", name: "mode", value: m, checked: m === n.mode }), h("span", {}, m))));
    const review = h("button", { type: "button", class: "primary", disabled: !editable }, "Review change…");
    review.addEventListener("click", () => {
      const chosen = modes.querySelector("input:checked").value;
      if (chosen === n.mode && n.mode_source.scope === "namespace") { toast(`${name} is already ${chosen}.`); return; }
      previewSwitch(name, chosen, review);
    });
    const svcRows = n.services.flatMap((s) => s.ports.map((p) => h("tr", {},
      h("td", { class: "mono" }, s.host), h("td", { class: "num" }, String(p.port)),
      h("td", { class: "hide-narrow" }, p.protocol), h("td", { class: "num hide-narrow" }, String(p.target_port)),
      h("td", {}, modeBadge(p.mode)), h("td", {}, decidingText(p)))));
    const clientRows = n.plaintext_clients.map((c) => h("tr", {},
      h("td", { class: "mono" }, c.address), h("td", {}, ago(c.last_seen)), h("td", { class: "num" }, String(c.count)), h("td", { class: "hide-narrow" }, ago(c.first_seen))));
    const polRows = n.policies.map((p) => h("tr", {},
      h("td", {}, p.kind), h("td", { class: "mono" }, p.name), h("td", {}, p.summary),
      h("td", {}, p.origin.type === "api" ? "API" : `file ${p.origin.path}`)));
    setView(name,
      h("p", {}, h("a", { href: "#/" }, "← Overview")),
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, `Namespace ${n.name} `, modeBadge(n.mode)), h("p", { class: "muted" }, src))),
      h("section", { class: "panel", "aria-labelledby": "mode-h" },
        h("h2", { id: "mode-h" }, "Change the mode"),
        h("p", { class: "hint" }, "Writes the namespace-wide PeerAuthentication. You will see which recently seen clients the change would cut off before anything changes."),
        editable ? null : h("p", { class: "form-error" }, `The namespace policy ${n.namespace_policy.name} comes from the policy file ${n.namespace_policy.origin.path}; change it there.`),
        modes, h("div", { class: "actions" }, review)),
      h("section", { class: "panel", "aria-labelledby": "svc-h" },
        h("h2", { id: "svc-h" }, "Services and ports"),
        table(["Host", { label: "Port", cls: "num" }, { label: "Protocol", cls: "hide-narrow" }, { label: "Target", cls: "num hide-narrow" }, "Mode", "Why"], svcRows, "No services of this namespace behind the gateway.")),
      h("section", { class: "panel", "aria-labelledby": "pc-h" },
        h("h2", { id: "pc-h" }, `Plaintext clients (last 15 minutes): ${n.plaintext_clients.length}`),
        table(["Client", "Last seen", { label: "Requests", cls: "num" }, { label: "First seen", cls: "hide-narrow" }], clientRows, "No plaintext clients seen in the last 15 minutes.")),
      h("section", { class: "panel", "aria-labelledby": "pol-h" },
        h("h2", { id: "pol-h" }, "Policies"),
        table(["Kind", "Name", "Summary", "Origin"], polRows, "No policies in this namespace.")));
  });
}

function openDialog(title, body, confirmLabel, onConfirm, opener) {
  const dlg = document.getElementById("dialog");
  document.getElementById("dialog-title").textContent = title;
  document.getElementById("dialog-body").replaceChildren(...[body].flat().filter((n) => n !== null && n !== undefined && n !== false));
  const old = document.getElementById("dialog-confirm");
  const confirm = old.cloneNode(false);
  confirm.textContent = confirmLabel;
  confirm.className = /^(Switch|Roll|Revoke|Delete)/.test(confirmLabel) ? "danger" : "primary";
  confirm.hidden = !onConfirm;
  old.replaceWith(confirm);
  if (onConfirm) confirm.addEventListener("click", async () => {
    confirm.disabled = true;
    try { await onConfirm(); dlg.close("confirm"); } catch (e) {
      document.getElementById("dialog-body").append(errorPanel(e));
    } finally { confirm.disabled = false; }
  });
  dlg.returnFocus = opener || document.activeElement;
  dlg.showModal(); // modal: focus stays inside, Esc closes
  document.getElementById("dialog-cancel").focus();
}

async function previewSwitch(ns, mode, opener) {
  opener.disabled = true;
  let p;
  try { p = await api("GET", `/api/v1/namespaces/${encodeURIComponent(ns)}/preview?mode=${mode}`); } catch (e) {
    opener.disabled = false;
    if (e.status !== 401) toast(e.message);
    return;
  }
  opener.disabled = false;
  const affectedRows = p.affected.map((a) => h("tr", {},
    h("td", { class: "mono" }, a.address),
    h("td", {}, a.transport === "plaintext" ? "plaintext" : a.transport === "tls" ? "TLS without certificate" : a.transport),
    h("td", { class: "mono" }, a.destinations_known ? a.destinations.join(", ") : "(namespace; not in recent log)"),
    h("td", {}, ago(a.last_seen)), h("td", { class: "num" }, String(a.count)), h("td", {}, a.reason)));
  const changeRows = p.changes.map((c) => h("tr", {}, h("td", { class: "mono" }, c.destination), h("td", {}, modeBadge(c.current_mode), " → ", modeBadge(c.new_mode))));
  const body = [
    h("p", {}, `Switch ${ns} from `, modeBadge(p.current_mode), " to ", modeBadge(p.mode), "."),
    p.traffic_recorded ? null : h("p", { class: "form-error" }, "No traffic is recorded (the data plane is not running), so the preview cannot name clients."),
    h("h3", { id: "aff-h" }, p.affected.length ? `${p.affected.length} client(s) would be cut off` : "No recently seen client would be cut off"),
    p.affected.length ? table(["Client", "Transport", "Destinations", "Last seen", { label: "Requests", cls: "num" }, "Reason"], affectedRows) :
      h("p", { class: "hint" }, `Based on traffic of the last ${Math.round(p.window_secs / 60)} minutes.`),
    h("h3", {}, "Ports whose mode changes"),
    table(["Destination", "Mode"], changeRows, "No port changes mode (a workload or port policy may override the namespace)."),
    p.unaffected_mtls_peers.length ? h("div", {}, h("h3", {}, "mTLS peers that keep working"),
      h("ul", {}, p.unaffected_mtls_peers.map((x) => h("li", { class: "mono" }, `${x.principal} → ${x.destinations.join(", ")}`)))) : null,
  ];
  openDialog(`Switch ${ns} to ${mode}?`, body, `Switch to ${mode}`, async () => {
    await api("PUT", `/api/v1/namespaces/${encodeURIComponent(ns)}/mode`, { mode });
    toast(`${ns} is now ${mode}.`);
    viewNamespace(ns);
  }, opener);
}

// ---------- policies ----------
const SAMPLE = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: bookinfo
spec:
  mtls:
    mode: STRICT
`;
function viewPolicies() {
  return guarded("Policies", "policies", async () => {
    const list = await api("GET", "/api/v1/policies");
    const ta = h("textarea", { id: "yaml", spellcheck: "false", autocapitalize: "off", autocomplete: "off", wrap: "off", "aria-describedby": "yaml-hint", "aria-label": "Policy YAML" });
    ta.value = sessionStorage.getItem("meshgate.editor") || SAMPLE;
    const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
    const errors = h("ul", { class: "errors", id: "yaml-errors", "aria-live": "polite" });
    let errorLines = new Set();
    const paint = () => {
      const n = ta.value.split("\n").length;
      const spans = [];
      for (let i = 1; i <= n; i++) spans.push(h("span", { class: errorLines.has(i) ? "err" : null, "data-line": i }, String(i)));
      gutter.replaceChildren(...spans);
      gutter.scrollTop = ta.scrollTop;
    };
    ta.addEventListener("input", () => { sessionStorage.setItem("meshgate.editor", ta.value); paint(); });
    ta.addEventListener("scroll", () => { gutter.scrollTop = ta.scrollTop; });
    const goto = (line) => {
      const lines = ta.value.split("\n");
      let pos = 0;
      for (let i = 0; i < line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
      ta.focus();
      ta.setSelectionRange(pos, pos + (lines[line - 1] || "").length);
      ta.scrollTop = Math.max(0, (line - 3) * parseFloat(getComputedStyle(ta).lineHeight || "20"));
    };
    const apply = h("button", { type: "button", class: "primary" }, "Apply");
    apply.addEventListener("click", async () => {
      apply.disabled = true;
      errors.replaceChildren();
      errorLines = new Set();
      try {
        const r = await api("POST", "/api/v1/policies?source=editor.yaml", ta.value, "application/yaml");
        toast(`Applied: ${r.changes.map((c) => `${c.kind} ${c.namespace}/${c.name} ${c.change}`).join(", ")} (generation ${r.generation})`);
        viewPolicies();
      } catch (e) {
        if (e.status === 401) return;
        const details = e.details.length ? e.details : [{ message: e.message }];
        errors.replaceChildren(h("li", {}, h("strong", {}, e.message)), ...details.map((d) => {
          if (d.line) errorLines.add(d.line);
          return h("li", { class: "yaml-error", "data-line": d.line || "" },
            d.line ? h("button", { type: "button", onclick: () => goto(d.line) }, `Line ${d.line}`) : null,
            detailText({ ...d, file: null, line: null, column: null }));
        }));
        paint();
      } finally { apply.disabled = false; }
    });
    const rows = list.items.map((p) => h("tr", {},
      h("td", {}, p.kind), h("td", { class: "mono" }, `${p.namespace}/${p.name}`), h("td", {}, p.summary),
      h("td", { class: "hide-narrow" }, p.origin.type === "api" ? "API" : `file ${p.origin.path}`),
      h("td", {},
        h("button", { type: "button", onclick: () => { ta.value = p.yaml; sessionStorage.setItem("meshgate.editor", ta.value); paint(); ta.focus(); } , "aria-label": `Edit ${p.kind} ${p.namespace}/${p.name}` }, "Edit"),
        p.origin.type === "api" ? h("button", { type: "button", class: "ghost", "aria-label": `Delete ${p.kind} ${p.namespace}/${p.name}`, onclick: (ev) => confirmDelete(p, ev.currentTarget) }, "Delete") : null)));
    setView("Policies",
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Policies"), h("p", { class: "muted" }, `Generation ${list.generation}`))),
      h("section", { class: "panel", "aria-labelledby": "ed-h" },
        h("h2", { id: "ed-h" }, "Apply Istio YAML"),
        h("p", { class: "hint", id: "yaml-hint" }, "PeerAuthentication and AuthorizationPolicy documents, separated by ---. All documents are applied together or not at all."),
        h("div", { class: "editor" }, gutter, ta), errors, h("div", { class: "actions" }, apply)),
      h("section", { class: "panel", "aria-labelledby": "pl-h" },
        h("h2", { id: "pl-h" }, "Policies in force"),
        table(["Kind", "Name", "Summary", { label: "Origin", cls: "hide-narrow" }, "Actions"], rows, "No policies: every port is PERMISSIVE (Istio's default).")));
    paint();
  });
}
function confirmDelete(p, opener) {
  openDialog(`Delete ${p.kind} ${p.namespace}/${p.name}?`, h("pre", { class: "mono" }, p.yaml), "Delete", async () => {
    await api("DELETE", `/api/v1/policies/${encodeURIComponent(p.kind)}/${encodeURIComponent(p.namespace)}/${encodeURIComponent(p.name)}`);
    toast(`Deleted ${p.namespace}/${p.name}.`);
    viewPolicies();
  }, opener);
}

// ---------- traffic ----------
function closeStream() { if (state.stream) { state.stream.close(); state.stream = null; } }
function peerOf(e) {
  if (e.transport === "plaintext") return h("span", {}, badge("plaintext", "warn"));
  if (e.principal && e.principal !== "-") return h("span", { class: "mono" }, e.principal);
  if (e.transport === "tls") return h("span", {}, "TLS, no certificate");
  return h("span", { class: "muted" }, e.transport);
}
function viewTraffic() {
  return guarded("Traffic", "connections", async () => {
    const first = await api("GET", "/api/v1/connections?limit=200");
    const tbody = h("tbody", {});
    const active = h("span", {}, String(first.active));
    const dot = h("span", { class: "live-dot off", "aria-hidden": "true" });
    const live = h("span", { id: "live-state" }, "connecting…");
    const filter = h("input", { type: "search", id: "traffic-filter", placeholder: "source, peer, destination…" });
    let paused = false;
    const pause = h("button", { type: "button", "aria-pressed": "false" }, "Pause");
    pause.addEventListener("click", () => { paused = !paused; pause.textContent = paused ? "Resume" : "Pause"; pause.setAttribute("aria-pressed", String(paused)); });
    const row = (e) => h("tr", { class: "conn" },
      h("td", { class: "hide-narrow" }, new Date(e.time).toLocaleTimeString()),
      h("td", { class: "mono" }, e.source), h("td", {}, peerOf(e)),
      h("td", { class: "mono" }, e.destination, e.method ? h("span", { class: "muted" }, ` ${e.method} ${e.path || ""}`) : null),
      h("td", {}, badge(e.decision, e.decision)), h("td", {}, e.reason, e.policy && e.policy !== "-" ? h("span", { class: "muted" }, ` (${e.policy})`) : null),
      h("td", { class: "num hide-narrow" }, e.status ? String(e.status) : "–"));
    const matches = (tr) => !filter.value || tr.textContent.toLowerCase().includes(filter.value.toLowerCase());
    const add = (e, atTop) => {
      const tr = row(e);
      tr.hidden = !matches(tr);
      if (atTop) tbody.prepend(tr); else tbody.append(tr);
      while (tbody.children.length > 500) tbody.lastChild.remove();
    };
    filter.addEventListener("input", () => { for (const tr of tbody.children) tr.hidden = !matches(tr); });
    first.entries.forEach((e) => add(e, false));
    const lagged = h("p", { class: "hint", role: "status" });
    setView("Traffic",
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Traffic"),
        h("p", { class: "muted" }, dot, live, " · open connections: ", active))),
      first.recording ? null : h("div", { class: "panel notice" }, "The data plane is not running in this process, so there is no traffic to show."),
      h("section", { class: "panel", "aria-labelledby": "tr-h" },
        h("h2", { id: "tr-h" }, "Connections and requests, newest first"),
        h("div", { class: "toolbar" }, h("label", { for: "traffic-filter", class: "sr" }, "Filter"), filter, pause), lagged,
        h("div", { class: "table-wrap" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Time", "Source", "Peer", "Destination", "Decision", "Reason", "Status"].map((x, i) => h("th", { scope: "col", class: i === 0 || i === 6 ? "hide-narrow" : null }, x)))),
          tbody))));
    // The list above came from /api/v1/connections; the stream adds only
    // what happens from now on (backlog=0).
    const es = new EventSource("/api/v1/connections/stream?backlog=0");
    state.stream = es;
    es.addEventListener("open", () => { dot.classList.remove("off"); live.textContent = "live"; });
    es.addEventListener("error", () => { dot.classList.add("off"); live.textContent = "reconnecting…"; });
    es.addEventListener("stats", (m) => { try { active.textContent = String(JSON.parse(m.data).active); } catch (_) { /* ignore */ } });
    es.addEventListener("lagged", (m) => { try { lagged.textContent = `Too busy to show everything: ${JSON.parse(m.data).missed} entries skipped.`; } catch (_) { /* ignore */ } });
    es.addEventListener("entry", (m) => {
      if (paused) return;
      try { add(JSON.parse(m.data), true); } catch (_) { /* ignore malformed */ }
    });
  });
}

// ---------- edge nodes ----------
function edgeUnavailable() {
  return h("div", { class: "panel notice", id: "edge-unavailable" },
    h("h2", {}, "Not available in this build"),
    h("p", {}, "This gateway runs without the edge-node server (its tunnel listener could not start, or the build does not include it), so edge nodes cannot be enrolled here. Nothing here is simulated."),
    h("p", { class: "hint" }, "A legacy Linux host can still be brought into the mesh with a certificate: ", h("code", {}, "meshgate cert issue --spiffe-id spiffe://cluster.local/ns/NS/sa/SA --out DIR"), "."));
}
function nodeState(n) {
  if (n.state === "revoked") return badge("revoked", "bad");
  if (n.state === "pending") return badge("waiting for enrollment", "warn");
  return n.connected ? badge("connected", "ok") : badge("offline", "plain");
}
function viewEdge() {
  return guarded("Edge nodes", "edge nodes", async () => {
    let list;
    try { list = await api("GET", "/api/v1/edge/nodes"); } catch (e) {
      if (e.status === 404) { setView("Edge nodes", h("div", { class: "page-head" }, h("h1", {}, "Edge nodes")), edgeUnavailable()); return; }
      throw e;
    }
    const ns = h("input", { type: "text", id: "edge-ns", required: true, value: "bookinfo", autocomplete: "off" });
    const name = h("input", { type: "text", id: "edge-name", required: true, placeholder: "plc-1", autocomplete: "off", "aria-describedby": "edge-name-hint" });
    const ttl = h("select", { id: "edge-ttl" },
      h("option", { value: "3600" }, "1 hour"), h("option", { value: "86400", selected: true }, "24 hours"), h("option", { value: "604800" }, "7 days"));
    const lport = h("input", { type: "text", id: "edge-lport", inputmode: "numeric", placeholder: "8080", autocomplete: "off" });
    const host = h("input", { type: "text", id: "edge-host", placeholder: "details.bookinfo.svc.cluster.local", autocomplete: "off" });
    const sport = h("input", { type: "text", id: "edge-port", inputmode: "numeric", placeholder: "9080", autocomplete: "off" });
    const formErr = h("p", { class: "form-error", role: "alert" });
    const result = h("div", { "aria-live": "polite" });
    const submit = h("button", { type: "submit", class: "primary" }, "Create token");
    const form = h("form", { class: "panel", "aria-labelledby": "new-h", onsubmit: async (ev) => {
      ev.preventDefault();
      formErr.textContent = "";
      const body = { namespace: ns.value.trim(), name: name.value.trim(), ttlSeconds: Number(ttl.value) };
      if (lport.value || host.value || sport.value) {
        const rule = { listenPort: Number(lport.value), host: host.value.trim(), port: Number(sport.value) };
        if (!rule.listenPort || !rule.host || !rule.port) { formErr.textContent = "A forwarding rule needs a local port, a service host and a service port."; return; }
        body.listeners = [rule];
      }
      submit.disabled = true;
      try {
        const r = await api("POST", "/api/v1/edge/nodes", body);
        const tokenField = h("input", { type: "text", id: "edge-token", readonly: true, value: r.token, class: "mono", "aria-describedby": "edge-token-hint" });
        const copy = h("button", { type: "button" }, "Copy");
        copy.addEventListener("click", async () => {
          tokenField.select();
          try { await navigator.clipboard.writeText(r.token); toast("Token copied."); } catch (_) { toast("Copy failed: select the token and copy it by hand."); }
        });
        result.replaceChildren(h("div", { class: "panel notice" },
          h("h3", {}, `Enrollment token for ${r.node.namespace}/${r.node.name}`),
          h("label", { for: "edge-token" }, "One-time token"),
          h("div", { class: "token-box" }, tokenField, copy),
          h("p", { class: "hint", id: "edge-token-hint" }, `Shown only now. Give it to the node with its tunnel address ${r.tunnelAddress}; it expires ${until(r.node.tokenExpiresAt)}.`)));
        tokenField.focus();
        tokenField.select();
        refresh();
      } catch (e) {
        if (e.status !== 401) formErr.textContent = e.message;
      } finally { submit.disabled = false; }
    } },
    h("h2", { id: "new-h" }, "Enroll a node"),
    h("div", { class: "grid" },
      h("div", { class: "field" }, h("label", { for: "edge-ns" }, "Namespace"), ns),
      h("div", { class: "field" }, h("label", { for: "edge-name" }, "Node name"), name, h("p", { class: "hint", id: "edge-name-hint" }, "Its identity will be spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/NAME.")),
      h("div", { class: "field" }, h("label", { for: "edge-ttl" }, "Token valid for"), ttl)),
    h("fieldset", { class: "plain-fieldset" }, h("legend", {}, "Forwarding rule (optional): legacy clients connecting to the node's local port reach a mesh service"),
      h("div", { class: "grid" },
        h("div", { class: "field" }, h("label", { for: "edge-lport" }, "Node port"), lport),
        h("div", { class: "field" }, h("label", { for: "edge-host" }, "Service host"), host),
        h("div", { class: "field" }, h("label", { for: "edge-port" }, "Service port"), sport))),
    formErr, h("div", { class: "actions" }, submit), result);
    const tableHolder = h("div", {});
    const renderNodes = (nodes) => {
      const rows = nodes.map((n) => h("tr", { class: "node" },
        h("td", {}, h("strong", {}, n.name), h("div", { class: "muted" }, n.namespace)),
        h("td", {}, nodeState(n), n.live ? h("div", { class: "muted" }, `${n.live.remote}, seen ${ago(n.live.lastSeen)}`) : null),
        h("td", {}, n.certNotAfter ? [expiryBadge(n.certNotAfter, 3600), " ", until(n.certNotAfter)] : n.tokenExpiresAt ? `token expires ${until(n.tokenExpiresAt)}` : "–"),
        h("td", { class: "mono hide-narrow" }, n.listeners.map((l) => `:${l.listenPort} → ${l.host}:${l.port}`).join(", ") || "–"),
        h("td", {}, n.state === "revoked" ? h("span", { class: "muted" }, n.revokedReason || "revoked") :
          h("button", { type: "button", class: "ghost", "aria-label": `Revoke ${n.name}`, onclick: (ev) => confirmRevokeNode(n, ev.currentTarget, refresh) }, "Revoke"))));
      tableHolder.replaceChildren(table(["Node", "Status", "Certificate", { label: "Forwarding", cls: "hide-narrow" }, "Actions"], rows, "No edge nodes yet."));
    };
    async function refresh() {
      try { renderNodes((await api("GET", "/api/v1/edge/nodes")).nodes); } catch (e) { if (e.status !== 401) tableHolder.replaceChildren(errorPanel(e, refresh)); }
    }
    renderNodes(list.nodes);
    setView("Edge nodes",
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Edge nodes"), h("p", { class: "muted" }, `Nodes connect to the tunnel at ${list.tunnel_address}`))),
      form,
      h("section", { class: "panel", "aria-labelledby": "nodes-h" }, h("h2", { id: "nodes-h" }, "Nodes"), tableHolder));
  });
}
function confirmRevokeNode(n, opener, done) {
  const reason = h("input", { type: "text", id: "node-reason", value: "revoked from the admin UI" });
  openDialog(`Revoke edge node ${n.name}?`, [
    h("p", {}, `Its certificate is revoked at the CA, its tunnel closes and it can no longer reconnect as ${n.spiffeId}.`),
    h("div", { class: "field" }, h("label", { for: "node-reason" }, "Reason"), reason)],
  "Revoke", async () => {
    await api("POST", `/api/v1/edge/nodes/${encodeURIComponent(n.name)}/revoke`, { reason: reason.value });
    toast(`${n.name} revoked.`);
    done();
  }, opener);
}

// ---------- certificates ----------
function viewCertificates() {
  return guarded("Certificates", "certificates", async () => {
    const [ca, certs] = await Promise.all([api("GET", "/api/v1/ca"), api("GET", "/api/v1/certificates")]);
    const gw = certs.gateway;
    const rotate = h("button", { type: "button" }, "Re-issue now");
    rotate.addEventListener("click", async () => {
      rotate.disabled = true;
      try { await api("POST", "/api/v1/identity/rotate"); toast("Re-issue requested; the new certificate is used by new handshakes."); setTimeout(viewCertificates, 1200); }
      catch (e) { if (e.status !== 401) toast(e.message); } finally { rotate.disabled = false; }
    });
    const roll = h("button", { type: "button", class: "danger" }, "Roll the root…");
    roll.addEventListener("click", () => openDialog("Roll the root CA?",
      [h("p", {}, "A new root is generated and trusted next to the current one while the current one keeps signing (phase 1). After the propagation period signing switches to the new root and the gateway's certificate is re-issued (phase 2). The old root stays trusted until nothing it signed is still valid, so clients keep working throughout."),
        h("p", { class: "hint" }, "Clients outside the gateway must pick up the new trust bundle before the old root is dropped.")],
      "Roll the root", async () => { await api("POST", "/api/v1/ca/rotate-root", { force: false }); toast("Root roll-over started: both roots trusted; signing switches after the propagation period."); viewCertificates(); }, roll));
    const rootRows = ca.roots.map((r) => h("tr", {},
      h("td", {}, r.id, r.signing ? [" ", badge("signing", "ok")] : null),
      h("td", { class: "mono hide-narrow" }, r.fingerprint_sha256.slice(0, 23) + "…"),
      h("td", {}, expiryBadge(r.not_after, 180 * 86400), " ", until(r.not_after)),
      h("td", { class: "hide-narrow" }, r.origin),
      h("td", { class: "num" }, `${r.valid_leaves} / ${r.issued_count}`),
      h("td", {}, r.drop_status)));
    const issuedRows = certs.issued.map((c) => h("tr", {},
      h("td", { class: "mono" }, c.spiffe_id), h("td", { class: "mono hide-narrow" }, c.serial.slice(0, 16)),
      h("td", {}, until(c.not_after)), h("td", { class: "hide-narrow" }, c.root_id),
      // The gateway's own certificate is replaced with "Re-issue now", not
      // revoked: revoking it would cut every client off.
      h("td", {}, c.spiffe_id === gw.spiffe_id ? h("span", { class: "muted" }, "gateway") :
        h("button", { type: "button", class: "ghost", "aria-label": `Revoke certificate ${c.serial} of ${c.spiffe_id}`, onclick: (ev) => confirmRevoke(c, ev.currentTarget) }, "Revoke"))));
    setView("Certificates",
      h("div", { class: "page-head" }, h("h1", {}, "Certificates"), h("div", { class: "actions" }, roll)),
      h("div", { class: "grid" },
        h("section", { class: "panel", "aria-labelledby": "gw-h" },
          h("h2", { id: "gw-h" }, "Gateway certificate"),
          h("dl", { class: "kv" },
            h("dt", {}, "Identity"), h("dd", { class: "mono" }, gw.spiffe_id || "–"),
            h("dt", {}, "Expires"), h("dd", {}, gw.not_after ? [expiryBadge(gw.not_after, 3600), " ", until(gw.not_after)] : "–")),
          h("p", { class: "hint" }, "Renewed automatically before expiry and swapped in without a restart."),
          h("div", { class: "actions" }, rotate)),
        h("section", { class: "panel", "aria-labelledby": "ca-h" },
          h("h2", { id: "ca-h" }, "Certificate authority"),
          h("dl", { class: "kv" },
            h("dt", {}, "Trust domain"), h("dd", { class: "mono" }, ca.trust_domain),
            h("dt", {}, "Signing root"), h("dd", {}, ca.signing_root),
            h("dt", {}, "Signing chain expires"), h("dd", {}, expiryBadge(ca.signing_not_after, 30 * 86400), " ", until(ca.signing_not_after)),
            h("dt", {}, "Revocations"), h("dd", {}, String(ca.active_revocations)),
            ca.rollover ? [h("dt", {}, "Root roll-over"), h("dd", {}, ca.rollover.description)] : null))),
      h("section", { class: "panel", "aria-labelledby": "roots-h" },
        h("h2", { id: "roots-h" }, "Trusted roots"),
        table(["Root", { label: "SHA-256", cls: "hide-narrow" }, "Expiry", { label: "Origin", cls: "hide-narrow" }, { label: "Valid / issued", cls: "num" }, "Status"], rootRows)),
      h("section", { class: "panel", "aria-labelledby": "iss-h" },
        h("h2", { id: "iss-h" }, `Issued certificates still valid: ${certs.issued.length}`),
        table(["Identity", { label: "Serial", cls: "hide-narrow" }, "Expires", { label: "Root", cls: "hide-narrow" }, "Actions"], issuedRows, "None.")),
      certs.revocations.length ? h("section", { class: "panel" }, h("h2", {}, "Revocations"),
        table(["Target", "Kept until", "Reason"], certs.revocations.map((r) => h("tr", {}, h("td", { class: "mono" }, r.target), h("td", {}, r.keep_until), h("td", {}, r.reason))))) : null);
  });
}

function confirmRevoke(c, opener) {
  const reason = h("input", { type: "text", id: "revoke-reason", value: "revoked from the admin UI" });
  openDialog(`Revoke the certificate of ${c.spiffe_id}?`, [
    h("p", {}, `Serial ${c.serial}. New handshakes with it are refused at once and its open connections are closed.`),
    h("div", { class: "field" }, h("label", { for: "revoke-reason" }, "Reason"), reason)],
  "Revoke", async () => {
    await api("POST", "/api/v1/revocations", { serial: c.serial, reason: reason.value });
    toast(`Revoked serial ${c.serial.slice(0, 16)}…`);
    viewCertificates();
  }, opener);
}

// ---------- audit ----------
function viewAudit() {
  return guarded("Audit log", "the audit log", async () => {
    let data;
    try { data = await api("GET", "/api/v1/audit?limit=200"); } catch (e) {
      if (e.status === 503) {
        setView("Audit log", h("h1", {}, "Audit log"), h("div", { class: "panel notice" }, h("h2", {}, "Not available in this build"), h("p", {}, e.message)));
        return;
      }
      throw e;
    }
    const rows = data.entries.map((e) => h("tr", {},
      h("td", {}, h("time", { datetime: e.time, title: e.time }, ago(e.time))), h("td", {}, e.actor), h("td", {}, e.action),
      h("td", { class: "mono hide-narrow" }, e.key), h("td", {}, e.note)));
    setView("Audit log", h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Audit log"),
      h("p", { class: "muted" }, `${data.total} change(s) recorded; showing the newest ${data.entries.length}.`))),
      h("section", { class: "panel" }, table(["Time", "Actor", "Action", { label: "Record", cls: "hide-narrow" }, "Note"], rows, "No changes recorded.")));
  });
}

document.addEventListener("DOMContentLoaded", boot);

"""
The Orchestrator's status page, for the people who run it: projects, their
relays (owner, age, last registration, what they forwarded here), members
and their attributes, enrollment codes and API tokens outstanding,
instances and project leases; it refreshes itself every two seconds.

Two routes of the Orchestrator's HTTP server:

  - C{GET /v0/status} (behind the bearer tokens, as the rest of C{/v0}):
    L{snapshot}, everything the page shows, as JSON;
  - C{GET /status}: the page itself (L{page}), one HTML document with its
    script and style inline (no framework, nothing fetched from elsewhere;
    a Content-Security-Policy allows exactly them).  It holds no data: it
    asks for the token (a sign-in form, or C{#token=...} in the address,
    which never reaches the server) and reads C{/v0/status} with it.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Dict, List, Optional

from twisted.logger import Logger

log = Logger(namespace="ockamtw.orchestrator.status")

#: Seconds between the page's refreshes.
REFRESH_SECONDS = 2


async def snapshot(orchestrator) -> Dict[str, Any]:
    """
    What the status page shows, from the store (shared by every instance)
    and from this instance's project runtimes (what their project nodes
    hold now).
    """
    store = orchestrator.store
    now = store.now()
    await orchestrator.refresh_space_names()
    leases = await _optional(_leases(store), "leases")
    projects = []
    for row in await store.projects():
        project_id = row["id"]
        runtime = orchestrator.runtimes.get(project_id)
        node = getattr(runtime, "project", None)
        relays = await store.relays(project_id)
        for relay in relays:
            relay.update(_forwarder(node, relay["name"]))
        members = [m for m in await store.members(project_id) if m.get("revoked_at") is None]
        tickets = await _optional(store.tickets(project_id), "tickets") if hasattr(store, "tickets") else None
        projects.append({
            "id": project_id,
            "name": row["name"],
            "space_name": orchestrator.space_names.get(row["space_id"]),
            "state": row.get("state"),
            "served_here": runtime is not None,
            "connections": len(node.tcp.connections) if node is not None else None,
            "lease": (leases or {}).get(project_id),
            "relays": relays,
            "members": members,
            "tickets": tickets,
        })
    return {
        "now": now,
        "instance": {"id": orchestrator.instance_id, "url": getattr(orchestrator, "url", None)},
        "instances": await _optional(_instances(orchestrator), "instances"),
        "projects": projects,
        "tokens": await _optional(_tokens(store, now), "tokens"),
        "refresh": REFRESH_SECONDS,
    }


async def _optional(d, what: str):
    """
    The result of C{d}, or C{None} when the store cannot give it (a
    section the page then shows as unavailable, rather than no page).
    """
    try:
        return await d
    except Exception as e:
        log.warn("status: {what} unavailable: {error}", what=what, error=str(e))
        return None


def _forwarder(node, name: str) -> Dict[str, Any]:
    """
    What this instance's project node knows of relay C{name}: whether its
    forwarder is there and its owner connected, and how many messages it
    forwarded.
    """
    if node is None:
        return {"up": None, "forwarded": None}
    from ..routing import Address

    worker = node.worker_at(Address.local(f"forward_to_{name}"))
    if worker is None:
        return {"up": False, "forwarded": 0}
    return {"up": bool(getattr(worker, "alive", True)), "forwarded": getattr(worker, "forwarded", 0)}


async def _tokens(store, now: float) -> List[Dict[str, Any]]:
    rows = await store.query(
        "SELECT label, scope, identifier, created_at, expires_at, last_used FROM tokens "
        "WHERE revoked_at IS NULL ORDER BY created_at"
    )
    keys = ("label", "scope", "identifier", "created_at", "expires_at", "last_used")
    return [dict(zip(keys, row)) for row in rows if row[4] is None or row[4] > now]


async def _instances(orchestrator) -> List[Dict[str, Any]]:
    """
    The instances that share the database (L{Store.instances}): id, HTTP
    URL, when started and last seen, alive, how many projects each serves.
    """
    rows = await orchestrator.store.instances(orchestrator.settings.lease_ttl)
    keys = ("id", "http_url", "advertise_host", "started_at", "last_seen", "alive", "projects")
    return [{k: row.get(k) for k in keys} for row in rows]


async def _leases(store) -> Dict[str, Dict[str, Any]]:
    rows = await store.query("SELECT project_id, owner, lease_until FROM project_owner")
    return {p: {"owner": o, "until": u} for p, o, u in rows}


# --- the page ------------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
table { border-collapse: collapse; margin: .2em 0 .8em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.id { font-family: monospace; font-size: 12px; }
.muted { color: #777; }
.bad { color: #b00; }
.good { color: #070; }
#signin { max-width: 40em; }
#signin input { width: 100%; font-family: monospace; padding: .3em; margin: .4em 0; }
section.project { border-top: 2px solid #ddd; padding-top: .3em; }
"""

_SCRIPT = """
"use strict";
const KEY = "ockamtw-orchestrator-token";
let timer = null;
function $(id) { return document.getElementById(id); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c === null || c === undefined ? "" : c);
  return e;
}
function ago(now, t) {
  if (t === null || t === undefined) return "-";
  const s = Math.max(0, Math.round(now - t));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}
function until(now, t) {
  if (t === null || t === undefined) return "never";
  const s = Math.round(t - now);
  if (s <= 0) return "expired";
  return "in " + (s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h");
}
function short(id) { return id ? id.slice(0, 12) + "\\u2026" : "-"; }
function attrs(a) { return Object.entries(a || {}).map(([k, v]) => k + "=" + v).join(", "); }
function table(name, heads, rows) {
  const t = el("table", {"data-table": name});
  t.append(el("tr", {}, ...heads.map(h => el("th", {}, h))));
  if (rows.length === 0) t.append(el("tr", {}, el("td", {colspan: heads.length, class: "muted"}, "none")));
  for (const r of rows) t.append(el("tr", {"data-row": name}, ...r.map(c => c instanceof Node ? el("td", {}, c) :
    el("td", {}, c === null || c === undefined ? "-" : String(c)))));
  return t;
}
function idcell(id) { const s = el("span", {title: id || "", "data-id": id || ""}, short(id)); return s; }
function render(s) {
  const now = s.now;
  const out = $("status");
  out.replaceChildren();
  out.append(el("p", {class: "muted", id: "updated"},
    "Instance " + s.instance.id + (s.instance.url ? " at " + s.instance.url : "") +
    "; updated " + new Date().toLocaleTimeString() + "."));
  out.append(el("h2", {}, "Instances"));
  out.append(s.instances === null ? el("p", {class: "muted"}, "unavailable") :
    table("instances", ["instance", "HTTP", "started", "last seen", "alive", "projects"],
      s.instances.map(i => [i.id + (i.id === s.instance.id ? " (this one)" : ""), i.http_url, ago(now, i.started_at),
        ago(now, i.last_seen), i.alive ? "yes" : "no", i.projects])));
  out.append(el("h2", {}, "Projects (" + s.projects.length + ")"));
  for (const p of s.projects) {
    const sec = el("section", {class: "project", "data-project": p.name});
    sec.append(el("h3", {}, "Project " + p.name + " ",
      el("span", {class: "muted"}, "(" + p.id + ", space " + (p.space_name || "-") + ", " + (p.state || "-") + ")")));
    const lease = p.lease ? "leased by " + p.lease.owner + ", " + until(now, p.lease.until) : "no lease";
    sec.append(el("p", {}, (p.served_here ? "Served by this instance, " + p.connections +
      (p.connections === 1 ? " connection" : " connections") + " to its project node; " :
      "Not served by this instance; ") + lease + "."));
    sec.append(table("relays", ["relay", "owner", "age", "last registration", "forwarded here", "up here"],
      p.relays.map(r => [r.name, idcell(r.owner), ago(now, r.created_at), ago(now, r.last_registered_at),
        r.forwarded, r.up === null ? "-" : (r.up ? "yes" : "no")])));
    sec.append(table("members", ["member", "attributes", "added", "added by"],
      p.members.map(m => [idcell(m.identifier), attrs(m.attributes), ago(now, m.added_at), idcell(m.added_by)])));
    if (p.tickets !== null)
      sec.append(table("tickets", ["enrollment code", "uses left", "expires", "attributes"],
        p.tickets.map((t, i) => ["#" + (i + 1) + " by " + short(t.created_by), t.uses_left, until(now, t.expires_at),
          attrs(t.attributes)])));
    out.append(sec);
  }
  out.append(el("h2", {}, "API tokens outstanding"));
  out.append(s.tokens === null ? el("p", {class: "muted"}, "unavailable") :
    table("tokens", ["label", "scope", "identity", "created", "expires", "last used"],
      s.tokens.map(t => [t.label, t.scope, idcell(t.identifier), ago(now, t.created_at), until(now, t.expires_at),
        ago(now, t.last_used)])));
}
function signedOut(message) {
  if (timer) { clearTimeout(timer); timer = null; }
  $("status").replaceChildren();
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("error").textContent = message || "";
}
async function refresh() {
  timer = null;
  const token = sessionStorage.getItem(KEY);
  if (!token) return signedOut("");
  let response;
  try {
    response = await fetch("/v0/status", {headers: {"Authorization": "Bearer " + token}, cache: "no-store"});
  } catch (e) {
    $("error").textContent = "The Orchestrator did not answer: " + e;
    timer = setTimeout(refresh, 2000);
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    return signedOut((body.error && body.error.message) || "That token was refused.");
  }
  if (!response.ok) {
    $("error").textContent = (body.error && body.error.message) || ("HTTP " + response.status);
  } else {
    $("signin").hidden = true;
    $("signout").hidden = false;
    $("error").textContent = "";
    render(body);
  }
  timer = setTimeout(refresh, 1000 * ((body && body.refresh) || 2));
}
function signIn(token) {
  $("token").value = "";
  sessionStorage.setItem(KEY, token.trim());
  refresh();
}
document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", ev => { ev.preventDefault(); signIn($("token").value); });
  $("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); signedOut("Signed out."); });
  const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (m) { history.replaceState(null, "", location.pathname); signIn(decodeURIComponent(m[1])); }
  else refresh();
});
"""

_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Orchestrator status</title>
<style>{style}</style>
</head>
<body>
<h1>Orchestrator status <button id="signout" type="button" hidden>Sign out</button></h1>
<form id="signin">
<p>Sign in with an API token of this Orchestrator (its administrator's token is in
<code>DATA/admin.token</code>; <code>POST /v0/tokens</code> makes more).</p>
<input id="token" name="token" type="password" autocomplete="off" placeholder="otw_...">
<button type="submit">Sign in</button>
</form>
<p id="error" class="bad" role="alert"></p>
<div id="status"></div>
<script>{script}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


PAGE = _HTML.format(style=_STYLE, script=_SCRIPT).encode("utf-8")

#: Exactly the page's own script and style, and requests to this server.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def page(request) -> Optional[dict]:
    """
    The route handler of C{GET /status}: writes the page to the raw
    twisted.web request and finishes it (the router then writes nothing).
    """
    raw = request.raw
    raw.setResponseCode(200)
    raw.setHeader(b"content-type", b"text/html; charset=utf-8")
    raw.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode())
    raw.setHeader(b"cache-control", b"no-store")
    raw.setHeader(b"x-content-type-options", b"nosniff")
    raw.setHeader(b"referrer-policy", b"no-referrer")
    raw.write(PAGE)
    raw.finish()
    return None

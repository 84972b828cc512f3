// The dashboard page: renders the snapshots /api/v1/dashboard/stream sends (server-sent events), and a job's
// page. Every string from the network is put in with textContent (el() below), never as markup.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  const q = token ? "?token=" + encodeURIComponent(token) : "";
  const auth = token ? { Authorization: "Bearer " + token } : {};
  const $ = (id) => document.getElementById(id);
  const mode = document.body.dataset.mode;
  let unit = "minute";
  let last = null;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, String(v));
    }
    for (const kid of kids) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return e;
  }
  // peer ids share their first characters (12D3KooW...): the start and the end tell them apart
  const short = (id) => { const s = String(id || ""); return s.length > 16 ? s.slice(0, 6) + "…" + s.slice(-6) : s; };
  const iso = (t) => new Date(t * 1000).toISOString().replace(".000", "").replace("T", " ");
  const jobHref = (id) => "/dashboard/jobs/" + encodeURIComponent(id) + q;
  const bytes = (n) => n >= 2 ** 30 ? (n / 2 ** 30).toFixed(1) + " GiB" : (n / 2 ** 20).toFixed(0) + " MiB";

  function table(id, head, rows) {
    const t = $(id);
    t.replaceChildren(el("tr", {}, ...head.map((h) => el("th", {}, h))), ...rows);
  }

  function meter(used, total) {
    const pct = total > 0 ? Math.min(100, Math.round((100 * used) / total)) : 0;
    const m = el("span", { class: "meter", title: pct + "% used" });
    const fill = el("span");
    fill.style.width = pct + "%";
    m.append(fill);
    return m;
  }

  function renderChart(series) {
    const box = $("chart");
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    const w = 1000, h = 160, pad = 18;
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const max = Math.max(1, ...series.map((b) => b.jobs));
    const bw = series.length ? (w - 10) / series.length : 0;
    series.forEach((b, i) => {
      for (const [kind, value] of [["jobs", b.jobs], ["failed", b.failed]]) {
        const r = document.createElementNS(ns, "rect");
        const bh = ((h - pad - 4) * value) / max;
        r.setAttribute("class", kind);
        r.setAttribute("x", String(5 + i * bw + (kind === "failed" ? bw * 0.45 : 0)));
        r.setAttribute("width", String(Math.max(1, bw * (kind === "failed" ? 0.35 : 0.8))));
        r.setAttribute("y", String(h - pad - bh));
        r.setAttribute("height", String(bh));
        const title = document.createElementNS(ns, "title");
        title.textContent = `${b.label}: ${b.jobs} created, ${b.completed} completed, ${b.failed} failed`;
        r.append(title);
        svg.append(r);
      }
    });
    for (const [i, anchor] of [[0, "start"], [series.length - 1, "end"]]) {
      if (i < 0 || !series.length) continue;
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", anchor === "start" ? "5" : String(w - 5));
      t.setAttribute("y", String(h - 4));
      t.setAttribute("text-anchor", anchor);
      t.textContent = series[i].label;
      svg.append(t);
    }
    box.replaceChildren(svg);
    box.dataset.buckets = String(series.length);
    box.dataset.total = String(series.reduce((s, b) => s + b.jobs, 0));
  }

  const DIMS = [["engine", "By engine"], ["image", "By image or module"], ["state", "By state"],
                ["node", "By node"], ["label", "By label"], ["reason", "Failure reasons"]];

  function renderBreakdowns(b) {
    const host = $("breakdowns");
    host.replaceChildren(...DIMS.map(([dim, title]) => {
      const rows = b[dim] || [];
      const max = Math.max(1, ...rows.map((r) => r.count));
      const bar = (n) => { const s = el("span", { class: "bar" }); s.style.width = Math.round((60 * n) / max) + "px"; return s; };
      return el("div", { class: "panel", id: "b-" + dim }, el("h2", {}, title),
        el("table", {}, ...rows.map((r) =>
          el("tr", { "data-key": r.key }, el("td", {}, dim === "node" ? short(r.key) : r.key),
             el("td", { class: "num" }, r.count), el("td", {}, bar(r.count))))));
    }));
  }

  function render(s) {
    last = s;
    for (const [k, v] of Object.entries(s.summary)) { const t = $("t-" + k); if (t) t.textContent = String(v); }
    renderChart(s.timeseries[unit] || []);
    renderBreakdowns(s.breakdowns);
    table("durations", ["engine", "completed", "p50", "p95"], Object.entries(s.durations).map(([e, d]) =>
      el("tr", { "data-engine": e }, el("td", {}, e), el("td", { class: "num" }, d.count),
         el("td", { class: "num" }, d.p50 + " s"), el("td", { class: "num" }, d.p95 + " s"))));
    const now = Date.now() / 1000;
    table("nodes", ["node", "types", "engines", "CPU used", "memory used", "running", "last seen"], s.nodes.map((n) =>
      el("tr", { "data-node": n.node_id },
         el("td", { title: n.node_id }, short(n.node_id) + (n.node_id === s.node_id ? " (this node)" : "")),
         el("td", {}, (n.node_types || []).join(", ")), el("td", {}, (n.engines || []).join(", ")),
         el("td", {}, n.cpu_total ? meter(n.cpu_total - n.cpu_free, n.cpu_total) : "",
            n.cpu_total ? ` ${(n.cpu_total - n.cpu_free).toFixed(1)} of ${n.cpu_total} (${n.cpu_free} free)` : ""),
         el("td", {}, n.memory_total ? meter(n.memory_total - n.memory_free, n.memory_total) : "",
            n.memory_total ? ` ${bytes(n.memory_total - n.memory_free)} of ${bytes(n.memory_total)}` : ""),
         el("td", { class: "num" }, n.running ?? ""),
         el("td", {}, Math.max(0, Math.round(now - n.last_seen)) + " s ago"))));
    table("latest", ["job", "state", "engine", "image or module", "labels", "requester", "created", "result"],
      s.latest.map((j) => el("tr", { "data-job": j.id, "data-state": j.state },
        el("td", {}, el("a", { href: jobHref(j.id) }, short(j.id))),
        el("td", { class: "state-" + j.state, title: j.reason }, j.state),
        el("td", {}, j.engine), el("td", {}, j.image),
        el("td", {}, Object.entries(j.labels).map(([k, v]) => k + "=" + v).join(", ")),
        el("td", { title: j.requester }, short(j.requester)), el("td", {}, iso(j.created_at)),
        el("td", {}, j.result_cid ? el("code", {}, j.result_cid) : ""))));
    document.body.dataset.rendered = String((Number(document.body.dataset.rendered) || 0) + 1);
  }

  function live(onSnapshot) {
    const es = new EventSource("/api/v1/dashboard/stream" + q);
    es.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
    es.onopen = () => { $("live").textContent = "live"; $("live").classList.add("on"); };
    es.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.remove("on"); };
  }

  async function getJSON(path) {
    const r = await fetch(path, { headers: auth });
    if (!r.ok) return null;
    return r.json();
  }

  async function amplify() {
    // the Amplify workflows' API, where this node has it; the panel stays hidden otherwise
    const head = await fetch("/api/v1/amplify/runs", { headers: auth, method: "GET" }).catch(() => null);
    if (!head || !head.ok || !(head.headers.get("content-type") || "").includes("json")) return;
    const body = await head.json();
    const runs = Array.isArray(body) ? body : (body.runs || body.items || []);
    $("amplify").hidden = false;
    const boxes = [];
    for (const run of runs.slice(0, 20)) {
      const id = run.id || run.run_id || "";
      const full = (await getJSON("/api/v1/amplify/runs/" + encodeURIComponent(id))) || run;
      const nodes = full.nodes || full.graph || [];
      const list = Array.isArray(nodes) ? nodes : Object.entries(nodes).map(([k, v]) => ({ id: k, ...v }));
      boxes.push(el("div", { class: "panel", "data-run": id },
        el("h3", {}, `run ${short(id)} · ${full.state || ""}`),
        el("table", {}, ...list.map((n) => el("tr", {},
          el("td", {}, n.id || n.node_id || n.name || ""), el("td", {}, (n.parents || n.inputs || []).join?.(", ") || ""),
          el("td", { class: "state-" + (n.state || "") }, n.state || ""),
          el("td", {}, n.job_id ? el("a", { href: jobHref(n.job_id) }, short(n.job_id)) : ""))))));
    }
    $("amplify-runs").replaceChildren(...boxes);
    $("lineage-go").addEventListener("click", async () => {
      const cid = $("lineage-cid").value.trim();
      const out = await getJSON("/api/v1/amplify/lineage/" + encodeURIComponent(cid));
      $("lineage-out").textContent = out ? JSON.stringify(out, null, 2) : "no lineage for " + cid;
    });
  }

  // -- a job's page ---------------------------------------------------------------------------------------

  let logsOpen = false;

  function follow(jobId) {
    logsOpen = true;
    $("job-logs-panel").hidden = false;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/jobs/${encodeURIComponent(jobId)}/logs` +
                             "?follow=1" + (token ? "&token=" + encodeURIComponent(token) : ""));
    ws.binaryType = "arraybuffer";
    const text = new TextDecoder();
    $("job-logs-state").textContent = "following…";
    ws.onmessage = (m) => {
      if (typeof m.data === "string") {
        const msg = JSON.parse(m.data);
        if (msg.type === "end") $("job-logs-state").textContent = `ended: ${msg.state}` +
          (msg.exit_code != null ? `, exit code ${msg.exit_code}` : "") + (msg.reason ? ` (${msg.reason})` : "");
        else if (msg.type === "execution") $("job-logs-state").textContent = "following execution on node " + short(msg.node_id);
        return;
      }
      const view = new DataView(m.data);
      let at = 0;
      while (at + 13 <= view.byteLength) {
        const kind = view.getUint8(at), len = view.getUint32(at + 9);
        const data = new Uint8Array(m.data, at + 13, len);
        at += 13 + len;
        if (kind === 1) $("job-stdout").append(text.decode(data));
        else if (kind === 2) $("job-stderr").append(text.decode(data));
      }
    };
    ws.onclose = () => { if (!/ended/.test($("job-logs-state").textContent)) $("job-logs-state").textContent = "closed"; };
  }

  async function renderJob() {
    const jobId = document.body.dataset.job;
    const row = await getJSON("/api/v1/dashboard/jobs/" + encodeURIComponent(jobId));
    if (!row) { $("job-where").textContent = "The network has not told this node of this job (yet)."; return; }
    const info = [["id", row.id], ["state", row.state], ["reason", row.reason], ["engine", row.engine],
      ["image or module", row.image], ["labels", Object.entries(row.labels).map(([k, v]) => k + "=" + v).join(", ")],
      ["requester", row.requester], ["created", iso(row.created_at)], ["updated", iso(row.updated_at)],
      ["result CID", row.result_cid]];
    $("job-info").replaceChildren(...info.map(([k, v]) => el("tr", { "data-field": k }, el("th", {}, k), el("td", {}, v))));
    $("job-info").dataset.state = row.state;
    let execs = row.executions.map((x) => ({ node_id: x.node_id, state: x.state, id: "", reason: "" }));
    if (row.local) {
      const job = await getJSON("/api/v1/jobs/" + encodeURIComponent(jobId));
      if (job) {
        $("job-spec-panel").hidden = false;
        $("job-spec").textContent = JSON.stringify(job.spec, null, 2);
        execs = job.executions.map((x) => ({ node_id: x.node_id, state: x.state, id: x.id, reason: x.reason }));
      }
      $("job-where").textContent = "This node is the job's requester: its spec and live logs are below.";
      if (!logsOpen) follow(jobId);
    } else {
      $("job-where").textContent = "Its requester is node " + row.requester +
        ": the spec and logs are on that node's API.";
    }
    table("job-execs", ["execution", "node", "state", "reason"], execs.map((x) =>
      el("tr", { "data-state": x.state }, el("td", {}, short(x.id)), el("td", { title: x.node_id }, short(x.node_id)),
         el("td", { class: "state-" + x.state }, x.state), el("td", {}, x.reason))));
  }

  if (mode === "dashboard") {
    for (const b of document.querySelectorAll("button[data-unit]")) {
      b.addEventListener("click", () => {
        unit = b.dataset.unit;
        for (const o of document.querySelectorAll("button[data-unit]")) o.classList.toggle("on", o === b);
        if (last) render(last);
      });
    }
    live(render);
    if (document.body.dataset.amplify) amplify();
  } else if (mode === "job") {
    $("home").setAttribute("href", "/dashboard" + q);
    let pending = false;
    live(async () => { if (pending) return; pending = true; try { await renderJob(); } finally { pending = false; } });
  }
})();

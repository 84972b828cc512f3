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

  // -- the Amplify panel (where this node runs Amplify: api/amplify.py at /api/v0) ---------------------------

  const AMP_RUNS = 10;           // the newest runs shown
  const AMP_POLL = 2000;         // ms: node states move without a job event (a skip, the root node): poll too
  const ampDone = new Map();     // run id -> its detail, once the run ended (never fetched again)
  let ampBusy = false;
  let lineageShown = "";

  async function ampJSON(path) {
    const r = await fetch(path, { headers: auth, signal: AbortSignal.timeout(10000) }).catch(() => null);
    if (!r) return { error: "the node did not answer" };
    const body = await r.json().catch(() => null);
    if (!r.ok || !body) return { error: (body && body.error) || `HTTP ${r.status}` };
    return body;
  }

  // the DAG as layers: a node one column right of its deepest parent (the graph comes in topological order)
  function renderDag(graph) {
    const ns = "http://www.w3.org/2000/svg";
    const level = new Map(), rows = [];
    for (const n of graph) {
      const lv = Math.max(-1, ...(n.attributes.parents || []).map((p) => level.get(p) ?? -1)) + 1;
      level.set(n.id, lv);
      (rows[lv] = rows[lv] || []).push(n);
    }
    const bw = 150, bh = 30, gx = 40, gy = 12;
    const pos = new Map();
    rows.forEach((col, x) => col.forEach((n, y) => pos.set(n.id, [8 + x * (bw + gx), 8 + y * (bh + gy)])));
    const w = 16 + rows.length * (bw + gx) - gx, h = 16 + Math.max(1, ...rows.map((c) => c.length)) * (bh + gy) - gy;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", String(w));
    svg.setAttribute("height", String(h));
    svg.setAttribute("class", "dag");
    for (const n of graph) {
      for (const p of n.attributes.parents || []) {
        if (!pos.has(p)) continue;
        const [x1, y1] = pos.get(p), [x2, y2] = pos.get(n.id);
        const line = document.createElementNS(ns, "path");
        line.setAttribute("d", `M${x1 + bw},${y1 + bh / 2} C${x1 + bw + gx / 2},${y1 + bh / 2} ${x2 - gx / 2},${y2 + bh / 2} ${x2},${y2 + bh / 2}`);
        line.setAttribute("class", "edge");
        svg.append(line);
      }
    }
    for (const n of graph) {
      const [x, y] = pos.get(n.id);
      const state = String(n.attributes.state || "");
      const g = document.createElementNS(ns, "g");
      g.setAttribute("class", "dag-node state-" + state);
      g.setAttribute("data-node", n.id);
      g.setAttribute("data-state", state);
      const r = document.createElementNS(ns, "rect");
      for (const [k, v] of [["x", x], ["y", y], ["width", bw], ["height", bh], ["rx", 4]]) r.setAttribute(k, String(v));
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", String(x + 6));
      t.setAttribute("y", String(y + 19));
      t.textContent = (n.id.length > 18 ? n.id.slice(0, 17) + "…" : n.id) + " · " + state;
      const title = document.createElementNS(ns, "title");
      title.textContent = `${n.id}: ${state}${n.attributes.reason ? " (" + n.attributes.reason + ")" : ""}`;
      g.append(r, t, title);
      svg.append(g);
    }
    return svg;
  }

  function cidLink(cid) {
    if (!cid) return "";
    const a = el("a", { href: "#lineage-out", class: "cid", "data-cid": cid }, cid);
    a.addEventListener("click", (e) => { e.preventDefault(); $("lineage-cid").value = cid; lineage(cid); });
    return a;
  }

  function renderRun(d) {
    const m = d.meta || {}, graph = (d.attributes && d.attributes.graph) || [];
    return el("div", { class: "panel run", "data-run": d.id, "data-status": m.status || "" },
      el("h3", {}, `run ${d.id} · `, el("span", { class: "state-" + (m.status || "") }, m.status || ""),
         ` · ${m.progress || ""} · submitted ${m.submitted ? iso(m.submitted) : ""}`),
      m.reason ? el("p", { class: "note reason" }, m.reason) : "",
      el("p", { class: "note" }, "input ", cidLink(((d.attributes || {}).inputs || [{}])[0].cid || "")),
      el("div", { class: "dag-box" }, renderDag(graph)),
      el("table", {}, el("tr", {}, ...["node", "parents", "state", "reason", "attempt", "job", "output CID"].map((h) => el("th", {}, h))),
        ...graph.map((n) => {
          const a = n.attributes;
          return el("tr", { "data-node": n.id, "data-state": a.state || "" },
            el("td", {}, n.id), el("td", {}, (a.parents || []).join(", ")),
            el("td", { class: "state-" + (a.state || "") }, a.state || ""), el("td", {}, a.reason || ""),
            el("td", { class: "num" }, a.attempt ?? ""),
            el("td", {}, a.job_id ? el("a", { href: jobHref(a.job_id) }, short(a.job_id)) : ""),
            el("td", {}, cidLink(a.output_cid)));
        })));
  }

  async function refreshAmplify() {
    if (ampBusy) return;
    ampBusy = true;
    try {
      const list = await ampJSON(`/api/v0/queue?page[size]=${AMP_RUNS}&page[number]=1`);
      if (list.error) { $("amplify-count").textContent = list.error; return; }
      const boxes = [];
      for (const run of list.data || []) {
        let d = ampDone.get(run.id);
        if (!d) {
          const got = await ampJSON("/api/v0/queue/" + encodeURIComponent(run.id));
          d = got.error ? run : got.data;
          if (!got.error && ["succeeded", "failed", "cancelled"].includes((d.meta || {}).status)) ampDone.set(run.id, d);
        }
        boxes.push(renderRun(d));
      }
      const listed = new Set((list.data || []).map((r) => r.id));
      for (const id of ampDone.keys()) if (!listed.has(id)) ampDone.delete(id);
      const total = (list.meta || {}).count ?? boxes.length;
      $("amplify-count").textContent = total > boxes.length ? `(the newest ${boxes.length} of ${total})` : `(${total})`;
      if (!boxes.length) boxes.push(el("p", { class: "note" }, "No run yet: bacalhau amplify run CID"));
      $("amplify-runs").replaceChildren(...boxes);
      $("amplify").dataset.refreshed = String((Number($("amplify").dataset.refreshed) || 0) + 1);
      if (lineageShown) await lineage(lineageShown);
    } finally {
      ampBusy = false;
    }
  }

  // an edge: the workflow step (run, node, job) that made its output from its input
  function edgeTable(edges, other) {
    if (!edges.length) return el("p", { class: "note" }, "none");
    return el("table", {}, el("tr", {}, ...["depth", other, "run", "by step", "job", "image"].map((h) => el("th", {}, h))),
      ...edges.map((e) => {
        const p = (e.produced_by || [])[0] || {};
        return el("tr", { "data-cid": other === "made from" ? e.input : e.output, "data-depth": e.depth },
          el("td", { class: "num" }, e.depth), el("td", {}, cidLink(other === "made from" ? e.input : e.output)),
          el("td", {}, short(e.run_id)), el("td", {}, e.node_id),
          el("td", {}, p.job_id ? el("a", { href: jobHref(p.job_id) }, short(p.job_id)) : ""), el("td", {}, p.image || ""));
      }));
  }

  async function lineage(cid) {
    const out = $("lineage-out");
    if (!cid) { lineageShown = ""; out.replaceChildren(); return; }
    const depth = Math.min(20, Math.max(1, Number($("lineage-depth").value) || 1));
    const got = await ampJSON(`/api/v0/lineage/${encodeURIComponent(cid)}?direction=both&depth=${depth}`);
    lineageShown = got.error ? "" : cid;
    if (got.error) { out.dataset.cid = ""; out.replaceChildren(el("p", { class: "note error" }, got.error)); return; }
    const d = got.data, made = d.produced_by || [];
    out.dataset.cid = cid;
    out.replaceChildren(
      el("p", {}, el("code", {}, d.cid), made.length
        ? ` was made by ${made.map((p) => `node ${p.node_id} of run ${short(p.run_id)} (${p.image || "internal"})`).join("; ")}`
        : " was made by no Amplify job this node knows of (an input, or not seen)"),
      el("h3", {}, `made from (${(d.up || []).length})`), edgeTable(d.up || [], "made from"),
      el("h3", {}, `made from it (${(d.down || []).length})`), edgeTable(d.down || [], "made"));
  }

  function amplify() {
    $("amplify").hidden = false;
    const go = () => lineage($("lineage-cid").value.trim());
    $("lineage-go").addEventListener("click", go);
    $("lineage-cid").addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
    refreshAmplify();
    setInterval(refreshAmplify, AMP_POLL);
    return refreshAmplify;
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
    const amp = document.body.dataset.amplify ? amplify() : null;
    live((snap) => { render(snap); if (amp) amp(); });      // and on the stream's tick
  } else if (mode === "job") {
    $("home").setAttribute("href", "/dashboard" + q);
    let pending = false;
    live(async () => { if (pending) return; pending = true; try { await renderJob(); } finally { pending = false; } });
  }
})();

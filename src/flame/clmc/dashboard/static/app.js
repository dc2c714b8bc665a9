// FLAME dashboard: polls /api/snapshot once a second and draws it. No framework, no build.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#ff7b72", "#39c5cf", "#e3b341"];
const STATE_COLORS = { connected: "#3fb950", booted: "#d29922", placed: "#8a96a3", failed: "#f85149" };

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("flame-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  return sessionStorage.getItem("flame-token");
}

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function hhmmss(seconds) { return new Date(seconds * 1000).toLocaleTimeString(); }

// -- topology ------------------------------------------------------------------------------------

function layout(nodes) {
  const located = nodes.filter(n => n.location);
  const pos = {};
  if (located.length) {
    const lats = located.map(n => n.location.latitude), lons = located.map(n => n.location.longitude);
    const lat0 = (Math.min(...lats) + Math.max(...lats)) / 2, k = Math.cos(lat0 * Math.PI / 180);
    const xs = lons.map(l => l * k), ys = lats;
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    // Same scale on both axes (a map), the bounding box centred in the drawing area.
    const W = 780, H = 300, scale = Math.min(W / Math.max(x1 - x0, 1e-6), H / Math.max(y1 - y0, 1e-6));
    const dx = 110 + (W - (x1 - x0) * scale) / 2, dy = 60 + (H - (y1 - y0) * scale) / 2;
    located.forEach((n, i) => {
      pos[n.id] = { x: dx + (xs[i] - x0) * scale, y: dy + (y1 - ys[i]) * scale };
    });
  }
  // Nodes without a location go on a ring; nodes sharing a place are fanned out.
  const rest = nodes.filter(n => !pos[n.id]);
  rest.forEach((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(rest.length, 1);
    pos[n.id] = { x: 500 + 300 * Math.cos(a), y: 230 + 160 * Math.sin(a) };
  });
  // Nodes at (nearly) the same place are pushed apart until labels do not overlap.
  const ids = nodes.map(n => n.id), MIN = 80;
  for (let round = 0; round < 60; round++) {
    let moved = false;
    for (let i = 0; i < ids.length; i++) for (let j = i + 1; j < ids.length; j++) {
      const a = pos[ids[i]], b = pos[ids[j]];
      let dx = b.x - a.x, dy = b.y - a.y, d = Math.hypot(dx, dy);
      if (d >= MIN) continue;
      if (d < 1e-3) { dx = 1; dy = 0.5; d = Math.hypot(dx, dy); }
      const push = (MIN - d) / 2;
      a.x -= (dx / d) * push; a.y -= (dy / d) * push; b.x += (dx / d) * push; b.y += (dy / d) * push;
      moved = true;
    }
    if (!moved) break;
  }
  for (const id of ids) {
    pos[id].x = Math.min(910, Math.max(90, pos[id].x));
    pos[id].y = Math.min(400, Math.max(30, pos[id].y));
  }
  return pos;
}

function drawTopology(snap) {
  const svg = document.getElementById("topology");
  clear(svg);
  const topo = snap.topology;
  if (!topo) { svg.appendChild(el("text", { x: 20, y: 40, fill: "#8a96a3" }, "no topology (is the PCE up?)")); return; }
  const pos = layout(topo.nodes);
  for (const link of topo.links) {
    const a = pos[link.a], b = pos[link.b];
    if (!a || !b) continue;
    const down = link.state !== "up";
    svg.appendChild(el("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: down ? "#f85149" : "#33404c",
      "stroke-width": 3, "stroke-dasharray": down ? "8 6" : "", "data-link": `${link.a}-${link.b}` }));
    svg.appendChild(el("text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 6, fill: "#8a96a3", "font-size": 11,
      "text-anchor": "middle" }, `${link.latency_ms} ms`));
  }
  // Clusters and user equipment hang off their SR (an attachment, not a routed link).
  for (const node of topo.nodes) {
    const a = pos[node.id], b = node.sr && pos[node.sr];
    if (b) svg.appendChild(el("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: "#33404c", "stroke-dasharray": "2 4" }));
  }
  // Endpoints per cluster: the orchestrator's view (all states), else the PCE's (connected only).
  const byCluster = {};
  for (const svc of snap.services) for (const ep of svc.endpoints || [])
    (byCluster[ep.cluster] = byCluster[ep.cluster] || []).push({ sfe: ep.sfe, sf: ep.sf, state: ep.state });
  if (!snap.services.length) for (const r of snap.registrations) {
    const ep = r.endpoint || r;
    (byCluster[ep.cluster] = byCluster[ep.cluster] || []).push({ sfe: ep.sfe, sf: ep.fqdn, state: "connected" });
  }
  for (const node of topo.nodes) {
    const p = pos[node.id];
    const g = el("g", { "data-node": node.id, "data-kind": node.kind });
    if (node.kind === "service_router") {
      g.appendChild(el("circle", { cx: p.x, cy: p.y, r: 16, fill: "#1f6feb" }));
    } else if (node.kind === "cluster") {
      g.appendChild(el("rect", { x: p.x - 18, y: p.y - 14, width: 36, height: 28, rx: 5, fill: "#238636" }));
    } else if (node.kind === "switch") {
      g.appendChild(el("rect", { x: p.x - 9, y: p.y - 9, width: 18, height: 18, fill: "#6e7681" }));
    } else {
      g.appendChild(el("polygon", { points: `${p.x},${p.y - 14} ${p.x - 13},${p.y + 10} ${p.x + 13},${p.y + 10}`, fill: "#8957e5" }));
    }
    g.appendChild(el("text", { x: p.x, y: p.y + 30, fill: "#dde3ea", "font-size": 12, "text-anchor": "middle" }, node.id));
    (byCluster[node.id] || []).forEach((ep, i) => {
      const t = el("text", { x: p.x, y: p.y + 46 + 14 * i, "font-size": 11, "text-anchor": "middle",
        fill: STATE_COLORS[ep.state] || "#58a6ff", "data-endpoint": ep.sfe, "data-state": ep.state },
        `${ep.sf}: ${ep.state}`);
      g.appendChild(t);
    });
    svg.appendChild(g);
  }
}

// -- KPI chart ------------------------------------------------------------------------------------

function drawKpi(snap) {
  const svg = document.getElementById("kpi"), legend = document.getElementById("legend");
  clear(svg); clear(legend);
  const W = 600, H = 260, L = 44, B = 22, T = 8;
  // The KPI the policies judge: the field of the first threshold rule on sr_fqdn (the demo's
  // path_latency), else the response time.
  const rules = snap.alerts.filter(a => a.measurement === "sr_fqdn" && a.threshold !== null
    && a.event_type === "threshold");
  const field = rules.length ? rules[0].field : "response_time";
  const title = document.getElementById("kpi-field");
  if (title) title.textContent = `${field} (ms, 1 s means)`;
  const series = snap.kpi.map(s => {
    const ti = s.columns.indexOf("time"), vi = s.columns.indexOf(field);
    return { name: `${s.tags.fqdn || "?"} @ ${s.tags.sr || "?"}`, tags: s.tags,
      points: vi < 0 ? [] : s.values.filter(v => v[vi] !== null).map(v => [v[ti] / 1000, v[vi]]) };
  }).filter(s => s.points.length && !String(s.tags.fqdn || "").startsWith("_"));  // _unknown, _flame
  const thresholds = rules.filter(a => a.field === field);
  const now = snap.time, t0 = now - 120;
  let ymax = 5;
  for (const s of series) for (const [, v] of s.points) ymax = Math.max(ymax, v);
  for (const a of thresholds) ymax = Math.max(ymax, a.threshold * 1.2);
  const x = t => L + ((t - t0) / (now - t0)) * (W - L - 6), y = v => H - B - (v / ymax) * (H - B - T);
  svg.appendChild(el("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#33404c" }));
  for (const frac of [0, 0.5, 1]) {
    svg.appendChild(el("text", { x: L - 4, y: y(ymax * frac) + 4, fill: "#8a96a3", "font-size": 10, "text-anchor": "end" },
      (ymax * frac).toFixed(ymax * frac < 10 && frac ? 1 : 0)));
  }
  svg.appendChild(el("text", { x: L, y: H - 4, fill: "#8a96a3", "font-size": 10 }, "-2 min"));
  svg.appendChild(el("text", { x: W - 4, y: H - 4, fill: "#8a96a3", "font-size": 10, "text-anchor": "end" }, "now"));
  for (const a of thresholds) {
    svg.appendChild(el("line", { x1: L, y1: y(a.threshold), x2: W, y2: y(a.threshold), stroke: "#f85149",
      "stroke-dasharray": "6 4", "data-threshold": a.name }));
    svg.appendChild(el("text", { x: W - 6, y: y(a.threshold) - 4, fill: "#f85149", "font-size": 10, "text-anchor": "end" },
      `${a.name} > ${a.threshold}`));
  }
  for (const ev of snap.events) {
    const t = ev.time_ns / 1e9;
    if (t < t0) continue;
    svg.appendChild(el("line", { x1: x(t), y1: T, x2: x(t), y2: H - B, stroke: ev.level === "critical" ? "#f85149" : "#3fb950",
      "stroke-width": 1, "data-event": ev.id }));
  }
  if (!series.length && snap.errors.kpi) {  // e.g. the CLMC refuses this token the platform database
    svg.appendChild(el("text", { x: L + 8, y: T + 20, fill: "#8a96a3", "font-size": 12, "data-testid": "kpi-unavailable" },
      `KPIs unavailable: ${snap.errors.kpi}`));
  }
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.filter(([t]) => t >= t0).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.appendChild(el("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name }));
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${color}"></i>`;
    item.appendChild(document.createTextNode(s.name));
    legend.appendChild(item);
  });
}

// -- tables and timeline --------------------------------------------------------------------------

function row(cells, classes = []) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => { const td = document.createElement("td"); td.textContent = c; if (classes[i]) td.className = classes[i]; tr.appendChild(td); });
  return tr;
}

function drawTables(snap) {
  const alerts = document.querySelector("#alerts tbody");
  clear(alerts);
  for (const a of snap.alerts) {
    const rule = a.event_type === "deadman" && a.aggregation === "sum"
      ? `sum(${a.measurement}.${a.field}) below ${a.threshold} in ${a.granularity_s}s`
      : a.event_type === "deadman"
      ? `fewer than ${a.threshold} points of ${a.measurement}.${a.field} in ${a.granularity_s}s`
      : `${a.aggregation}(${a.measurement}.${a.field})${a.event_type === "relative" ? " change %" : ""} ${a.comparison} ${a.threshold} over ${a.granularity_s}s`;
    alerts.appendChild(row([a.name, `${a.sfc}/${a.sfci}`, rule, a.level],
      ["", "", "", `level-${a.level}`]));
  }
  const served = {};
  for (const s of snap.served) {
    const vi = s.columns.indexOf("requests");
    const last = s.values.length ? s.values[s.values.length - 1][vi] : 0;
    served[s.tags.sfe] = (served[s.tags.sfe] || 0) + (last || 0);
  }
  const services = document.querySelector("#services tbody");
  clear(services);
  for (const svc of snap.services) for (const ep of svc.endpoints || []) {
    // Restarts after crashes (the VIM's count) and the last crash, which no state shows.
    const restarts = ep.restarts === null || ep.restarts === undefined ? "?" : String(ep.restarts);
    const tr = row([svc.sfc, svc.tenant || "", ep.sfe, ep.cluster, ep.state, ep.desired, restarts,
      String(served[ep.sfe] || 0)], ["", "", "", "", `state-${ep.state}`, "", ep.restarts ? "crashed" : "", ""]);
    tr.dataset.restarts = restarts;
    if (ep.last_crash) tr.cells[6].title = ep.last_crash;
    if (ep.reason) tr.cells[4].title = ep.reason;
    services.appendChild(tr);
  }
  const items = [];
  for (const ev of snap.events) items.push({ t: ev.time_ns / 1e9, cls: `level-${ev.level}`, text: ev.message });
  for (const svc of snap.services) for (const ep of svc.endpoints || []) for (const h of ep.history || [])
    items.push({ t: h.time, cls: `state-${h.to}`, text: `${ep.sfe}: ${h.from} → ${h.to}${h.reason ? " (" + h.reason + ")" : ""}` });
  items.sort((a, b) => b.t - a.t);
  const timeline = document.getElementById("timeline");
  clear(timeline);
  for (const it of items.slice(0, 60)) {
    const li = document.createElement("li");
    const t = document.createElement("span"); t.className = "t"; t.textContent = hhmmss(it.t);
    const m = document.createElement("span"); m.className = it.cls; m.textContent = it.text;
    li.append(t, m);
    timeline.appendChild(li);
  }
}

// -- loop -----------------------------------------------------------------------------------------

function who(me) {
  if (!me) return "";
  return me.role === "tenant" ? `tenant ${me.tenant} (${me.name})` : `${me.role} (${me.name})`;
}

// Nothing of a previous answer stays on the page once the token stops working.
function forget() {
  for (const id of ["topology", "kpi", "legend", "timeline", "qchart", "qresult", "db"]) clear(document.getElementById(id));
  const measurements = document.getElementById("measurement");
  while (measurements.options.length > 1) measurements.remove(1);
  for (const body of document.querySelectorAll("#alerts tbody, #services tbody")) clear(body);
  document.getElementById("whoami").textContent = "";
  document.getElementById("updated").textContent = "not signed in";
}

async function tick() {
  const tok = token();
  if (!tok) { document.getElementById("login").hidden = false; return; }
  try {
    const r = await fetch("api/snapshot", { headers: { Authorization: "Bearer " + tok } });
    const snap = await r.json().catch(() => ({}));
    if (!r.ok) {
      forget();
      if (r.status === 401) {  // unknown, revoked or expired: ask for another token
        sessionStorage.removeItem("flame-token");
        document.getElementById("login").hidden = false;
      }
      throw new Error(snap.message || snap.error || `HTTP ${r.status}`);
    }
    drawTopology(snap); drawKpi(snap); drawTables(snap);
    document.getElementById("whoami").textContent = who(snap.whoami);
    document.getElementById("updated").textContent = "updated " + hhmmss(snap.time);
    const errs = Object.entries(snap.errors);
    document.getElementById("errors").textContent = errs.map(([k, v]) => `${k}: ${v}`).join("; ");
  } catch (e) {
    document.getElementById("errors").textContent = "dashboard: " + e.message;
  }
}

// -- query panel (CLMC-17) ----------------------------------------------------------------------

async function influx(q, db) {
  const r = await fetch(`api/query?db=${encodeURIComponent(db || "")}&q=${encodeURIComponent(q)}`,
    { headers: { Authorization: "Bearer " + token() } });
  return r.json();
}

async function loadDatabases() {
  const body = await influx("SHOW DATABASES", "");
  const dbs = ((body.results || [])[0]?.series?.[0]?.values || []).map(v => v[0]);
  const select = document.getElementById("db");
  clear(select);
  for (const db of dbs) { const o = document.createElement("option"); o.value = o.textContent = db; select.appendChild(o); }
  if (dbs.includes("flame")) select.value = "flame";
  await loadMeasurements();
}

async function loadMeasurements() {
  const db = document.getElementById("db").value;
  const select = document.getElementById("measurement");
  while (select.options.length > 1) select.remove(1);
  if (!db) return;
  const body = await influx("SHOW MEASUREMENTS", db);
  for (const v of ((body.results || [])[0]?.series?.[0]?.values || [])) {
    const o = document.createElement("option"); o.value = o.textContent = v[0]; select.appendChild(o);
  }
}

async function runQuery() {
  const out = document.getElementById("qresult"), svg = document.getElementById("qchart");
  clear(out); clear(svg);
  const body = await influx(document.getElementById("q").value, document.getElementById("db").value);
  const result = (body.results || [])[0] || {};
  const error = body.message || body.error || result.error;
  if (error) { out.textContent = "error: " + error; out.className = "level-critical"; return; }
  out.className = "";
  const series = result.series || [];
  if (!series.length) { out.textContent = "no data"; return; }
  // Chart: every numeric column of every series against time.
  let t0 = Infinity, t1 = -Infinity, v0 = 0, v1 = 1;
  const lines = [];
  for (const s of series) {
    const ti = s.columns.indexOf("time");
    s.columns.forEach((c, ci) => {
      if (ci === ti) return;
      const pts = s.values.filter(v => typeof v[ci] === "number").map(v => [v[ti], v[ci]]);
      if (!pts.length) return;
      for (const [t, v] of pts) { t0 = Math.min(t0, t); t1 = Math.max(t1, t); v0 = Math.min(v0, v); v1 = Math.max(v1, v); }
      lines.push({ name: `${s.name}.${c} ${JSON.stringify(s.tags || {})}`, pts });
    });
  }
  const x = t => 40 + ((t - t0) / Math.max(t1 - t0, 1)) * 1150, y = v => 190 - ((v - v0) / Math.max(v1 - v0, 1e-9)) * 180;
  lines.slice(0, 12).forEach((l, i) => svg.appendChild(el("polyline", { fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 1.5,
    points: l.pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "), "data-series": l.name })));
  svg.appendChild(el("text", { x: 2, y: 12, fill: "#8a96a3", "font-size": 10 }, v1.toPrecision(3)));
  svg.appendChild(el("text", { x: 2, y: 190, fill: "#8a96a3", "font-size": 10 }, v0.toPrecision(3)));
  // Table: the first series.
  const s = series[0], table = document.createElement("table");
  table.appendChild(row(s.columns));
  for (const v of s.values.slice(0, 200)) table.appendChild(row(v.map(x => x === null ? "" : String(x))));
  out.appendChild(document.createTextNode(`${series.length} series; first: ${s.name} ${JSON.stringify(s.tags || {})}`));
  out.appendChild(table);
}

document.getElementById("db").addEventListener("change", loadMeasurements);
document.getElementById("measurement").addEventListener("change", ev => {
  if (ev.target.value) document.getElementById("q").value = `SELECT * FROM "${ev.target.value}" WHERE time > now() - 5m LIMIT 100`;
});
document.getElementById("query").addEventListener("submit", ev => { ev.preventDefault(); runQuery(); });

document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem("flame-token", document.getElementById("token").value.trim());
  document.getElementById("login").hidden = true;
  document.getElementById("errors").textContent = "";
  tick();
  loadDatabases().then(runQuery).catch(e => { document.getElementById("errors").textContent = "query: " + e.message; });
});
tick();
setInterval(tick, 1000);
if (token()) loadDatabases().then(runQuery).catch(e => { document.getElementById("errors").textContent = "query: " + e.message; });

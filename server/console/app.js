// The infergate console: a light client of the admin API. The bearer token is kept in this
// closure only (never in storage or a cookie) and sent in the Authorization header.
"use strict";
(() => {
  let token = null;
  let me = { name: "", scopes: [] };
  let timer = null;
  const charts = [];

  const $ = (id) => document.getElementById(id);

  /** An element with attributes (on* as listeners) and children (strings become text). */
  function h(tag, attrs, ...kids) {
    const svg = ["svg", "g", "rect", "path", "text", "title", "line"].includes(tag);
    const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : {}; } catch (_) { json = { error: text }; }
    if (r.status === 401) { signOut("Your token was refused: " + (json.error || r.status)); }
    if (!r.ok) throw new ApiError(r.status, (json && json.error) || ("HTTP " + r.status));
    return json;
  }

  let sayTimer = null;
  function say(message) {
    $("status").textContent = message;
    clearTimeout(sayTimer);
    sayTimer = setTimeout(() => { $("status").textContent = ""; }, 8000);
  }

  const isAdmin = () => me.scopes.includes("admin");
  const num = (v, digits = 2) => (v === null || v === undefined || Number.isNaN(v)) ? "—" : Number(v).toFixed(digits);
  const pct = (v, digits = 2) => (v === null || v === undefined) ? "—" : (100 * v).toFixed(digits) + "%";
  const bytes = (b) => b === undefined ? "—" : b >= 1 << 20 ? (b / (1 << 20)).toFixed(1) + " MiB" : b >= 1024 ? (b / 1024).toFixed(1) + " KiB" : b + " B";
  const when = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : "—";
  const short = (digest) => digest ? String(digest).replace("sha256:", "").slice(0, 12) : "—";
  const last = (a) => a && a.length ? a[a.length - 1] : null;

  /** A two-step action: the button shows a confirmation panel, the panel's button acts. */
  function confirmStep(label, question, act, danger) {
    const slot = h("span", { class: "actions" });
    const open = h("button", { type: "button", class: danger ? "danger" : null, disabled: !isAdmin(), title: isAdmin() ? null : "needs the admin scope", onclick: () => {
      slot.replaceChildren(h("span", {}, question),
        h("button", { type: "button", class: danger ? "danger" : "primary", onclick: async () => { await act(); } }, "Confirm"),
        h("button", { type: "button", onclick: () => slot.replaceChildren(open) }, "Cancel"));
    } }, label);
    slot.append(open);
    return slot;
  }

  // ---------------------------------------------------------------- models
  async function models(view) {
    const data = await api("GET", "/admin/console/models");
    view.append(h("h1", {}, "Models"),
      h("p", { class: "muted" }, `${data.models.length} models. The default version answers requests that name none; `,
        "a pin overrides the registry's production alias."));
    for (const m of data.models) view.append(modelCard(m));
  }

  function modelCard(m) {
    const id = "model-" + m.name;
    const card = h("section", { class: "card", "aria-labelledby": id, "data-model": m.name });
    const aliases = Object.entries(m.aliases || {}).map(([a, v]) => h("span", { class: "badge alias" }, `${a} → ${v}`));
    card.append(h("h2", { id }, m.name, " ", h("span", { class: "badge" }, m.source)),
      h("p", {}, "Default version: ", h("strong", { "data-default": m.name }, m.default_version ?? "—"),
        m.pinned ? h("span", { class: "badge" }, "pinned") : null, " ", aliases));
    const panel = h("div", { "aria-live": "polite" });
    const rows = m.versions.map((v) => {
      const state = v.state === "READY" ? "ready" : v.state === "UNAVAILABLE" ? "unavailable" : "";
      const metrics = Object.entries(v.metrics || {}).map(([k, x]) => `${k} ${Number.isInteger(x) ? x : num(x, 4)}`).join(", ");
      const acts = h("td", { class: "actions" });
      if (v.state === "READY" && v.version) {
        acts.append(h("span", { "data-pin": v.version }, v.default && m.pinned
          ? confirmStep("Unpin", `Unpin ${m.name}? The default follows production again.`, async () => {
            await act("DELETE", `/admin/models/${enc(m.name)}/pin`, undefined, `${m.name}: unpinned`);
          })
          : confirmStep("Pin as default", `Pin version ${v.version} as the default of ${m.name}?`, async () => {
            await act("POST", `/admin/models/${enc(m.name)}/pin/${enc(v.version)}`, undefined, `${m.name}: version ${v.version} pinned`);
          })));
      }
      if (m.source === "registry" && v.version && !(v.aliases || []).includes("production")) {
        acts.append(h("button", { type: "button", disabled: !isAdmin(), "data-promote": v.version,
          onclick: () => promotion(m.name, v.version, panel) }, "Promote to production…"));
      }
      return h("tr", { "data-version": v.version },
        h("td", {}, v.version || "—", v.default ? h("span", { class: "badge" }, "default") : null),
        h("td", {}, h("span", { class: "badge " + state }, v.state), v.reason ? h("div", { class: "muted" }, v.reason) : null),
        h("td", {}, (v.aliases || []).map((a) => h("span", { class: "badge alias" }, a))),
        h("td", {}, v.platform || "—", v.kind ? h("div", { class: "muted" }, v.kind) : null),
        h("td", { class: "mono", title: v.digest || (v.artifact && v.artifact.digest) || "" }, short(v.digest || (v.artifact && v.artifact.digest))),
        h("td", { class: "num" }, bytes(v.weight_bytes ?? (v.artifact && v.artifact.size))),
        h("td", {}, metrics || "—"),
        h("td", { class: "num" }, v.requests ?? "—"),
        h("td", { class: "num" }, num(v.mean_ms, 3)),
        acts);
    });
    card.append(h("table", {},
      h("caption", { class: "muted" }, `Versions of ${m.name}`),
      h("thead", {}, h("tr", {}, ["Version", "State", "Aliases", "Platform", "Artifact", "Size", "Recorded metrics", "Requests", "Mean ms", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)), panel);
    if (m.source === "registry") card.append(lineage(m));
    return card;
  }

  const enc = encodeURIComponent;

  async function act(method, path, body, done) {
    try {
      const r = await api(method, path, body);
      say(done);
      await render();
      return r;
    } catch (e) {
      say("Refused: " + e.message);
      throw e;
    }
  }

  /** Shows the gates' verdict on promoting `version`, then offers to promote (or force). */
  async function promotion(model, version, panel) {
    const v = await api("GET", `/admin/models/${enc(model)}/promotion?version=${enc(version)}&alias=production`);
    const box = h("div", { class: "panel", "data-gates": v.passed ? "passed" : "refused" },
      h("h3", {}, `Promote ${model} version ${version} to production`),
      h("p", {}, `production is now version ${v.current ?? "—"}. Gate on ${v.rules.metric}: `,
        v.passed ? h("strong", { class: "ok" }, "the gates pass.") : h("strong", { class: "error" }, "the gates refuse:")),
      v.reasons.length ? h("ul", { class: "error" }, v.reasons.map((r) => h("li", {}, r))) : null);
    const result = h("p", { role: "alert", class: "gate-result" });
    const go = async (force) => {
      try {
        const r = await api("POST", `/admin/models/${enc(model)}/promote`, { version: Number(version), alias: "production", force });
        say(`${model}: production moved from ${r.previous ?? "—"} to ${r.version}${r.forced ? " (forced over the gates)" : ""}`);
        await render();
      } catch (e) {
        result.className = "error gate-result";
        result.textContent = "Refused: " + e.message;
      }
    };
    box.append(h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", "data-action": "promote", onclick: () => go(false) }, "Promote"),
      v.passed ? null : h("button", { type: "button", class: "danger", "data-action": "force", onclick: () => go(true) }, "Force over the gates"),
      h("button", { type: "button", onclick: () => panel.replaceChildren() }, "Cancel")), result);
    panel.replaceChildren(box);
  }

  /** The lineage of a registry model: datasets → versions (parent, distillation teacher). */
  function lineage(m) {
    const nodes = new Map();
    const edges = [];
    const node = (key, label, sub, cls) => { if (!nodes.has(key)) nodes.set(key, { key, label, sub, cls, depth: 0 }); return nodes.get(key); };
    const versions = m.versions.filter((v) => v.lineage);
    for (const v of versions) {
      const prod = (v.aliases || []).includes("production");
      const acc = v.metrics && v.metrics.accuracy !== undefined ? `accuracy ${num(v.metrics.accuracy, 3)}` : v.state;
      node("v" + v.version, `${m.name} v${v.version}`, acc, prod ? "prod" : "");
    }
    for (const v of versions) {
      const l = v.lineage;
      const to = "v" + v.version;
      let teacher = null;
      if (l.distillation_teacher) {
        const [tm, tv] = String(l.distillation_teacher).split(":");
        teacher = tm === m.name ? "v" + tv : "t" + l.distillation_teacher;
        node(teacher, l.distillation_teacher, "teacher", "");
      }
      // A student distilled from its parent gets one edge, "distilled".
      if (l.parent !== undefined && teacher !== "v" + l.parent) edges.push(["v" + l.parent, to, l.quantization || "derived"]);
      if (teacher) edges.push([teacher, to, "distilled"]);
      if (l.dataset && l.parent === undefined) {
        const key = "d" + (l.dataset_digest || l.dataset);
        node(key, l.dataset, "dataset " + short(l.dataset_digest), "dataset");
        edges.push([key, to, "trained on"]);
      }
    }
    if (!nodes.size) return h("p", { class: "muted" }, "No lineage recorded.");
    for (let i = 0; i < nodes.size; i++) {
      for (const [from, to] of edges) {
        const a = nodes.get(from), b = nodes.get(to);
        if (a && b && b.depth < a.depth + 1) b.depth = a.depth + 1;
      }
    }
    const columns = new Map();
    for (const n of nodes.values()) {
      const col = columns.get(n.depth) || [];
      n.row = col.length; col.push(n); columns.set(n.depth, col);
    }
    const W = 170, H = 44, GX = 150, GY = 24;
    const rowsMax = Math.max(...[...columns.values()].map((c) => c.length));
    const width = (Math.max(...columns.keys()) + 1) * (W + GX);
    const height = rowsMax * (H + GY) + 10;
    const x = (n) => 5 + n.depth * (W + GX), y = (n) => 5 + n.row * (H + GY);
    const svg = h("svg", { class: "lineage", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `lineage of ${m.name}` },
      h("title", {}, `Lineage of ${m.name}`));
    for (const [from, to, label] of edges) {
      const a = nodes.get(from), b = nodes.get(to);
      if (!a || !b) continue;
      const x1 = x(a) + W, y1 = y(a) + H / 2, x2 = x(b), y2 = y(b) + H / 2, mx = (x1 + x2) / 2;
      svg.append(h("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "data-edge": `${from}->${to}` }),
        h("text", { x: mx, y: (y1 + y2) / 2 - 5, "text-anchor": "middle", class: "edge-label" }, label));
    }
    for (const n of nodes.values()) {
      svg.append(h("g", { class: "node " + n.cls, "data-node": n.label },
        h("rect", { x: x(n), y: y(n), width: W, height: H, rx: 5 }),
        h("text", { x: x(n) + 8, y: y(n) + 18 }, n.label),
        h("text", { x: x(n) + 8, y: y(n) + 35, class: "muted" }, n.sub || "")));
    }
    return h("figure", {}, h("figcaption", {}, h("h3", {}, "Lineage")), svg);
  }

  // ---------------------------------------------------------------- live traffic
  const MEASURES = [["rps", "req/s", 1], ["p50_ms", "p50 ms", 3], ["p99_ms", "p99 ms", 3], ["error_rate", "errors", -1],
    ["batch_size", "batch", 1], ["queue", "queue", 0], ["cache_hit_rate", "cache hits", -1]];

  async function traffic(view) {
    view.append(h("h1", {}, "Live traffic"),
      h("p", { class: "muted" }, "The server reads its own counters every second; this page refreshes every two seconds and shows the last five minutes. Latency percentiles are over each second."));
    const grid = h("div", { class: "grid" });
    view.append(grid);
    const cards = new Map();
    const tick = async () => {
      const data = await api("GET", "/admin/console/traffic");
      if (!data.series.length && !cards.size) grid.replaceChildren(h("p", { class: "muted" }, "No model or route yet."));
      for (const s of data.series) {
        const key = `${s.kind}/${s.name}/${s.part}`;
        let c = cards.get(key);
        if (!c) {
          const dl = h("dl", { class: "measures" });
          const values = {};
          for (const [m, label] of MEASURES) {
            values[m] = h("dd", { "data-measure": m }, "—");
            dl.append(h("dt", {}, label));
          }
          for (const [m] of MEASURES) dl.append(values[m]);
          const plot = h("div", { class: "plot" });
          const title = s.kind === "model" ? `${s.name} version ${s.part}` : `route ${s.name}, variant ${s.part}`;
          const card = h("section", { class: "card", "data-series": key, "aria-label": title }, h("h2", {}, title), dl, plot);
          if (cards.size === 0) grid.replaceChildren();
          grid.append(card);
          c = { values, plot, chart: null };
          cards.set(key, c);
        }
        for (const [m, , digits] of MEASURES) {
          const v = last(s[m]);
          c.values[m].textContent = digits < 0 ? pct(v, 1) : num(v, digits);
        }
        const data3 = [Array.from(s.t), Array.from(s.rps), Array.from(s.p99_ms, (v) => v ?? null)];
        if (!c.chart && window.uPlot) {
          c.chart = new uPlot({
            width: Math.max(300, c.plot.clientWidth || 520), height: 160,
            series: [{}, { label: "req/s", stroke: "#1f5fbf", scale: "rps" }, { label: "p99 ms", stroke: "#d4722b", scale: "ms" }],
            axes: [{}, { scale: "rps", label: "req/s" }, { scale: "ms", side: 1, label: "p99 ms", grid: { show: false } }],
          }, data3, c.plot);
          charts.push(c.chart);
        } else if (c.chart) {
          c.chart.setData(data3);
        }
      }
    };
    await tick();
    return tick;
  }

  // ---------------------------------------------------------------- routes and experiments
  async function routes(view) {
    const { routes } = await api("GET", "/admin/routes");
    view.append(h("h1", {}, "Routes & experiments"));
    if (!routes.length) view.append(h("p", { class: "muted" }, "No routes are configured."));
    for (const r of routes) {
      const exp = await api("GET", `/admin/experiments/${enc(r.name)}`);
      view.append(routeCard(r, exp, routes));
    }
  }

  function routeCard(r, exp, all) {
    const card = h("section", { class: "card", "data-route": r.name, "aria-labelledby": "route-" + r.name },
      h("h2", { id: "route-" + r.name }, "Route ", r.name));
    const total = r.variants.reduce((a, v) => a + v.weight, 0) || 1;
    const inputs = {};
    card.append(h("h3", {}, "Split"), h("table", {},
      h("thead", {}, h("tr", {}, ["Variant", "Serves", "Weight", "Configured share"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, r.variants.map((v) => {
        inputs[v.name] = h("input", { type: "number", min: 0, step: 1, value: v.weight, id: `w-${r.name}-${v.name}`, disabled: !isAdmin() });
        return h("tr", {}, h("td", {}, v.name), h("td", {}, v.model + (v.version ? ":" + v.version : "")),
          h("td", {}, h("label", { for: `w-${r.name}-${v.name}`, class: "muted" }, "weight "), inputs[v.name]),
          h("td", { class: "num" }, pct(v.weight / total, 0)));
      }))));
    const replace = (change, done) => act("PUT", "/admin/routes", all.map((x) => x.name === r.name ? change(structuredClone(x)) : x), done);
    card.append(h("div", { "data-action": "weights" }, confirmStep("Apply weights", "Replace the split (statistics start again)?", async () => {
      await replace((x) => { x.variants.forEach((v) => { v.weight = Number(inputs[v.name].value); }); return x; }, `${r.name}: weights changed`);
    })));

    card.append(h("h3", {}, "Experiment"), h("table", {},
      h("thead", {}, h("tr", {}, ["Variant", "Requests", "Errors", "Error rate (95% CI)", "p50 ms", "p99 ms", "Mean ms (95% CI)", "Accuracy (feedback)"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, exp.variants.map((v) => h("tr", { "data-variant": v.variant },
        h("td", {}, v.variant), h("td", { class: "num" }, v.requests), h("td", { class: "num" }, v.errors),
        h("td", { class: "num" }, pct(v.error_rate), v.error_rate_ci ? h("div", { class: "muted" }, `${pct(v.error_rate_ci[0])} – ${pct(v.error_rate_ci[1])}`) : null),
        h("td", { class: "num" }, num(v.latency_ms.p50, 3)), h("td", { class: "num" }, num(v.latency_ms.p99, 3)),
        h("td", { class: "num" }, num(v.latency_ms.mean, 3), v.latency_mean_ci_ms ? h("div", { class: "muted" }, `${num(v.latency_mean_ci_ms[0], 3)} – ${num(v.latency_mean_ci_ms[1], 3)}`) : null),
        h("td", { class: "num" }, v.accuracy === null ? "—" : `${pct(v.accuracy, 1)} of ${v.feedback}`))))));
    if (exp.comparisons.length) {
      card.append(h("ul", { class: "verdicts" }, exp.comparisons.map((c) => h("li", {}, h("strong", {}, `${c.variant} against ${c.baseline}: `), c.verdict))));
    }
    if (exp.shadow) {
      const s = exp.shadow;
      card.append(h("h3", {}, "Shadow comparison"), h("p", {},
        `${s.sent} mirrored, ${s.both_ok} compared, ${s.dropped} dropped, ${s.shadow_failed} shadow failures. `,
        `Top-1 agreement ${pct(s.top1_agreement)} over ${s.rows} rows; mean cosine ${num(s.mean_cosine, 4)}; `,
        `largest difference ${num(s.max_abs_diff, 5)}; the shadow is ${num(s.mean_latency_delta_ms, 3)} ms slower on average.`));
    }
    if (exp.canary) card.append(canary(r, exp.canary));
    else if (r.variants.length > 1) card.append(startCanary(r, replace));
    return card;
  }

  function canary(r, c) {
    const box = h("div", { class: "canary", "data-phase": c.phase }, h("h3", {}, "Canary"),
      h("p", {}, `Variant ${c.variant} is `, h("strong", {}, c.phase.replace("_", " ")), ` at ${c.percent}% of the traffic`,
        c.phase === "running" ? ` (${c.requests} requests, ${c.errors} errors at this step)` : "", "."));
    box.append(h("ol", { class: "timeline", "aria-label": "canary transitions" }, c.transitions.map((t) =>
      h("li", { class: t.to_percent === 0 ? "back" : "" }, h("span", { class: "mono" }, when(t.at_ms)), ` ${t.from_percent}% → ${t.to_percent}%: ${t.reason}`))));
    if (c.phase === "running") {
      const reason = h("input", { type: "text", id: "reason-" + r.name, placeholder: "why", size: 30, disabled: !isAdmin() });
      box.append(h("div", { class: "actions" }, h("label", { for: "reason-" + r.name }, "Reason"), reason,
        confirmStep("Roll back now", `Send 0% to ${c.variant}?`, async () => {
          await act("POST", `/admin/routes/${enc(r.name)}/canary/rollback`, { reason: reason.value }, `${r.name}: canary rolled back`);
        }, true)));
    }
    return box;
  }

  function startCanary(r, replace) {
    const variant = h("select", { id: "cv-" + r.name, disabled: !isAdmin() }, r.variants.slice(1).concat(r.variants.slice(0, 1)).map((v) => h("option", { value: v.name }, v.name)));
    const steps = h("input", { type: "text", id: "cs-" + r.name, value: "10,50,100", size: 10, disabled: !isAdmin() });
    const stepS = h("input", { type: "number", id: "ct-" + r.name, value: 60, min: 0, disabled: !isAdmin() });
    const maxErr = h("input", { type: "number", id: "ce-" + r.name, value: 0.01, step: 0.001, min: 0, max: 1, disabled: !isAdmin() });
    return h("div", { class: "panel", "data-action": "start-canary" }, h("h3", {}, "Start a canary"), h("div", { class: "actions" },
      h("label", { for: "cv-" + r.name }, "Variant"), variant, h("label", { for: "cs-" + r.name }, "Steps %"), steps,
      h("label", { for: "ct-" + r.name }, "Seconds per step"), stepS, h("label", { for: "ce-" + r.name }, "Max error rate"), maxErr,
      confirmStep("Start", "Start the rollout (statistics start again)?", async () => {
        await replace((x) => {
          x.canary = { variant: variant.value, steps: steps.value.split(",").map((s) => Number(s.trim())), step_ms: Number(stepS.value) * 1000, min_requests: 100, max_error_rate: Number(maxErr.value) };
          return x;
        }, `${r.name}: canary started`);
      })));
  }

  // ---------------------------------------------------------------- drift
  async function drift(view) {
    view.append(h("h1", {}, "Drift"), h("p", { class: "muted" }, "Population stability index of each closed window of sampled live inputs against the training baseline the registry keeps with the version."));
    const { models } = await api("GET", "/admin/console/models");
    let shown = 0;
    for (const m of models.filter((m) => m.versions.some((v) => v.state === "READY"))) {
      let d;
      try { d = await api("GET", `/admin/models/${enc(m.name)}/drift`); } catch (_) { continue; }
      for (const v of d.versions) {
        shown++;
        view.append(driftCard(m.name, v));
      }
    }
    if (!shown) view.append(h("p", { class: "muted" }, "No loaded version has a training baseline."));
  }

  function bars(title, labels, baseline, live) {
    const max = Math.max(1e-9, ...baseline, ...live);
    return h("figure", {}, h("figcaption", {}, title, h("span", { class: "muted" }, " — training (blue) beside live (orange)")),
      h("div", { class: "bars" }, labels.map((label, i) => [
        h("span", { class: "muted" }, label),
        h("div", { class: "bar", style: null, "data-w": baseline[i], title: `training ${pct(baseline[i], 1)}` }),
        h("div", { class: "bar live", "data-w": live[i], title: `live ${pct(live[i], 1)}` }),
      ])));
  }

  function driftCard(model, v) {
    const w = v.last_window;
    const card = h("section", { class: "card", "data-drift": `${model}/${v.version}` }, h("h2", {}, `${model} version ${v.version}`));
    if (!w) {
      card.append(h("p", { class: "muted" }, `No window has closed yet (${v.open_window_rows} rows in the open one).`));
      return card;
    }
    card.append(h("p", {}, w.drifted ? h("strong", { class: "error" }, "Drifted: ") : h("strong", { class: "ok" }, "Within bounds: "),
      `largest feature PSI ${num(w.max_feature_psi, 3)}, class PSI ${num(w.class_psi, 3)}, threshold ${num(w.threshold, 2)}; `,
      `${w.features_over_threshold} of ${w.feature_psi.length} features over it (last window of ${w.rows} rows; ${v.open_window_rows} in the open one).`));
    const plot = h("div", { class: "plot" });
    card.append(plot);
    const hist = v.history || [];
    if (window.uPlot && hist.length) {
      const t = hist.map((p) => p.at_ms / 1000);
      charts.push(new uPlot({
        width: 640, height: 180,
        series: [{}, { label: "max feature PSI", stroke: "#1f5fbf" }, { label: "class PSI", stroke: "#d4722b" }, { label: "threshold", stroke: "#b42318", dash: [6, 4] }],
      }, [t, hist.map((p) => p.max_feature_psi), hist.map((p) => p.class_psi), hist.map(() => w.threshold)], plot));
    }
    const d = v.distributions;
    if (d) {
      const classes = d.baseline_classes.map((_, i) => "class " + i);
      const bins = d.baseline_bins.map((_, i) => i === 0 ? `< ${num(d.edges[0], 2)}` : i === d.edges.length ? `≥ ${num(d.edges[i - 1], 2)}` : `${num(d.edges[i - 1], 2)}–${num(d.edges[i], 2)}`);
      card.append(bars(`Feature ${d.feature_name || d.feature} (PSI ${num(d.feature_psi, 3)})`, bins, d.baseline_bins, d.live_bins),
        bars("Predicted classes", classes, d.baseline_classes, d.live_classes));
      for (const bar of card.querySelectorAll(".bar")) {
        const max = Math.max(...[...bar.parentNode.querySelectorAll(".bar")].map((b) => Number(b.dataset.w)), 1e-9);
        bar.style.width = (100 * Number(bar.dataset.w) / max).toFixed(1) + "%";
      }
    }
    return card;
  }

  // ---------------------------------------------------------------- audit
  async function audit(view) {
    view.append(h("h1", {}, "Audit"));
    const server = await api("GET", "/admin/audit");
    view.append(h("h2", {}, "Management calls to this server"), h("table", { "data-audit": "server" },
      h("thead", {}, h("tr", {}, ["Time", "Who", "Action", "Outcome", "From"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, server.entries.slice().reverse().map((e) => h("tr", {}, h("td", { class: "mono nowrap" }, e.time), h("td", {}, e.actor),
        h("td", { class: "mono" }, e.action), h("td", { class: e.outcome >= 400 ? "error" : "ok" }, e.outcome), h("td", { class: "mono" }, e.peer || "—"))))));
    try {
      const reg = await api("GET", "/admin/registry/audit");
      view.append(h("h2", {}, "Registry"), h("table", { "data-audit": "registry" },
        h("thead", {}, h("tr", {}, ["Time", "Who", "Action", "Model", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, reg.entries.slice().reverse().slice(0, 500).map((e) => h("tr", {}, h("td", { class: "mono nowrap" }, when(e.at)), h("td", {}, e.actor),
          h("td", { class: "mono" }, e.action), h("td", {}, e.model), h("td", { class: "mono detail" }, JSON.stringify(e.detail)))))));
    } catch (e) {
      if (e.status !== 404) throw e;
    }
    try {
      const { level } = await api("GET", "/admin/log-level");
      const input = h("input", { type: "text", id: "log-level", value: level, size: 40, disabled: !isAdmin() });
      view.append(h("h2", {}, "Log level"), h("div", { class: "actions", "data-action": "log-level" }, h("label", { for: "log-level" }, "Filter"), input,
        confirmStep("Apply", "Change the log filter?", async () => { await act("PUT", "/admin/log-level", { level: input.value }, "log level changed"); })));
    } catch (e) {
      if (e.status !== 404) throw e;
    }
  }

  // ---------------------------------------------------------------- shell
  const PAGES = { models, traffic, routes, drift, audit };

  let rendering = 0;

  async function render() {
    if (!token) return;
    // A newer render (another page asked for meanwhile) wins over one still loading.
    const mine = ++rendering;
    clearInterval(timer);
    timer = null;
    while (charts.length) charts.pop().destroy();
    const page = PAGES[location.hash.slice(1)] ? location.hash.slice(1) : "models";
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    const view = h("div", { "data-page": page });
    let refresh = null;
    try {
      refresh = await PAGES[page](view);
    } catch (e) {
      view.append(h("p", { class: "error", role: "alert" }, e.message));
    }
    if (mine !== rendering || !token) return;
    if (refresh) timer = setInterval(() => refresh().catch((e) => say(e.message)), 2000);
    const changed = $("view").dataset.loaded !== page;
    $("view").replaceChildren(view);
    $("view").dataset.loaded = page;
    if (changed) window.scrollTo(0, 0);
  }

  function signOut(why) {
    token = null;
    me = { name: "", scopes: [] };
    clearInterval(timer);
    $("view").replaceChildren();
    $("view").hidden = true;
    $("nav").hidden = true;
    $("logout").hidden = true;
    $("who").textContent = "";
    $("login").hidden = false;
    $("login-error").textContent = why || "";
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    try {
      me = await api("GET", "/admin/whoami");
    } catch (e) {
      signOut("Sign-in failed: " + e.message);
      return;
    }
    $("login").hidden = true;
    $("nav").hidden = false;
    $("logout").hidden = false;
    $("view").hidden = false;
    $("who").textContent = `${me.name} (${me.scopes.join(", ")})`;
    await render();
    $("view").focus();
  });
  $("logout").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", render);
})();

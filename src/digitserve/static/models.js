// digitserve models pages: the registry's models and versions, alias histories, what serves now (live),
// a version's report with a clickable confusion matrix, and two versions compared digit by digit.
// Plain ES2020, no dependencies, no build step. Reads only the JSON of /v1/registry, /v1/models and /v1/live.
"use strict";

(() => {
  const main = document.getElementById("main");
  const status = document.getElementById("status");
  const LIVE_EVERY_MS = 3000;
  const PAGE = 20;
  let liveTimer = null;

  // --- small helpers -------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "style") el.style.cssText = String(value);  // CSSOM: allowed by the pages' CSP
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status} for ${url}`);
    return body;
  }

  const pct = (x, digits = 2) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(digits)}%`);
  const num = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en"));
  const secs = (s) => (s === null || s === undefined ? "–" : s >= 120 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`);
  const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–");
  const versionUrl = (model, version) => `/models/${encodeURIComponent(model)}/${version}`;
  const api = (path) => `/v1/registry${path}`;

  function say(message) {
    status.textContent = message;
  }

  function show(title, ...content) {
    clearTimeout(liveTimer);
    document.title = `digitserve — ${title}`;
    main.replaceChildren(...content);
    main.setAttribute("aria-busy", "false");
  }

  function problem(err) {
    show("problem", h("section", { class: "card problem-card", role: "alert" },
      h("h1", {}, "Something went wrong"), h("p", {}, err.message), h("p", {}, h("a", { href: "/models" }, "All models"))));
  }

  function badges(aliases) {
    return h("span", { class: "badges" }, aliases.map((a) => h("span", { class: `badge badge-${a}` }, a)));
  }

  function stat(label, value, note) {
    return h("div", { class: "stat" }, h("p", { class: "stat-label" }, label), h("p", { class: "stat-value" }, value),
      note ? h("p", { class: "stat-note" }, note) : null);
  }

  // --- the overview: every model ------------------------------------------------------------------

  async function renderOverview() {
    const [registry, live] = await Promise.all([getJSON(api("/models?limit=100")), getJSON("/v1/live").catch(() => ({ models: {} }))]);
    const servedBy = new Map(Object.entries(live.models).filter(([, m]) => "serving" in m));
    const sections = [];
    const options = [];
    for (const model of registry.items) {
      const versions = await getJSON(api(`/models/${model.name}/versions?limit=${PAGE}`))
        .catch((err) => ({ total: 0, items: [], error: err.message }));
      versions.items.forEach((v) => options.push(`${model.name}:${v.version}`));
      sections.push(modelSection(model, versions, servedBy.get(model.name)));
    }
    show("models", h("h1", {}, "Models"), compareForm(options, options[0], options[1]), ...sections);
    startLive();
  }

  function modelSection(model, versions, served) {
    const aliasText = Object.entries(model.aliases).map(([a, v]) => `${a} → v${v}`).join(", ") || "no aliases";
    const tbody = h("tbody", {}, versions.items.map((v) => versionRow(model.name, v)));
    if (versions.error) tbody.append(h("tr", {}, h("td", { colspan: 8 }, versions.error)));
    else if (!versions.items.length) tbody.append(h("tr", {}, h("td", { colspan: 8 }, "Nothing published yet.")));
    const section = h("section", { class: "card model-card", "aria-labelledby": `model-${model.name}` },
      h("div", { class: "model-head" },
        h("h2", { id: `model-${model.name}` }, model.name),
        h("p", { class: "hint" }, `${model.versions} ${model.versions === 1 ? "version" : "versions"} · ${aliasText}`)),
      served ? h("div", { class: "live", id: `live-${model.name}`, role: "region", "aria-label": `${model.name} live numbers` },
        h("p", { class: "hint" }, "Live numbers arrive in a few seconds…"))
        : h("p", { class: "hint" }, "This server does not serve this model."),
      h("h3", {}, "Versions"),
      h("div", { class: "table-wrap" }, h("table", { class: "versions" },
        h("caption", { class: "visually-hidden" }, `Versions of ${model.name}, newest first`),
        h("thead", {}, h("tr", {}, ["Version", "Aliases", "Accuracy", "ECE", "Not a digit: MNIST / negatives",
          "Parameters", "Training", "Created"].map((c) => h("th", { scope: "col" }, c)))),
        tbody)));
    if (versions.total > versions.items.length) {
      let oldest = versions.items[versions.items.length - 1].version;
      section.append(moreButton(`Show older versions of ${model.name}`, versions, async () => {
        const next = await getJSON(api(`/models/${model.name}/versions?before=${oldest}&limit=${PAGE}`));
        const rows = next.items.map((v) => versionRow(model.name, v));
        tbody.append(...rows);
        if (next.items.length) oldest = next.items[next.items.length - 1].version;
        return { ...next, rows };
      }));
    }
    section.append(h("h3", {}, "Alias history"), timeline(model.name));
    return section;
  }

  function versionRow(model, v) {
    if (v.error) {
      return h("tr", {}, h("th", { scope: "row" }, `v${v.version}`), h("td", { colspan: 7 }, `unreadable: ${v.error}`));
    }
    const training = v.train_seconds ? `${secs(v.train_seconds)}${v.hardware ? ` on ${hardwareText(v.hardware)}` : ""}` : "–";
    return h("tr", {},
      h("th", { scope: "row" }, h("a", { href: versionUrl(model, v.version) }, `v${v.version}`)),
      h("td", {}, badges(v.aliases)),
      h("td", { class: "num" }, pct(v.accuracy)),
      h("td", { class: "num" }, pct(v.test_ece)),
      h("td", { class: "num" }, v.mnist_test_not_a_digit === null || v.mnist_test_not_a_digit === undefined ? "–"
        : `${pct(v.mnist_test_not_a_digit)} / ${pct(v.held_out_negatives_not_a_digit, 1)}`),
      h("td", { class: "num" }, num(v.params)),
      h("td", {}, training),
      h("td", {}, `${when(v.created_at)}${v.created_by ? ` by ${v.created_by}` : ""}`));
  }

  function hardwareText(hw) {
    if (typeof hw !== "object" || hw === null) return String(hw);
    if (hw.gpu || hw.device) return hw.gpu || hw.device;
    const cores = hw.cpu_count ? `${hw.cpu_count} ${hw.cpu_count === 1 ? "core" : "cores"}` : null;
    return [cores, hw.cpu].filter(Boolean).join(" ") || "?";
  }

  // "Show more" by a cursor (the oldest item shown), so what is added meanwhile shifts nothing.
  function moreButton(label, first, load) {
    let shown = first.items.length;
    const button = h("button", { type: "button", class: "button more" }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      const next = await load().catch((err) => { say(err.message); return null; });
      button.disabled = false;
      if (!next) return;
      shown += next.items.length;
      say(`${next.items.length} more shown`);
      if (next.items.length >= next.total) {  // that was the last page: focus what came, not the body
        const target = next.rows && next.rows.length ? next.rows[0].querySelector("a, th") : null;
        button.remove();
        if (target) { target.setAttribute("tabindex", "-1"); target.focus(); }
      }
    });
    return button;
  }

  function timeline(model) {
    const list = h("ol", { class: "timeline", "aria-label": `Alias moves of ${model}, newest first` });
    const box = h("div", {}, list);
    let oldest = null;
    const add = (events) => {
      const rows = events.items.map((e) => eventItem(e));
      list.append(...rows);
      if (events.items.length) oldest = events.items[events.items.length - 1].key;
      return rows;
    };
    getJSON(api(`/models/${model}/events?limit=${PAGE}`)).then((events) => {
      if (!events.total) list.replaceWith(h("p", { class: "hint" }, "No alias has moved yet."));
      add(events);
      if (events.total > events.items.length) {
        box.append(moreButton(`Show older alias moves of ${model}`, events, async () => {
          const next = await getJSON(api(`/models/${model}/events?before=${encodeURIComponent(oldest)}&limit=${PAGE}`));
          return { ...next, rows: add(next) };
        }));
      }
    }).catch((err) => list.replaceWith(h("p", { class: "hint" }, err.message)));
    return box;
  }

  function eventItem(e) {
    const automatic = e.action === "rollback" && String(e.actor || "").startsWith("digitserve server");
    const gate = e.gate || {};
    const candidate = gate.candidate || {};
    const gateText = gate.forced ? "gate bypassed (--force)" : gate.passed ? `gate passed, accuracy ${pct(candidate.accuracy)}`
      : e.action === "rollback" || e.action === "retire" ? null : "no gate";
    const holdout = gate.feedback_holdout && gate.feedback_holdout.samples
      ? `feedback holdout ${gate.feedback_holdout.candidate ? gate.feedback_holdout.candidate.correct : "–"}/${gate.feedback_holdout.samples}` : null;
    const ev = e.evidence || {};
    const agreement = ev.agreement !== undefined && ev.agreement !== null ? ev.agreement
      : ev.compared ? ev.agreed / ev.compared : null;
    const evidence = ev.compared !== undefined
      ? `live evidence: ${num(ev.compared)} compared${agreement !== null ? `, ${pct(agreement, 1)} agree` : ""}` : null;
    return h("li", { class: `event event-${e.action}${automatic ? " event-automatic" : ""}` },
      h("p", { class: "event-head" },
        h("span", { class: "badge" }, e.alias),
        h("strong", {}, ` ${e.from === null || e.from === undefined ? "unset" : `v${e.from}`} → v${e.to}`),
        h("span", { class: "event-action" }, automatic ? " automatic rollback" : ` ${e.action}`)),
      h("p", { class: "hint" }, `${when(e.at)} by ${e.actor || "?"}`),
      [gateText, holdout, evidence].filter(Boolean).length ? h("p", { class: "event-gate" }, [gateText, holdout, evidence].filter(Boolean).join(" · ")) : null,
      e.reason ? h("p", { class: "event-reason" }, e.reason) : null);
  }

  // --- live: what serves now (all from /v1/live: the metrics every worker shares) ----------------------

  function startLive() {
    let previous = null;
    const tick = async () => {
      try {
        const live = await getJSON("/v1/live");
        for (const [name, numbers] of Object.entries(live.models)) {
          const box = document.getElementById(`live-${name}`);
          if (box) box.replaceChildren(...liveView(numbers, previous && previous.models[name], previous ? live.at - previous.at : null));
        }
        previous = live;
      } catch (err) {
        say(`Live numbers unavailable: ${err.message}`);
      }
      liveTimer = setTimeout(tick, LIVE_EVERY_MS);  // the next tick only once this one is done
    };
    tick();
  }

  function quantile(now, before, q) {
    const earlier = before ? new Map(before.buckets) : new Map();
    const buckets = now.buckets.map(([le, count]) => [le === "+Inf" ? Infinity : Number(le), count - (earlier.get(le) || 0)])
      .sort((a, b) => a[0] - b[0]);
    const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (total <= 0) return null;
    const found = buckets.find(([, count]) => count >= q * total);
    return found ? found[0] : null;
  }

  function liveView(model, before, elapsed) {
    const serving = model.serving;
    const stats = [stat("Serving", serving ? `v${serving}` : "not ready", model.alias || "")];
    const routes = { ...model.routes };
    const main = `${model.alias}:${serving}`;
    if (serving && !routes[main]) routes[main] = { alias: model.alias, version: serving, count: 0, sum: 0, buckets: [] };
    for (const [key, route] of Object.entries(routes)) {
      let old = before && before.routes[key];
      const restarted = Boolean(old && old.count > route.count);  // its counters began again: no rate this time
      if (restarted) old = null;
      const count = route.count - (old ? old.count : 0);
      const rate = elapsed && !restarted ? count / elapsed : null;
      const latency = !before ? "measuring…" : count > 0
        ? `p50 ≤ ${ms(quantile(route, old, 0.5))} · p99 ≤ ${ms(quantile(route, old, 0.99))}` : "no requests lately";
      stats.push(stat(`${route.alias} v${route.version}`, rate === null ? "…" : `${Math.max(rate, 0).toFixed(1)} req/s`, latency));
    }
    const batch = model.batch || { sum: 0, count: 0 };
    const prior = before && before.batch && before.batch.count <= batch.count ? before.batch : { sum: 0, count: 0 };
    const batches = batch.count - prior.count;
    stats.push(stat("Mean batch", before && batches > 0 ? ((batch.sum - prior.sum) / batches).toFixed(1) : "–", "images per forward pass"));
    const queued = Object.values(model.queue || {}).reduce((a, b) => a + b, 0);
    stats.push(stat("Queue", num(queued), "images waiting now"));
    const fb = model.feedback;
    stats.push(stat("Feedback", fb && fb.samples ? pct(fb.accuracy, 0) : "–",
      fb && fb.samples ? `right in ${fb.samples} corrections (${fb.accepted} accepted)` : "no corrections yet"));
    for (const [alias, version] of Object.entries(model.aliases || {})) {
      if (alias === model.alias) continue;
      const pair = Object.entries(model.compared || {}).find(([k]) => k.endsWith(`:v${serving}-v${version}`));
      const agree = pair && pair[1].compared ? `${pct(pair[1].agreed / pair[1].compared, 1)} agree on ${num(pair[1].compared)}`
        : "nothing compared yet";
      stats.push(stat(`${alias[0].toUpperCase()}${alias.slice(1)}`, `v${version}`, agree));
    }
    return [h("div", { class: "stats" }, stats)];
  }

  const ms = (s) => (s === null ? "–" : s === Infinity ? "> 10 s" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s} s`);

  // --- compare form --------------------------------------------------------------------------------

  function compareForm(choices, a, b) {
    const options = [...new Set([...choices, a, b].filter(Boolean))];  // what the page shows is always selectable
    const select = (name, label, chosen) => h("label", { class: "field" }, h("span", {}, label),
      h("select", { name }, options.map((o) => h("option", { value: o, selected: o === chosen }, o.replace(":", " v")))));
    return h("form", { class: "card compare-form", action: "/models/compare", method: "get", "aria-label": "Compare two versions" },
      h("h2", {}, "Compare two versions"),
      h("div", { class: "fields" }, select("a", "First version", a), select("b", "Second version", b),
        h("button", { type: "submit", class: "button button-primary" }, "Compare")));
  }

  window.digitserveModels = { h, getJSON, show, problem, stat, badges, pct, num, secs, when, api, versionUrl,
    compareForm, hardwareText, say };

  async function route() {
    const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);  // ["models", ...]
    if (parts.length === 2 && parts[1] === "compare") return window.digitserveVersion.renderCompare();
    if (parts.length === 3 && /^\d+$/.test(parts[2])) return window.digitserveVersion.renderVersion(parts[1], Number(parts[2]));
    return renderOverview();
  }

  document.addEventListener("DOMContentLoaded", () => route().catch(problem));
})();

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
    clearInterval(liveTimer);
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
    const [registry, served] = await Promise.all([getJSON(api("/models?limit=100")), getJSON("/v1/models").catch(() => [])]);
    const servedBy = new Map(served.map((m) => [m.name, m]));
    const sections = [];
    const options = [];
    for (const model of registry.items) {
      const versions = await getJSON(api(`/models/${model.name}/versions?limit=${PAGE}`));
      versions.items.forEach((v) => options.push(`${model.name}:${v.version}`));
      sections.push(modelSection(model, versions, servedBy.get(model.name)));
    }
    show("models", h("h1", {}, "Models"), compareForm(options, options[0], options[1]), ...sections);
    startLive(servedBy);
  }

  function modelSection(model, versions, served) {
    const aliasText = Object.entries(model.aliases).map(([a, v]) => `${a} → v${v}`).join(", ") || "no aliases";
    const tbody = h("tbody", {}, versions.items.map((v) => versionRow(model.name, v)));
    const section = h("section", { class: "card model-card", "aria-labelledby": `model-${model.name}` },
      h("div", { class: "model-head" },
        h("h2", { id: `model-${model.name}` }, model.name),
        h("p", { class: "hint" }, `${model.versions} ${model.versions === 1 ? "version" : "versions"} · ${aliasText}`)),
      served ? h("div", { class: "live", id: `live-${model.name}`, "aria-label": `${model.name} live numbers` },
        h("p", { class: "hint" }, "Live numbers arrive in a few seconds…"))
        : h("p", { class: "hint" }, "This server does not serve this model."),
      h("h3", {}, "Versions"),
      h("div", { class: "table-wrap" }, h("table", { class: "versions" },
        h("caption", { class: "visually-hidden" }, `Versions of ${model.name}, newest first`),
        h("thead", {}, h("tr", {}, ["Version", "Aliases", "Accuracy", "ECE", "Not a digit: MNIST / negatives",
          "Parameters", "Training", "Created"].map((c) => h("th", { scope: "col" }, c)))),
        tbody)));
    if (versions.total > versions.items.length) {
      section.append(moreButton(`Show older versions of ${model.name}`, versions, async (offset) => {
        const next = await getJSON(api(`/models/${model.name}/versions?offset=${offset}&limit=${PAGE}`));
        tbody.append(...next.items.map((v) => versionRow(model.name, v)));
        return next;
      }));
    }
    section.append(h("h3", {}, "Alias history"), timeline(model.name));
    return section;
  }

  function versionRow(model, v) {
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

  function moreButton(label, first, load) {
    let shown = first.items.length;
    const button = h("button", { type: "button", class: "button more" }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      const next = await load(shown).catch((err) => { say(err.message); return null; });
      button.disabled = false;
      if (!next) return;
      shown += next.items.length;
      say(`${shown} of ${next.total} shown`);
      if (shown >= next.total) button.remove();
    });
    return button;
  }

  function timeline(model) {
    const list = h("ol", { class: "timeline", "aria-label": `Alias moves of ${model}, newest first` });
    const box = h("div", {}, list);
    const add = (events) => list.append(...events.items.map((e) => eventItem(e)));
    getJSON(api(`/models/${model}/events?limit=${PAGE}`)).then((events) => {
      if (!events.total) list.replaceWith(h("p", { class: "hint" }, "No alias has moved yet."));
      add(events);
      if (events.total > events.items.length) {
        box.append(moreButton(`Show older alias moves of ${model}`, events, async (offset) => {
          const next = await getJSON(api(`/models/${model}/events?offset=${offset}&limit=${PAGE}`));
          add(next);
          return next;
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
    const evidence = e.evidence && e.evidence.compared !== undefined
      ? `live evidence: ${num(e.evidence.compared)} compared${e.evidence.agreement !== undefined && e.evidence.agreement !== null ? `, ${pct(e.evidence.agreement)} agree` : ""}` : null;
    return h("li", { class: `event event-${e.action}${automatic ? " event-automatic" : ""}` },
      h("p", { class: "event-head" },
        h("span", { class: "badge" }, e.alias),
        h("strong", {}, ` ${e.from === null || e.from === undefined ? "unset" : `v${e.from}`} → v${e.to}`),
        h("span", { class: "event-action" }, automatic ? " automatic rollback" : ` ${e.action}`)),
      h("p", { class: "hint" }, `${when(e.at)} by ${e.actor || "?"}`),
      [gateText, holdout, evidence].filter(Boolean).length ? h("p", { class: "event-gate" }, [gateText, holdout, evidence].filter(Boolean).join(" · ")) : null,
      e.reason ? h("p", { class: "event-reason" }, e.reason) : null);
  }

  // --- live: what serves now ---------------------------------------------------------------------------

  function startLive(servedBy) {
    let previous = null;
    const tick = async () => {
      try {
        const [live, models] = await Promise.all([getJSON("/v1/live"), getJSON("/v1/models")]);
        for (const info of models) {
          const box = document.getElementById(`live-${info.name}`);
          if (box) box.replaceChildren(...liveView(info, live, previous));
        }
        previous = live;
      } catch (err) {
        say(`Live numbers unavailable: ${err.message}`);
      }
    };
    tick();
    liveTimer = setInterval(tick, LIVE_EVERY_MS);
  }

  function quantile(now, before, q) {
    const buckets = now.buckets.map(([le, count], i) => [Number(le === "+Inf" ? Infinity : le),
      count - (before ? before.buckets[i][1] : 0)]).sort((a, b) => a[0] - b[0]);
    const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (!total) return null;
    const found = buckets.find(([, count]) => count >= q * total);
    return found ? found[0] : null;
  }

  function liveView(info, live, previous) {
    const model = live.models[info.name] || { routes: {}, batch: {}, queue: {} };
    const before = previous && previous.models[info.name];
    const elapsed = previous ? live.at - previous.at : null;
    const serving = info.serving ? info.serving.version : null;
    const stats = [stat("Serving", serving ? `v${serving}` : "not ready", info.alias)];
    for (const [key, route] of Object.entries(model.routes)) {
      const old = before && before.routes[key];
      const count = route.count - (old ? old.count : 0);
      const rate = elapsed ? count / elapsed : null;
      const p50 = quantile(route, old, 0.5);
      const p99 = quantile(route, old, 0.99);
      const latency = count > 0 ? `p50 ≤ ${ms(p50)} · p99 ≤ ${ms(p99)}` : "no requests lately";
      stats.push(stat(`${route.alias} v${route.version}`, rate === null ? "…" : `${rate.toFixed(1)} req/s`, latency));
    }
    const batches = model.batch.count - (before ? before.batch.count : 0);
    const images = model.batch.sum - (before ? before.batch.sum : 0);
    stats.push(stat("Mean batch", batches > 0 ? (images / batches).toFixed(1) : "–", "images per forward pass"));
    const queued = Object.values(model.queue).reduce((a, b) => a + b, 0);
    stats.push(stat("Queue", num(queued), "images waiting now"));
    const mine = (info.versions || []).find((v) => v.version === serving);
    const fb = mine && mine.feedback;
    stats.push(stat("Feedback", fb && fb.samples ? pct(fb.accuracy, 0) : "–",
      fb && fb.samples ? `right in ${fb.samples} corrections (${fb.accepted} accepted)` : "no corrections yet"));
    const rollouts = info.rollouts || {};
    if (rollouts.canary) stats.push(rolloutStat("Canary", rollouts.canary));
    if (rollouts.shadow) stats.push(rolloutStat("Shadow", rollouts.shadow));
    return [h("div", { class: "stats" }, stats)];
  }

  function rolloutStat(name, r) {
    if (!r.version) {
      const retired = Object.keys(r.rolled_back_here || {});
      return stat(name, "none", retired.length ? `rolled back here: v${retired.join(", v")}` : `alias ${r.alias}`);
    }
    const a = r.agreement && r.agreement.compared !== undefined ? r.agreement
      : Object.values(r.agreement || {})[0];
    const agree = a && a.compared ? `${pct(a.agreed / a.compared, 1)} agree on ${num(a.compared)}` : "nothing compared yet";
    return stat(name, `v${r.version} · ${r.percent}%`, agree);
  }

  const ms = (s) => (s === null ? "–" : s === Infinity ? "> 10 s" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s} s`);

  // --- compare form --------------------------------------------------------------------------------

  function compareForm(options, a, b) {
    const select = (name, label, chosen) => h("label", { class: "field" }, h("span", {}, label),
      h("select", { name }, options.map((o) => h("option", { value: o, selected: o === chosen }, o.replace(":", " v")))));
    return h("form", { class: "card compare-form", action: "/models/compare", method: "get", "aria-label": "Compare two versions" },
      h("h2", {}, "Compare two versions"),
      h("div", { class: "fields" }, select("a", "First version", a), select("b", "Second version", b),
        h("button", { type: "submit", class: "button button-primary" }, "Compare")));
  }

  window.digitserveModels = { h, getJSON, show, problem, stat, badges, pct, num, secs, when, api, versionUrl,
    compareForm, hardwareText, say };

  function route() {
    const parts = location.pathname.split("/").filter(Boolean);  // ["models", ...]
    if (parts.length <= 1) return renderOverview();
    if (parts[1] === "compare") return window.digitserveVersion.renderCompare();
    if (parts.length === 3 && /^\d+$/.test(parts[2])) return window.digitserveVersion.renderVersion(decodeURIComponent(parts[1]), Number(parts[2]));
    return renderOverview();
  }

  document.addEventListener("DOMContentLoaded", () => route().catch(problem));
})();

// digitserve models pages, part two: one version (its report and a clickable confusion matrix) and two
// versions compared. Loaded after models.js, whose helpers it uses.
"use strict";

(() => {
  const M = () => window.digitserveModels;
  const CELL_PAGE = 40;

  // --- one version ---------------------------------------------------------------------------------

  async function renderVersion(model, version) {
    const { h, getJSON, show, api, badges, pct, num, secs, when, hardwareText, stat } = M();
    const v = await getJSON(api(`/models/${encodeURIComponent(model)}/versions/${version}`));
    const metrics = v.metrics || {};
    const calibration = metrics.calibration || {};
    const nad = metrics.not_a_digit || {};
    const stats = h("div", { class: "stats" },
      stat("Test accuracy", pct(v.accuracy), `${num(v.errors)} errors in ${num(metrics.num_examples || 10000)}`),
      stat("Calibration (ECE)", pct(v.test_ece), v.temperature ? `temperature ${v.temperature}` : "not calibrated"),
      stat("Not a digit", v.mnist_test_not_a_digit === null || v.mnist_test_not_a_digit === undefined ? "–"
        : `${pct(v.mnist_test_not_a_digit)} of digits`, v.held_out_negatives_not_a_digit !== null && v.held_out_negatives_not_a_digit !== undefined
        ? `${pct(v.held_out_negatives_not_a_digit, 1)} of held-out negatives` : "no not-a-digit rule"),
      stat("Parameters", num(v.params), v.architecture),
      stat("Training", secs(v.train_seconds), v.hardware ? hardwareText(v.hardware) : ""),
      stat("Created", when(v.created_at), v.created_by ? `by ${v.created_by}` : ""));
    const head = h("div", { class: "version-head" },
      h("nav", { "aria-label": "Breadcrumb", class: "breadcrumb" },
        h("a", { href: "/models" }, "Models"), " › ", h("span", {}, model), " › ", h("span", { "aria-current": "page" }, `v${version}`)),
      h("h1", {}, `${model} v${version}`, " ", badges(v.aliases)),
      h("p", { class: "hint" }, [v.git_commit ? `commit ${String(v.git_commit).slice(0, 10)}` : null,
        v.smoke ? "a --smoke run" : null, v.feedback ? `trained with ${v.feedback.train} feedback samples` : null,
        nad.threshold ? `not-a-digit threshold ${nad.threshold}` : null, calibration.method ? `calibration: ${calibration.method}` : null]
        .filter(Boolean).join(" · ")),
      h("p", {}, h("a", { class: "button", href: `/models/compare?a=${model}:${version}` }, "Compare with another version")));
    const sections = [head, h("section", { class: "card" }, h("h2", {}, "Numbers"), stats)];
    sections.push(await matrixSection(model, version, v, metrics));
    if (metrics.per_class) sections.push(perClassSection(metrics.per_class));
    sections.push(reportSection(model, version, v.report));
    show(`${model} v${version}`, ...sections);
  }

  async function matrixSection(model, version, v, metrics) {
    const { h, num } = M();
    const section = h("section", { class: "card", "aria-labelledby": "matrix-title" }, h("h2", { id: "matrix-title" }, "Confusion matrix"));
    const confusion = metrics.confusion_matrix;
    if (!v.test_samples || !confusion) {
      section.append(h("p", { class: "hint" }, "This version was published before its report kept what it answered for each "
        + "test digit, so its matrix is the picture below (training/report_samples.py adds the data)."));
      return section;
    }
    section.append(h("p", { class: "hint", id: "matrix-hint" }, "Rows: the true digit. Columns: what the version answered. "
      + "Choose a cell to see its digits, least confident first."));
    const cells = h("div", { class: "cell-digits", id: "cell-digits" });
    const cellFor = (count, t, p) => {
      if (!count) {
        return h("td", {}, h("span", { class: "zero", "aria-hidden": "true" }, "·"),
          h("span", { class: "visually-hidden" }, `true ${t}, answered ${p}: none`));
      }
      const button = h("button", {
        type: "button", class: "cell", "data-true": t, "data-predicted": p, "aria-pressed": "false",
        "aria-label": `true ${t}, answered ${p}: ${count} digits`,
        onclick: () => {
          table.querySelectorAll("button.cell[aria-pressed=true]").forEach((b) => b.setAttribute("aria-pressed", "false"));
          button.setAttribute("aria-pressed", "true");
          openCell(model, version, t, p, cells, 0);
        },
      }, num(count));
      return h("td", { class: t === p ? "diag" : "err" }, button);
    };
    const header = h("tr", {}, h("td", {}, h("span", { class: "visually-hidden" }, "true digit, then answer")),
      [...Array(10).keys()].map((d) => h("th", { scope: "col" }, `→${d}`)));
    const rows = confusion.map((row, t) => h("tr", {}, h("th", { scope: "row" }, String(t)),
      row.map((count, p) => cellFor(count, t, p))));
    const table = h("table", { class: "matrix", "aria-describedby": "matrix-hint" },
      h("caption", { class: "visually-hidden" }, `Confusion matrix of ${model} v${version}`),
      h("thead", {}, header), h("tbody", {}, rows));
    section.append(h("div", { class: "table-wrap" }, table), cells);
    return section;
  }

  let opened = 0;  // the latest cell asked for: an older answer arriving late is dropped

  async function openCell(model, version, t, p, box, offset) {
    const { h, getJSON, api, pct, say } = M();
    const mine = ++opened;
    box.setAttribute("aria-busy", "true");
    const url = api(`/models/${model}/versions/${version}/confusion/${t}/${p}?offset=${offset}&limit=${CELL_PAGE}`);
    const cell = await getJSON(url).catch((err) => ({ error: err.message }));
    if (mine !== opened) return;
    box.setAttribute("aria-busy", "false");
    if (cell.error) {
      box.replaceChildren(h("p", { role: "alert" }, cell.error));
      return;
    }
    const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
    const title = `True ${t}, answered ${p}: ${t === p ? plural(cell.total, "right answer", "right answers") : plural(cell.total, "error", "errors")}`;
    const figures = cell.items.map((d) => h("figure", { class: "digit-tile", "data-index": d.index },
      d.image ? h("img", { src: d.image, width: 56, height: 56, alt: `test digit ${d.index}: a ${d.label}, answered ${d.predicted}` })
        : h("span", { class: "no-image" }, "no image kept"),
      h("figcaption", {}, `${pct(d.confidence, 0)}${d.is_digit ? "" : " · not a digit"}`, h("br"), `#${d.index}`)));
    const note = t === p && cell.with_images < cell.total
      ? h("p", { class: "hint" }, `The report keeps the pixels of every error and of the ${cell.with_images} least confident right answers here.`) : null;
    const nav = [];
    if (offset > 0) nav.push(h("button", { type: "button", class: "button", onclick: () => openCell(model, version, t, p, box, Math.max(0, offset - CELL_PAGE)) }, "Previous"));
    if (offset + cell.items.length < cell.total) nav.push(h("button", { type: "button", class: "button", onclick: () => openCell(model, version, t, p, box, offset + CELL_PAGE) }, "Next"));
    const parts = [h("h3", { id: "cell-title", tabindex: "-1" }, title),
      h("p", { class: "hint" }, `${offset + 1}–${offset + cell.items.length} of ${cell.total}, least confident first; confidence under each digit.`),
      note, h("div", { class: "gallery" }, figures), nav.length ? h("div", { class: "pager" }, nav) : null];
    box.replaceChildren(...parts.filter(Boolean));
    box.querySelector("#cell-title").focus();
    say(title);
  }

  function perClassSection(perClass) {
    const { h, pct, num } = M();
    return h("section", { class: "card" }, h("h2", {}, "Each digit"), h("div", { class: "table-wrap" }, h("table", { class: "versions" },
      h("caption", { class: "visually-hidden" }, "Precision and recall of each digit"),
      h("thead", {}, h("tr", {}, ["Digit", "Precision", "Recall", "Test digits"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, Object.entries(perClass).map(([d, c]) => h("tr", {}, h("th", { scope: "row" }, d),
        h("td", { class: "num" }, pct(c.precision)), h("td", { class: "num" }, pct(c.recall)), h("td", { class: "num" }, num(c.support))))))));
  }

  const CAPTIONS = {
    "confusion_matrix.png": "Confusion matrix (errors coloured)",
    "misclassified.png": "Every test error: true → answered (confidence)",
    "curves.png": "Loss and accuracy per epoch",
    "reliability.png": "Reliability: confidence against accuracy, before and after calibration",
    "not_a_digit.png": "What the not-a-digit threshold turns away, and what it lets through",
  };

  function reportSection(model, version, files) {
    const { h, api } = M();
    const pngs = (files || []).filter((f) => f.endsWith(".png"));
    return h("section", { class: "card" }, h("h2", {}, "Report"),
      pngs.length ? h("div", { class: "report" }, pngs.map((f) => h("figure", {},
        h("img", { src: api(`/models/${model}/versions/${version}/report/${f}`), alt: CAPTIONS[f] || f, loading: "lazy" }),
        h("figcaption", {}, CAPTIONS[f] || f)))) : h("p", { class: "hint" }, "No plots in this version's report."));
  }

  // --- two versions compared -------------------------------------------------------------------------

  async function renderCompare() {
    const { h, getJSON, show, api, pct, num, compareForm } = M();
    const query = new URLSearchParams(location.search);
    const options = [];
    const registry = await getJSON(api("/models?limit=100"));
    for (const model of registry.items) {
      const versions = await getJSON(api(`/models/${model.name}/versions?limit=100`));
      versions.items.forEach((v) => options.push(`${model.name}:${v.version}`));
    }
    const a = query.get("a") || options[0];
    const b = query.get("b") || options.find((o) => o !== a);
    const form = compareForm(options, a, b);
    if (!a || !b) return show("compare", h("h1", {}, "Compare"), form);
    const c = await getJSON(api(`/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}&limit=60`)).catch((err) => ({ error: err.message }));
    const title = `${a.replace(":", " v")} and ${b.replace(":", " v")}`;
    if (c.error) return show("compare", h("h1", {}, "Compare"), form, h("p", { class: "card", role: "alert" }, c.error));
    const name = (card, ref) => `${ref.split(":")[0]} v${card.version}`;
    const [na, nb] = [name(c.a, a), name(c.b, b)];
    const speed = (card) => card.metrics && card.metrics.images_per_second ? `${num(Math.round(card.metrics.images_per_second))} img/s` : "–";
    const rows = [["Test accuracy", pct(c.a.accuracy), pct(c.b.accuracy)], ["Errors", num(c.a.errors), num(c.b.errors)],
      ["Calibration (ECE)", pct(c.a.test_ece), pct(c.b.test_ece)], ["Parameters", num(c.a.params), num(c.b.params)],
      ["Evaluation speed (training machine)", speed(c.a), speed(c.b)], ["Architecture", c.a.architecture, c.b.architecture]];
    const summary = h("section", { class: "card" }, h("h2", {}, "Side by side"), h("div", { class: "table-wrap" }, h("table", { class: "versions" },
      h("caption", { class: "visually-hidden" }, title),
      h("thead", {}, h("tr", {}, h("td"), h("th", { scope: "col" }, na), h("th", { scope: "col" }, nb))),
      h("tbody", {}, rows.map(([label, x, y]) => h("tr", {}, h("th", { scope: "row" }, label), h("td", { class: "num" }, x), h("td", { class: "num" }, y)))))),
      h("p", {}, `Both right on ${num(c.both_right)} test digits, both wrong on ${num(c.both_wrong)}; only ${na} right on ${num(c.only_a_right)}, only ${nb} right on ${num(c.only_b_right)}.`));
    const digits = h("section", { class: "card" }, h("h2", {}, "Accuracy on each digit"), h("div", { class: "table-wrap" }, h("table", { class: "versions per-digit" },
      h("caption", { class: "visually-hidden" }, "Accuracy on each digit"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Digit"), h("th", { scope: "col" }, na), h("th", { scope: "col" }, nb))),
      h("tbody", {}, [...Array(10).keys()].map((d) => h("tr", {}, h("th", { scope: "row" }, String(d)),
        [c.per_digit_accuracy.a[d], c.per_digit_accuracy.b[d]].map((x) => h("td", { class: "num" },
          h("span", { class: "bar", style: `--w:${Math.max(0, (x - 0.95) / 0.05) * 100}%` }), pct(x)))))))));
    const gallery = (list, count, right, wrong, id) => h("section", { class: "card", "aria-labelledby": id },
      h("h2", { id }, `${right} right, ${wrong} wrong (${num(count)})`),
      list.length ? h("div", { class: "gallery" }, list.map((d) => h("figure", { class: "digit-tile", "data-index": d.index },
        h("img", { src: d.image, width: 56, height: 56, alt: `test digit ${d.index}: a ${d.label}; ${wrong} answered ${d.predicted}` }),
        h("figcaption", {}, `${d.label} → ${d.predicted}`, h("br"), `#${d.index}`)))) : h("p", { class: "hint" }, "None."),
      count > list.length ? h("p", { class: "hint" }, `The first ${list.length} of ${num(count)}.`) : null);
    show(`compare ${title}`, h("h1", {}, `Compare ${title}`), form, summary, digits,
      gallery(c.a_right_b_wrong, c.only_a_right, na, nb, "a-right"), gallery(c.b_right_a_wrong, c.only_b_right, nb, na, "b-right"));
  }

  window.digitserveVersion = { renderVersion, renderCompare };
})();

// digitserve web page: draw or upload a digit, ask every model on the page in parallel, show what each saw.
// Plain ES2020, no dependencies, no build step. The API is /v1/models/{model}/predict (see /docs).
"use strict";

(() => {
  const API = "/v1/models";
  const PREDICT_DELAY_MS = 250; // after the last stroke: a digit drawn in several strokes makes one request
  const MAX_RETRY_AFTER_S = 5;
  const INK = "#111";

  const canvas = document.getElementById("pad");
  const ctx = canvas.getContext("2d");
  const lineWidth = canvas.width * 0.06; // a thick pen: about MNIST's stroke width once the digit is 20px tall
  const undoButton = document.getElementById("undo");
  const clearButton = document.getElementById("clear");
  const fileInput = document.getElementById("file");
  const dropzone = document.getElementById("dropzone");
  const source = document.getElementById("source");
  const announcer = document.getElementById("announce");
  const panels = new Map([...document.querySelectorAll(".panel")].map((el) => [el.dataset.model, buildPanel(el)]));
  const feedbackBox = document.getElementById("feedback");
  const feedbackChoices = feedbackBox.querySelector(".feedback-choices");
  const feedbackStatus = document.getElementById("feedback-status");
  const NOT_A_DIGIT = "not_a_digit";

  // What is on the pad: an uploaded picture (sent as-is while nothing is drawn over it) and strokes.
  const pad = { strokes: [], drawing: null, pointerId: null, upload: null };
  let predictTimer = null;
  let inFlight = null; // AbortController of the current round of requests
  let round = 0;

  // --- panels -------------------------------------------------------------------------------

  function buildPanel(el) {
    const model = el.dataset.model;
    el.append(document.getElementById("panel-template").content.cloneNode(true));
    const q = (selector) => el.querySelector(selector);
    q(".panel-title").textContent = el.dataset.title || model;
    q(".panel-title").id = `${model}-title`;
    q(".panel-subtitle").textContent = el.dataset.subtitle || "";
    const bars = [];
    for (let digit = 0; digit < 10; digit++) {
      const li = document.createElement("li");
      li.innerHTML = '<span class="bar-label"></span><span class="bar-track" aria-hidden="true"><span class="bar-fill"></span></span>'
        + '<span class="bar-value"></span>';
      li.querySelector(".bar-label").textContent = String(digit);
      q(".bars").append(li);
      bars.push(li);
    }
    const panel = {
      el, model, title: el.dataset.title || model, bars,
      digit: q(".digit"), confidence: q(".confidence"), version: q(".version"),
      input: q(".model-input img"), error: q(".error"), timing: q(".timing"),
    };
    resetPanel(panel);
    return panel;
  }

  function setState(panel, state) {
    panel.el.dataset.state = state;
    panel.el.setAttribute("aria-busy", String(state === "pending"));
  }

  function setBars(panel, probabilities, top) {
    panel.bars.forEach((li, digit) => {
      const p = probabilities ? probabilities[digit] : 0;
      li.querySelector(".bar-fill").style.width = `${(p * 100).toFixed(1)}%`;
      li.querySelector(".bar-value").textContent = probabilities ? percent(p) : "";
      li.classList.toggle("top", digit === top);
    });
  }

  // The panels of models this server serves (the others are hidden once /v1/models says so).
  function activePanels() {
    return [...panels.values()].filter((panel) => !panel.el.hidden);
  }

  function resetPanel(panel) {
    panel.answer = null;
    setState(panel, "idle");
    panel.digit.textContent = "–";
    panel.confidence.textContent = "Waiting for a digit";
    panel.input.hidden = true;
    panel.input.removeAttribute("src");
    panel.error.hidden = true;
    panel.timing.textContent = "";
    setBars(panel, null, -1);
  }

  function showVersion(panel, version, alias) {
    panel.version.textContent = `v${version}${alias ? ` · ${alias}` : ""}`;
    panel.version.title = `${panel.title}: registry version ${version}${alias ? ` (alias ${alias})` : ""}`;
  }

  function showPrediction(panel, body, ms) {
    const prediction = body.predictions[0];
    const digit = prediction.is_digit !== false;
    panel.answer = {
      model: body.model, version: body.version, alias: body.alias,
      predicted: digit ? prediction.label : null, image: prediction.model_input,
    };
    setState(panel, digit ? "done" : "not-digit");
    panel.error.hidden = digit;
    if (digit) {
      panel.digit.textContent = String(prediction.label);
      panel.confidence.textContent = `${percent(prediction.confidence)} confident`;
    } else {
      panel.digit.textContent = "✗";
      panel.confidence.textContent = "This does not look like a digit";
      panel.error.textContent = `No digit reaches the model's confidence threshold. Its closest guess is ` +
        `${prediction.best_guess}, at ${percent(prediction.confidence)}.`;
    }
    setBars(panel, prediction.probabilities, prediction.best_guess);
    showVersion(panel, body.version, body.alias);
    if (prediction.model_input) {
      panel.input.src = `data:image/png;base64,${prediction.model_input}`;
      panel.input.alt = `The 28 by 28 pixel image the ${panel.title} saw`;
      panel.input.hidden = false;
    }
    panel.timing.textContent = `${body.model} v${body.version} answered in ${Math.round(ms)} ms`;
    if (!digit) {
      return `${panel.title}: this does not look like a digit (closest guess ${prediction.best_guess}, ` +
        `${percent(prediction.confidence)}).`;
    }
    return `${panel.title} reads ${prediction.label}, ${percent(prediction.confidence)} confident.`;
  }

  function showError(panel, problem) {
    panel.answer = null;
    setState(panel, "error");
    panel.digit.textContent = "?";
    panel.confidence.textContent = problem.title;
    panel.error.textContent = problem.detail;
    panel.error.hidden = !problem.detail;
    panel.input.hidden = true;
    panel.timing.textContent = "";
    setBars(panel, null, -1);
    return `${panel.title}: ${problem.title}. ${problem.detail}`;
  }

  function percent(p) {
    const value = p * 100;
    return `${value >= 99.95 || value < 0.05 ? value.toFixed(0) : value.toFixed(1)}%`;
  }

  // --- talking to the API ---------------------------------------------------------------------

  function describeError(status, body) {
    const message = ((body && body.error) || "").replace(/^images\[\d+\]:\s*/, "");
    const fromUpload = pad.upload && pad.strokes.length === 0;
    if (/no digit/i.test(message)) {
      return {
        title: fromUpload ? "No digit found in that image" : "No digit found — draw something",
        detail: fromUpload ? "Try a photo with one dark digit on light paper, filling more of the frame." : "",
      };
    }
    const titles = {
      404: "This model is not served here",
      413: "That image is too large",
      415: "That file type is not supported",
      422: "That image could not be read",
      503: "The model is busy or still loading",
      504: "The model took too long to answer",
    };
    const title = titles[status] || `Something went wrong (HTTP ${status})`;
    return { title, detail: message || (status === 503 ? "Try again in a moment." : "") };
  }

  function retryDelayMs(response, attempt) {
    if (response.status !== 503 || attempt > 0) return null;
    const seconds = Number(response.headers.get("Retry-After") || 1);
    return Math.min(Number.isFinite(seconds) ? seconds : 1, MAX_RETRY_AFTER_S) * 1000;
  }

  async function askModel(panel, image, signal) {
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      const response = await fetch(`${API}/${encodeURIComponent(panel.model)}/predict`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ images: [image], top_k: 3, return_input: true }),
        signal,
      });
      const body = await response.json().catch(() => null);
      if (response.ok) return { body, ms: performance.now() - started };
      const delay = retryDelayMs(response, attempt);
      if (delay === null) return { problem: describeError(response.status, body) };
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  async function predictNow() {
    const image = currentImage();
    if (!image) return resetAll();
    invalidate();
    const controller = (inFlight = new AbortController());
    const thisRound = round;
    activePanels().forEach((panel) => setState(panel, "pending"));
    const lines = await Promise.all(activePanels().map(async (panel) => {
      let result;
      try {
        result = await askModel(panel, image, controller.signal);
      } catch (err) {
        if (err.name === "AbortError") return null;
        result = { problem: { title: "Cannot reach the server", detail: "Check that digitserve is running." } };
      }
      if (thisRound !== round) return null;
      return result.problem ? showError(panel, result.problem) : showPrediction(panel, result.body, result.ms);
    }));
    if (thisRound !== round) return;
    announcer.textContent = lines.filter(Boolean).join(" ");
    showFeedback();
  }

  function schedulePredict() {
    clearTimeout(predictTimer);
    predictTimer = setTimeout(predictNow, PREDICT_DELAY_MS);
  }

  // Answers still on their way are for a picture that is changing: drop them.
  function invalidate() {
    clearTimeout(predictTimer);
    if (inFlight) inFlight.abort();
    round++;
    feedbackBox.hidden = true;
  }

  function resetAll() {
    invalidate();
    panels.forEach(resetPanel);
  }

  async function loadModelInfo() {
    try {
      const response = await fetch(API, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const listing = await response.json();
      const served = new Set(listing.map((info) => info.name));
      panels.forEach((panel) => { panel.el.hidden = !served.has(panel.model); });
      for (const info of listing) {
        const panel = panels.get(info.name);
        if (!panel) continue;
        if (!info.serving) {
          panel.version.textContent = "not ready";
          continue;
        }
        showVersion(panel, info.serving.version, info.alias);
        const accuracy = info.serving.metrics && info.serving.metrics.accuracy;
        if (accuracy) panel.el.querySelector(".panel-subtitle").textContent += ` · ${percent(accuracy)} on MNIST test`;
      }
    } catch (err) {
      // The first prediction shows the version anyway; a failure here is not worth a message.
    }
  }

  // --- feedback: "Wrong? It is a ..." -----------------------------------------------------------------

  function buildFeedbackChoices() {
    const choices = [...Array(10).keys()].map(String).concat([NOT_A_DIGIT]);
    for (const choice of choices) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `button${choice === NOT_A_DIGIT ? " choice-other" : ""}`;
      button.dataset.label = choice;
      button.textContent = choice === NOT_A_DIGIT ? "Not a digit" : choice;
      button.setAttribute("aria-label", choice === NOT_A_DIGIT ? "It is not a digit" : `It is a ${choice}`);
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => sendFeedback(choice, button));
      feedbackChoices.append(button);
    }
  }

  function showFeedback() {
    if (!activePanels().some((panel) => panel.answer && panel.answer.image)) return;
    feedbackChoices.querySelectorAll("button").forEach((b) => {
      b.setAttribute("aria-pressed", "false");
      b.disabled = false;
    });
    feedbackStatus.textContent = "";
    feedbackStatus.classList.remove("problem");
    feedbackBox.hidden = false;
  }

  async function postFeedback(answer, label) {
    const response = await fetch("/v1/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({
        image: answer.image, model: answer.model, version: answer.version,
        predicted: answer.predicted, label: label === NOT_A_DIGIT ? NOT_A_DIGIT : Number(label),
        ...(answer.alias ? { alias: answer.alias } : {}),
      }),
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
    return (body && body.id) || "";
  }

  // One correction of the drawing, sent about every model that answered it (each keeps its own tally).
  async function sendFeedback(label, button) {
    const answered = activePanels().filter((panel) => panel.answer && panel.answer.image);
    const thisRound = round;
    feedbackChoices.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    button.setAttribute("aria-pressed", "true");
    feedbackStatus.classList.remove("problem");
    feedbackStatus.textContent = "Sending…";
    const results = await Promise.allSettled(answered.map((panel) => postFeedback(panel.answer, label)));
    if (thisRound !== round) return;
    const saved = results.map((r, i) => r.status === "fulfilled" && `${answered[i].title} ${r.value.slice(0, 8)}`);
    const failed = results.map((r, i) => r.status === "rejected" && `${answered[i].title}: ${r.reason.message}`);
    const what = label === NOT_A_DIGIT ? "not a digit" : `a ${label}`;
    const parts = [];
    if (saved.some(Boolean)) parts.push(`Thanks — saved as ${what} for review (${saved.filter(Boolean).join(", ")}).`);
    if (failed.some(Boolean)) parts.push(`Not saved for ${failed.filter(Boolean).join("; ")}`);
    feedbackStatus.textContent = parts.join(" ");
    feedbackStatus.classList.toggle("problem", failed.some(Boolean));
    if (!saved.some(Boolean)) {  // nothing was kept: let the person try again
      feedbackChoices.querySelectorAll("button").forEach((b) => { b.disabled = false; });
      button.setAttribute("aria-pressed", "false");
    }
    announcer.textContent = feedbackStatus.textContent;
  }

  // --- the drawing pad --------------------------------------------------------------------------

  function currentImage() {
    if (pad.strokes.length) return canvas.toDataURL("image/png");
    return pad.upload ? pad.upload.dataUrl : null;
  }

  function render() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (pad.upload && pad.upload.image) drawContained(pad.upload.image);
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineWidth = lineWidth;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    pad.strokes.forEach(drawStroke);
    const empty = !pad.strokes.length && !pad.upload;
    dropzone.classList.toggle("empty", empty);
    undoButton.setAttribute("aria-disabled", String(empty));
    clearButton.setAttribute("aria-disabled", String(empty));
  }

  function drawContained(image) {
    const scale = Math.min(canvas.width / image.naturalWidth, canvas.height / image.naturalHeight);
    const w = image.naturalWidth * scale;
    const h = image.naturalHeight * scale;
    ctx.drawImage(image, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  }

  function drawStroke(points) {
    if (points.length === 1) {
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    // Quadratic curves through the midpoints: smooth lines from jittery pointer samples.
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (let i = 1; i < points.length - 1; i++) {
      const [x, y] = points[i];
      ctx.quadraticCurveTo(x, y, (x + points[i + 1][0]) / 2, (y + points[i + 1][1]) / 2);
    }
    const last = points[points.length - 1];
    ctx.lineTo(last[0], last[1]);
    ctx.stroke();
  }

  function toCanvas(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
  }

  let frame = null;
  function renderSoon() {
    if (frame === null) frame = requestAnimationFrame(() => { frame = null; render(); });
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (pad.drawing || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    invalidate();
    pad.pointerId = event.pointerId;
    pad.drawing = [toCanvas(event)];
    pad.strokes.push(pad.drawing);
    activePanels().forEach((panel) => panel.el.dataset.state !== "idle" && setState(panel, "pending"));
    renderSoon();
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!pad.drawing || event.pointerId !== pad.pointerId) return;
    const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    (samples.length ? samples : [event]).forEach((sample) => pad.drawing.push(toCanvas(sample)));
    renderSoon();
  });

  function endStroke(event) {
    if (!pad.drawing || event.pointerId !== pad.pointerId) return;
    pad.drawing = null;
    pad.pointerId = null;
    render();
    activePanels().forEach((panel) => setState(panel, "pending"));
    schedulePredict();
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  // --- buttons and keys -------------------------------------------------------------------------

  function undo() {
    if (pad.drawing) return;
    if (pad.strokes.length) pad.strokes.pop();
    else if (pad.upload) setUpload(null);
    else return;
    render();
    if (pad.strokes.length || pad.upload) predictNow();
    else afterClear("Undone — the pad is empty.");
  }

  function clearPad() {
    if (!pad.strokes.length && !pad.upload) return;
    pad.strokes = [];
    setUpload(null);
    render();
    afterClear("Cleared.");
  }

  function afterClear(message) {
    resetAll();
    announcer.textContent = message;
  }

  undoButton.addEventListener("click", undo);
  clearButton.addEventListener("click", clearPad);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    }
  });

  // --- uploads: file picker, drag and drop, paste --------------------------------------------------

  function setUpload(upload) {
    pad.upload = upload;
    source.textContent = upload ? `Uploaded “${upload.name}” (${formatSize(upload.size)}).` : "";
  }

  function formatSize(bytes) {
    return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function loadImage(url) {
    return new Promise((resolve) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => resolve(null); // not something the browser can show; the server says what is wrong
      image.src = url;
    });
  }

  async function useFile(file) {
    if (!file) return;
    invalidate();
    activePanels().forEach((panel) => setState(panel, "pending"));
    const dataUrl = await readAsDataUrl(file);
    pad.strokes = [];
    setUpload({ dataUrl, name: file.name || "pasted image", size: file.size, image: await loadImage(dataUrl) });
    render();
    predictNow();
  }

  fileInput.addEventListener("change", () => {
    useFile(fileInput.files[0]);
    fileInput.value = ""; // choosing the same file again still triggers a change
  });

  dropzone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    useFile(event.dataTransfer && event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file) useFile(file);
  });

  buildFeedbackChoices();
  render();
  loadModelInfo();
})();

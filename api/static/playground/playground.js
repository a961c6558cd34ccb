// imagegate playground: a customer's page for the public API, served by the gateway.
//
// Rules this file keeps (the page's Content-Security-Policy enforces some of them):
// - the API key lives in sessionStorage only and goes out only in the Authorization
//   header of same-origin requests; never in a URL, the DOM, the generated code or a log;
// - the DOM is built with textContent / properties, never from HTML strings, so prompts,
//   file names and model descriptions are never parsed as markup;
// - no inline script or style, no eval: everything is in this module and playground.css.

const KEY_STORAGE = "imagegate.apiKey";
const API = "/v1";
const $ = (id) => document.getElementById(id);

const state = {
  key: null,
  models: new Map(), // id -> the GET /v1/models entry
  limits: null, // GET /v1/usage's `limits`: the key's tier
  lang: "curl",
  busy: false,
};

// ---------------------------------------------------------------------------
// Small helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child); // strings become text nodes
  return node;
}

function setText(id, text) {
  $(id).textContent = text;
}

// Prices are decimal strings ("0.005"); money is counted in millionths, as the gateway does.
function toMicros(decimal) {
  const [whole, fraction = ""] = String(decimal).split(".");
  return Number(whole) * 1_000_000 + Number((fraction + "000000").slice(0, 6));
}

function formatMicros(micros) {
  const whole = Math.floor(micros / 1_000_000);
  const fraction = String(micros % 1_000_000).padStart(6, "0");
  return `${whole}.${fraction}`;
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || "error";
    this.code = error.code || null;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${state.key}`);
  const response = await fetch(API + path, {
    ...options,
    headers,
    credentials: "omit",
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    throw new ApiError(response.status, body);
  }
  return response;
}

function describeError(error) {
  if (error instanceof ApiError) return `${error.status} ${error.type}: ${error.message}`;
  return `The request failed: ${error.message}`;
}

// ---------------------------------------------------------------------------
// Signing in and out

async function signIn(key) {
  state.key = key;
  const response = await api("/usage"); // 401 for a key the gateway does not know
  sessionStorage.setItem(KEY_STORAGE, key);
  showAccount(await response.json(), response.headers);
  await loadModels();
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  renderCode();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.models.clear();
  $("api-key").value = "";
  $("app").hidden = true;
  $("who").hidden = true;
  $("signin").hidden = false;
  $("images").replaceChildren();
  setText("signin-error", message);
  setText("status", "");
  setText("error", "");
  $("api-key").focus();
}

async function onSignIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    setText("signin-error", "Enter your API key.");
    return;
  }
  $("sign-in").disabled = true;
  setText("signin-error", "");
  try {
    await signIn(key);
    $("api-key").value = "";
    $("model").focus();
  } catch (error) {
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    setText("signin-error", describeError(error));
  } finally {
    $("sign-in").disabled = false;
  }
}

// ---------------------------------------------------------------------------
// The key's balance and limits (GET /v1/usage and the x-ratelimit-* headers)

function limitText(headers) {
  const limit = headers.get("x-ratelimit-limit-requests");
  if (limit === null) return null;
  const remaining = headers.get("x-ratelimit-remaining-requests");
  const reset = headers.get("x-ratelimit-reset-requests");
  return `${remaining} of ${limit} left, resets in ${reset}`;
}

function showAccount(usage, headers) {
  setText("who-key", `Signed in: key ${usage.key_id}`);
  setText("account-tier", usage.tier);
  setText("account-balance", usage.balance);
  setText("account-limit", limitText(headers) || "no per-minute limit on this key");
  const table = $("account-usage");
  const rows = usage.totals.map((total) =>
    el("tr", {}, el("td", {}, total.model), el("td", {}, String(total.images)), el("td", {}, total.amount)),
  );
  table.tBodies[0].replaceChildren(...rows);
  table.hidden = rows.length === 0;
  showLimits(usage.limits || null);
}

const perWindow = (count) => (count ? String(count) : "no limit");

function showLimits(limits) {
  state.limits = limits;
  $("account-limits").hidden = !limits;
  if (!limits) return;
  setText(
    "account-all-models",
    limits.all_models
      ? "Every model of the catalog; no per-model limit unless listed."
      : `${limits.models.length} models; others are not in this tier.`,
  );
  const rows = limits.models.map((limit) =>
    el("tr", {}, el("td", {}, limit.model), el("td", {}, perWindow(limit.per_minute)), el("td", {}, perWindow(limit.per_day))),
  );
  $("account-limits").querySelector("tbody").replaceChildren(...rows);
  if (state.models.size) onModelChange();
}

// What the key's tier allows of a model: text for the model's description.
function tierText(modelId) {
  const limits = state.limits;
  if (!limits) return "";
  const limit = limits.models.find((entry) => entry.model === modelId);
  if (limit) return `Your tier: ${perWindow(limit.per_minute)} per minute, ${perWindow(limit.per_day)} per day.`;
  return limits.all_models ? "Your tier: no per-model limit." : "Not in your tier.";
}

async function refreshAccount() {
  try {
    const response = await api("/usage");
    showAccount(await response.json(), response.headers);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) signOut("The gateway no longer accepts this key.");
  }
}

// ---------------------------------------------------------------------------
// Models (GET /v1/models)

async function loadModels() {
  const response = await api("/models");
  const list = (await response.json()).data;
  state.models = new Map(list.map((model) => [model.id, model]));
  const select = $("model");
  const previous = select.value;
  const options = list.map((model) => {
    let label = `${model.id} — ${model.price_per_image} per image`;
    if (model.virtual) label += " (virtual)";
    if (!model.available) label += " (unavailable)";
    return el("option", { value: model.id, disabled: !model.available }, label);
  });
  select.replaceChildren(...options);
  const usable = list.filter((m) => m.available).map((m) => m.id);
  // The free test card is the natural first choice where the catalog has it.
  const pick = [previous, "local/testcard", usable[0]].find((id) => id && usable.includes(id));
  if (pick) select.value = pick;
  onModelChange();
}

function currentModel() {
  return state.models.get($("model").value) || null;
}

function onModelChange() {
  const model = currentModel();
  if (!model) {
    setText("model-info", "");
    return;
  }
  const parts = [`${model.price_per_image} per image.`];
  if (model.description) parts.push(model.description);
  if (model.virtual) {
    parts.push(`Routes to: ${model.candidates.map((c) => c.model).join(", ")}.`);
  } else {
    parts.push(`Default size ${model.default_size}; at most ${model.max_n} images.`);
  }
  if (!model.available && model.unavailable_reason) parts.push(`Unavailable: ${model.unavailable_reason}.`);
  const tier = tierText(model.id);
  if (tier) parts.push(tier);
  setText("model-info", parts.join(" "));
  $("n").max = String(model.virtual ? 10 : model.max_n);
  const references = $("references");
  const edits = !model.virtual && model.max_reference_images > 0;
  references.disabled = !edits;
  if (!edits) references.value = "";
  setText(
    "references-hint",
    edits
      ? `Up to ${model.max_reference_images}; with reference images the request goes to /v1/images/edits.`
      : "This model takes no reference images.",
  );
  const ratio = model.virtual || model.params.includes("aspect_ratio");
  $("aspect-ratio").disabled = !ratio;
  if (!ratio) $("aspect-ratio").value = "";
  renderCode();
}

// ---------------------------------------------------------------------------
// The request: one description used to send it and to write it as code

function requestSpec() {
  const fields = {};
  fields.model = $("model").value;
  fields.prompt = $("prompt").value;
  const n = Number.parseInt($("n").value, 10);
  if (Number.isInteger(n) && n !== 1) fields.n = n;
  const ratio = $("aspect-ratio").disabled ? "" : $("aspect-ratio").value;
  if (ratio) fields.aspect_ratio = ratio;
  else if ($("size").value) fields.size = $("size").value;
  if ($("quality").value) fields.quality = $("quality").value;
  if ($("response-format").value) fields.response_format = $("response-format").value;
  const stream = $("stream").checked;
  if (stream) {
    fields.stream = true;
    const partials = Number.parseInt($("partial-images").value, 10);
    if (partials > 0) fields.partial_images = partials;
  }
  const files = $("references").disabled ? [] : Array.from($("references").files);
  return { endpoint: files.length ? "edits" : "generations", fields, files, stream };
}

function requestBody(spec) {
  if (spec.endpoint === "generations") {
    return { body: JSON.stringify(spec.fields), headers: { "Content-Type": "application/json" } };
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(spec.fields)) form.append(name, String(value));
  for (const file of spec.files) form.append("image[]", file, file.name);
  return { body: form, headers: {} }; // the browser writes the multipart boundary
}

// ---------------------------------------------------------------------------
// Sending it and showing the images as they arrive

function resultFigure(index, total, prompt) {
  const img = el("img", { alt: `Image ${index + 1} of ${total}: ${prompt}`, decoding: "async" });
  const details = el("dl");
  const figure = el(
    "figure",
    { className: "result", dataset: { state: "waiting", index: String(index) } },
    img,
    el("figcaption", {}, details),
  );
  return figure;
}

function setDetails(figure, entries) {
  const details = figure.querySelector("dl");
  const items = [];
  for (const [name, value] of entries) {
    items.push(el("dt", {}, name), el("dd", { dataset: { field: name } }, value));
  }
  details.replaceChildren(...items);
}

function safeImageSource(src) {
  return /^(https?:|data:image\/(png|jpeg|webp);base64,)/.test(src) || src.startsWith("/") ? src : "";
}

function showImage(figure, src, stateName) {
  const img = figure.querySelector("img");
  img.src = safeImageSource(src);
  figure.dataset.state = stateName;
}

function dataUrl(b64, format) {
  return `data:image/${format || "png"};base64,${b64}`;
}

function seconds(started) {
  return `${((performance.now() - started) / 1000).toFixed(2)} s`;
}

async function onGenerate(event) {
  event.preventDefault();
  if (state.busy) return;
  const model = currentModel();
  const spec = requestSpec();
  setText("error", "");
  if (!model) {
    setText("error", "Choose a model.");
    return;
  }
  if (!spec.fields.prompt.trim()) {
    setText("error", "Write a prompt.");
    $("prompt").focus();
    return;
  }
  state.busy = true;
  $("generate").disabled = true;
  $("results").setAttribute("aria-busy", "true");
  const total = spec.fields.n || 1;
  const figures = Array.from({ length: total }, (_, i) => resultFigure(i, total, spec.fields.prompt));
  $("images").replaceChildren(...figures);
  setText("status", `Generating ${total} image${total > 1 ? "s" : ""} with ${model.id}…`);
  const started = performance.now();
  const { body, headers } = requestBody(spec);
  let delivered = 0;
  try {
    const response = await api(`/images/${spec.endpoint}`, { method: "POST", body, headers });
    showWindow(response.headers);
    const jobId = response.headers.get("x-job-id");
    let produced = { size: null, servedBy: null };
    if (spec.stream) {
      delivered = await readStream(response, figures, started);
      produced = await jobDetails(jobId);
    } else {
      const answer = await response.json();
      delivered = answer.data.length;
      answer.data.forEach((image, i) => {
        const src = image.url || dataUrl(image.b64_json, answer.output_format);
        if (figures[i]) showImage(figures[i], src, "complete");
      });
      produced = { size: answer.size || null, servedBy: answer.served_by || answer.model };
    }
    const took = seconds(started);
    const price = toMicros(model.price_per_image);
    figures.slice(0, delivered).forEach((figure) => {
      const img = figure.querySelector("img");
      const size = produced.size || (img.naturalWidth ? `${img.naturalWidth}x${img.naturalHeight}` : "?");
      setDetails(figure, [
        ["size", size],
        ["charged", formatMicros(price)],
        ["time", figure.dataset.time || took],
        ["served_by", produced.servedBy || model.id],
        ["job", jobId || "?"],
      ]);
    });
    figures.slice(delivered).forEach((figure) => figure.remove());
    setText(
      "status",
      `${delivered} image${delivered === 1 ? "" : "s"} in ${took}; charged ${formatMicros(price * delivered)}.`,
    );
  } catch (error) {
    delivered = error.delivered || delivered; // a stream may fail after some images came
    figures.slice(delivered).forEach((figure) => figure.remove());
    setText("status", "");
    setText("error", describeError(error));
    if (error instanceof ApiError && error.status === 401) signOut("The gateway no longer accepts this key.");
  } finally {
    state.busy = false;
    $("generate").disabled = false;
    $("results").setAttribute("aria-busy", "false");
    if (state.key) refreshAccount();
  }
}

function showWindow(headers) {
  const text = limitText(headers);
  if (text) setText("account-window", text);
}

// Server-Sent Events from a fetch body (EventSource cannot POST or send headers).
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive comment
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
    }
  }
}

async function readStream(response, figures, started) {
  let completed = 0;
  for await (const event of sseEvents(response)) {
    if (event.name.endsWith(".partial_image")) {
      const figure = figures[completed];
      if (figure) {
        showImage(figure, dataUrl(event.data.b64_json, event.data.output_format), "partial");
        figure.dataset.partials = String(Number(figure.dataset.partials || 0) + 1);
        setText("status", `Partial image ${event.data.partial_image_index + 1} of image ${completed + 1}…`);
      }
    } else if (event.name.endsWith(".completed")) {
      const figure = figures[completed];
      if (figure) {
        showImage(figure, dataUrl(event.data.b64_json, event.data.output_format), "complete");
        figure.dataset.time = seconds(started);
      }
      completed += 1;
      setText("status", `Image ${completed} of ${figures.length} arrived…`);
    } else if (event.name === "error") {
      const error = new ApiError(event.data.status_code || 500, event.data);
      error.delivered = completed;
      throw error;
    }
  }
  return completed;
}

// A stream says neither the real size when it is not one of OpenAI's nor served_by:
// the job object does.
async function jobDetails(jobId) {
  if (!jobId) return { size: null, servedBy: null };
  try {
    const job = await (await api(`/images/generations/${encodeURIComponent(jobId)}`)).json();
    return { size: (job.result && job.result.size) || null, servedBy: job.served_by || job.model };
  } catch {
    return { size: null, servedBy: null };
  }
}

// ---------------------------------------------------------------------------
// The same request as curl, Python (openai SDK) and Node (openai SDK)

const shellQuote = (text) => `'${String(text).replaceAll("'", `'\\''`)}'`;
// A JSON string is a valid Python and JavaScript string literal.
const literal = (value) => JSON.stringify(value);
const SDK_PARAMS = new Set([
  "model", "prompt", "n", "size", "quality", "response_format", "stream", "partial_images",
  "style", "user", "background", "output_format", "output_compression", "moderation",
]);

function baseUrl() {
  return `${window.location.origin}${API}`;
}

function curlCode(spec) {
  const lines = [
    `curl -sS${spec.stream ? " -N" : ""} ${shellQuote(`${baseUrl()}/images/${spec.endpoint}`)}`,
    `  -H "Authorization: Bearer $IMAGEGATE_API_KEY"`,
  ];
  if (spec.endpoint === "generations") {
    lines.push(`  -H "Content-Type: application/json"`);
    lines.push(`  -d ${shellQuote(JSON.stringify(spec.fields))}`);
  } else {
    for (const [name, value] of Object.entries(spec.fields)) {
      lines.push(`  --form-string ${shellQuote(`${name}=${value}`)}`); // no @file or <file reading
    }
    for (const file of spec.files) lines.push(`  -F ${shellQuote(`image[]=@${file.name}`)}`);
  }
  return lines.join(" \\\n");
}

function pythonCode(spec) {
  const args = [];
  const extra = {};
  for (const [name, value] of Object.entries(spec.fields)) {
    if (!SDK_PARAMS.has(name)) extra[name] = value;
    else args.push(`    ${name}=${name === "stream" ? "True" : literal(value)},`);
  }
  if (spec.files.length) {
    const files = spec.files.map((file) => `open(${literal(file.name)}, "rb")`).join(", ");
    args.push(`    image=[${files}],`);
  }
  if (Object.keys(extra).length) args.push(`    extra_body=${JSON.stringify(extra)},`);
  const call = spec.endpoint === "edits" ? "client.images.edit" : "client.images.generate";
  const head = [
    "import base64",
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(api_key=os.environ["IMAGEGATE_API_KEY"], base_url=${literal(baseUrl())})`,
  ];
  if (spec.stream) {
    return [
      ...head,
      `stream = ${call}(`,
      ...args,
      ")",
      "count = 0",
      "for event in stream:",
      '    if event.type.endswith(".completed"):',
      '        name = f"image-{count}.{event.output_format or \'png\'}"',
      '        with open(name, "wb") as out:',
      "            out.write(base64.b64decode(event.b64_json))",
      "        print(name, event.size)",
      "        count += 1",
      "    else:",
      "        print(event.type)",
    ].join("\n");
  }
  return [
    ...head,
    `result = ${call}(`,
    ...args,
    ")",
    "for index, image in enumerate(result.data):",
    "    if image.b64_json:",
    '        name = f"image-{index}.{result.output_format or \'png\'}"',
    '        with open(name, "wb") as out:',
    "            out.write(base64.b64decode(image.b64_json))",
    "        print(name)",
    "    else:",
    "        print(image.url)",
  ].join("\n");
}

function nodeCode(spec) {
  const params = { ...spec.fields };
  const lines = Object.entries(params).map(([name, value]) => `  ${name}: ${literal(value)},`);
  if (spec.files.length) {
    const files = spec.files.map((file) => `fs.createReadStream(${literal(file.name)})`).join(", ");
    lines.push(`  image: [${files}],`);
  }
  const call = spec.endpoint === "edits" ? "client.images.edit" : "client.images.generate";
  const head = [
    'import fs from "node:fs";',
    'import OpenAI from "openai";',
    "",
    `const client = new OpenAI({ apiKey: process.env.IMAGEGATE_API_KEY, baseURL: ${literal(baseUrl())} });`,
  ];
  if (spec.stream) {
    return [
      ...head,
      `const stream = await ${call}({`,
      ...lines,
      "});",
      "let count = 0;",
      "for await (const event of stream) {",
      '  if (event.type.endsWith(".completed")) {',
      "    const name = `image-${count++}.${event.output_format || \"png\"}`;",
      '    fs.writeFileSync(name, Buffer.from(event.b64_json, "base64"));',
      "    console.log(name, event.size);",
      "  } else {",
      "    console.log(event.type);",
      "  }",
      "}",
    ].join("\n");
  }
  return [
    ...head,
    `const result = await ${call}({`,
    ...lines,
    "});",
    "result.data.forEach((image, index) => {",
    "  if (image.b64_json) {",
    "    const name = `image-${index}.${result.output_format || \"png\"}`;",
    '    fs.writeFileSync(name, Buffer.from(image.b64_json, "base64"));',
    "    console.log(name);",
    "  } else {",
    "    console.log(image.url);",
    "  }",
    "});",
  ].join("\n");
}

const WRITERS = { curl: curlCode, python: pythonCode, node: nodeCode };

function renderCode() {
  if (!state.key) return;
  setText("code-text", WRITERS[state.lang](requestSpec()));
  setText("copy-status", "");
}

function chooseLang(event) {
  const button = event.target.closest("button[data-lang]");
  if (!button) return;
  state.lang = button.dataset.lang;
  for (const other of $("code-langs").querySelectorAll("button")) {
    other.setAttribute("aria-pressed", String(other === button));
  }
  renderCode();
}

async function copyCode() {
  const text = $("code-text").textContent;
  try {
    await navigator.clipboard.writeText(text);
    setText("copy-status", "Copied.");
  } catch {
    // No clipboard permission: select the code so Ctrl+C copies it.
    const range = document.createRange();
    range.selectNodeContents($("code-text"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    setText("copy-status", "Selected: press Ctrl+C to copy.");
  }
}

// ---------------------------------------------------------------------------

function start() {
  $("signin-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("account-refresh").addEventListener("click", refreshAccount);
  $("generate-form").addEventListener("submit", onGenerate);
  $("generate-form").addEventListener("input", renderCode);
  $("generate-form").addEventListener("change", renderCode);
  $("model").addEventListener("change", onModelChange);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("generate-form").requestSubmit();
    }
  });
  $("code-langs").addEventListener("click", chooseLang);
  $("copy-code").addEventListener("click", copyCode);
  document.body.dataset.ready = "true";

  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    signIn(saved).catch((error) => signOut(describeError(error)));
  } else {
    $("api-key").focus();
  }
}

start();

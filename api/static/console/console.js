// The operator console: signs in with an admin key into a server-side session (the key is
// sent once, to POST /console/session, and kept nowhere in the browser), then calls the
// admin API (/admin/v1) with the session cookie and, on writes, its CSRF token.
// Everything is built with textContent: nothing an operator or a customer wrote is markup.

const $ = (id) => document.getElementById(id);
let csrf = "";
const charts = {};

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

async function call(method, url, body, extra = {}) {
  const headers = { Accept: "application/json", ...extra };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    const failure = new Error(`${response.status} ${error.type || "error"}: ${error.message || ""}`);
    failure.status = response.status;
    throw failure;
  }
  return data;
}
const admin = (method, path, body, extra) => call(method, `/admin/v1${path}`, body, extra);

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
  if (error && error.status === 401) signedOut();
}

async function guarded(work) {
  showError(null);
  try { await work(); } catch (error) { showError(error); }
}

// --- session ------------------------------------------------------------------------

function signedIn(session) {
  csrf = session.csrf_token;
  $("who-name").textContent = session.admin.name;
  $("who-scope").textContent = session.admin.scope;
  $("who").hidden = false;
  $("signin").hidden = true;
  $("app").hidden = false;
  show("overview");
  document.querySelector('nav button[data-page="overview"]').focus();
}

function signedOut() {
  csrf = "";
  $("who").hidden = true;
  $("app").hidden = true;
  $("signin").hidden = false;
  $("admin-key").focus();
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  const key = $("admin-key").value.trim();
  $("admin-key").value = "";
  try {
    signedIn(await call("POST", "/console/session", { key }));
  } catch (error) {
    $("signin-error").textContent = error.message;
    $("admin-key").focus();
  }
});

$("sign-out").addEventListener("click", async () => {
  await call("DELETE", "/console/session").catch(() => {});
  signedOut();
});

// --- pages --------------------------------------------------------------------------

const loaders = {
  overview: loadOverview, keys: loadKeys, usage: loadUsage, jobs: loadJobs,
  models: loadModels, workers: loadWorkers,
};

function show(name) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.dataset.page !== name;
  }
  for (const button of document.querySelectorAll("nav button")) {
    if (button.dataset.page === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  document.body.dataset.page = name;
  guarded(loaders[name]);
}

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => show(button.dataset.page));
}

function fill(table, rows) {
  const body = $(table).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const row = el("tr");
    for (const cell of cells) {
      const td = el("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell ?? "";
      row.append(td);
    }
    return row;
  }));
}

const when = (unix) => (unix ? new Date(unix * 1000).toISOString().replace(".000Z", "Z") : "");
const PALETTE = ["#2463eb", "#d9480f", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#e03131"];

// --- charts (uPlot, vendored: api/static/console/VENDOR.md) --------------------------

function chart(id, data, series, options = {}) {
  const box = $(id);
  if (charts[id]) charts[id].destroy();
  box.querySelector(".u-empty")?.remove();
  let points = 0;
  // What the chart shows, for people and tests: the values that are neither missing nor 0.
  for (const values of data.slice(1)) points += values.filter((v) => v !== null && v !== 0).length;
  box.dataset.points = String(points);
  box.dataset.series = String(series.length);
  const width = Math.max(320, box.clientWidth || 800);
  charts[id] = new uPlot({
    width, height: 200, series: [{}, ...series], ...options,
  }, data, box);
  if (!series.length) box.append(el("p", "No data yet.", { class: "u-empty" }));
}

function line(label, i, dash) {
  const style = {
    label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false,
    points: { show: true, size: 6 },  // a lone minute with jobs shows too
  };
  if (dash) style.dash = [6, 4];
  return style;
}

async function loadOverview() {
  const stats = await admin("GET", `/stats?window=${encodeURIComponent($("window").value)}`);
  const models = Object.keys(stats.models);
  const times = stats.times;
  const pick = (field) => models.map((m) => stats.models[m][field]);
  chart("chart-images", [times, ...pick("images_per_minute")], models.map((m, i) => line(m, i)));
  chart("chart-errors", [times, ...pick("error_rate")], models.map((m, i) => line(m, i)),
    { scales: { y: { range: [0, 1] } } });
  const latency = [];
  const latencySeries = [];
  models.forEach((m, i) => {
    latency.push(stats.models[m].p50, stats.models[m].p95);
    latencySeries.push(line(`${m} p50`, i), line(`${m} p95`, i, true));
  });
  chart("chart-latency", [times, ...latency], latencySeries);
}
$("window").addEventListener("change", () => guarded(loadOverview));
$("overview-refresh").addEventListener("click", () => guarded(loadOverview));

function bars(id, rows) {
  const names = rows.map((r) => r.name);
  const data = [names.map((_, i) => i), rows.map((r) => Number(r.amount))];
  chart(id, data, rows.length ? [{
    label: "spend", stroke: PALETTE[0], fill: "rgba(36, 99, 235, 0.4)",
    paths: uPlot.paths.bars({ size: [0.6, 80] }), points: { show: false },
  }] : [], {
    scales: { x: { time: false, range: [-0.5, Math.max(names.length - 0.5, 0.5)] } },
    axes: [{ splits: () => names.map((_, i) => i), values: () => names }, {}],
  });
}

async function loadUsage() {
  const key = $("usage-key").value.trim();
  const usage = await admin("GET", `/usage${key ? `?key_id=${encodeURIComponent(key)}` : ""}`);
  bars("chart-spend-key", usage.by_key);
  bars("chart-spend-model", usage.by_model);
  fill("usage-table", usage.data.map((r) => [r.key_id, r.day, r.model, r.images, r.amount, r.cost, r.margin]));
}
$("usage-refresh").addEventListener("click", () => guarded(loadUsage));

// --- keys ----------------------------------------------------------------------------

let editing = null;

async function loadKeys() {
  const q = $("key-search").value.trim();
  const keys = await admin("GET", `/keys?limit=200${q ? `&q=${encodeURIComponent(q)}` : ""}`);
  fill("keys-table", keys.data.map((k) => {
    const manage = el("button", "Manage", { type: "button", "data-key": k.id });
    manage.addEventListener("click", () => edit(k));
    const state = k.revoked ? "revoked" : k.expired ? "expired" : "active";
    const meta = Object.entries(k.metadata).map(([name, value]) => `${name}=${value}`).join(", ");
    return [k.id, k.name, k.tier, k.balance, state, meta, manage];
  }));
  $("keys-more").hidden = !keys.next_cursor;
}
$("key-search").addEventListener("input", () => guarded(loadKeys));

function edit(key) {
  editing = key;
  $("edit-id").textContent = key.id;
  $("edit-name").textContent = key.name;
  $("edit-tier").value = key.tier;
  $("key-edit").hidden = false;
  $("topup-amount").focus();
}

$("key-create").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const body = { name: $("new-name").value, balance: $("new-balance").value.trim() || "0" };
    if ($("new-tier").value.trim()) body.tier = $("new-tier").value.trim();
    const made = await admin("POST", "/keys", body);
    $("created-key").textContent = made.key;
    $("created").hidden = false;
    $("created").dataset.id = made.id;
    $("key-search").value = made.id;  // the new key, wherever it falls in a long list
    await loadKeys();
    edit(made);
  });
});

$("topup").addEventListener("click", () => guarded(async () => {
  const idem = `console-${crypto.randomUUID()}`;  // a retried click is not a second top-up
  await admin("POST", `/keys/${encodeURIComponent(editing.id)}/topup`,
    { amount: $("topup-amount").value.trim(), reason: $("topup-reason").value },
    { "Idempotency-Key": idem });
  await loadKeys();
}));

$("set-tier").addEventListener("click", () => guarded(async () => {
  editing = await admin("PATCH", `/keys/${encodeURIComponent(editing.id)}`,
    { tier: $("edit-tier").value.trim() });
  await loadKeys();
}));

$("revoke").addEventListener("click", () => guarded(async () => {
  editing = await admin("POST", `/keys/${encodeURIComponent(editing.id)}/revoke`);
  $("key-edit").hidden = true;
  await loadKeys();
}));

// --- jobs ----------------------------------------------------------------------------

async function loadJobs() {
  const params = new URLSearchParams({ limit: "50" });
  for (const [name, id] of [["key_id", "job-key"], ["model", "job-model"], ["status", "job-status"]]) {
    if ($(id).value.trim()) params.set(name, $(id).value.trim());
  }
  const jobs = await admin("GET", `/jobs?${params}`);
  fill("jobs-table", jobs.data.map((j) => {
    const open = el("button", j.id, { type: "button", "data-job": j.id });
    open.addEventListener("click", () => guarded(() => openJob(j.id)));
    return [open, j.key_id, j.model, j.status, when(j.created), j.charged];
  }));
}
$("job-search").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(loadJobs);
});

async function openJob(id) {
  const job = await admin("GET", `/jobs/${encodeURIComponent(id)}`);
  $("job-id").textContent = job.id;
  $("job-prompt").textContent = job.request.prompt ?? "";
  $("timeline").replaceChildren(...job.timeline.map((event) => {
    const item = el("li", null, { "data-event": event.event });
    item.append(el("strong", event.event), el("span", ` ${when(event.at)}`),
      el("pre", JSON.stringify(event.detail, null, 1)));
    return item;
  }));
  $("job-detail").hidden = false;
  $("job-detail").tabIndex = -1;
  $("job-detail").focus();
}

// --- models and workers --------------------------------------------------------------

async function loadModels() {
  const models = await admin("GET", "/models");
  fill("models-table", models.data.map((m) => [
    m.virtual ? `${m.id} (virtual: ${m.candidates.join(", ")})` : m.id,
    m.family ?? "", m.price_per_image,
    m.available ? "yes" : `no: ${m.unavailable_reason ?? ""}`,
    m.breaker ? m.breaker.state : "", m.breaker ? m.breaker.failures : "",
    m.capacity ? `${m.capacity.in_flight} / ${m.capacity.per_key_limit || "no cap"}` : "",
  ]));
}

async function loadWorkers() {
  const workers = await admin("GET", "/workers");
  fill("workers-table", workers.data.map((f) => [
    f.family, f.queue, f.queue_depth ?? "n/a", `${f.workers.length}: ${f.workers.join(", ")}`,
  ]));
}

// --- start ---------------------------------------------------------------------------

call("GET", "/console/session").then((s) => (s.admin ? signedIn(s) : signedOut()), signedOut);

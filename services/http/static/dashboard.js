// Rapport's analyst dashboard: reads the analysts' routes of this API with the user's key and shows
// each figure as text (with a data-testid) and, where it helps, as a Chart.js chart.
// The key comes from the URL fragment (#key=rk_…, removed from the address bar at once) or the key
// field, and is kept in sessionStorage: this tab only, gone when it closes.

const KEY_STORE = "rapport.dashboard.key";
const CHANNELS = ["all", "phone", "email", "purchase", "unknown"];
const STAGES = ["reached", "acquired", "retained", "advocate", "at_risk", "churned"];
const COLORS = ["#1d2430", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#d62728", "#17becf"];
const DAY_MS = 86_400_000;

const $ = (id) => document.getElementById(id);
const state = { key: null, routes: null, charts: new Map(), alarmsCursor: null };

class ApiError extends Error {
  constructor(status, detail, path) {
    super(`${path}: ${status} ${detail}`);
    this.status = status;
    this.detail = detail;
    this.path = path;
  }
}

class Unavailable extends Error {}

// ---- the API ---------------------------------------------------------------------------------

async function api(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const response = await fetch(url, { headers: { "X-API-Key": state.key, Accept: "application/json" }, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : response.statusText;
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail), url.pathname);
  }
  return body;
}

/** The GET routes this API offers, from its OpenAPI document (open, no key): routes of a newer
 * Rapport are asked for only when they exist, so an older API shows "not available", not errors. */
async function offeredRoutes() {
  try {
    const response = await fetch("/openapi.json", { cache: "no-store" });
    if (!response.ok) return null;
    const document_ = await response.json();
    return new Set(Object.entries(document_.paths || {}).filter(([, item]) => item.get).map(([path]) => path));
  } catch {
    return null; // unknown: ask for every route
  }
}

function need(path) {
  if (state.routes && !state.routes.has(path)) throw new Unavailable(`Not available: this API has no GET ${path} yet.`);
}

// ---- the key ---------------------------------------------------------------------------------

/** Moves a key given in the URL fragment to sessionStorage and out of the address bar; true if one was given. */
function takeKeyFromFragment() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const given = fragment.get("key");
  if (given !== null) {
    if (given.trim()) sessionStorage.setItem(KEY_STORE, given.trim());
    fragment.delete("key");
    const rest = fragment.toString();
    window.history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? `#${rest}` : ""));
  }
  state.key = sessionStorage.getItem(KEY_STORE);
  return given !== null;
}

function showKeyForm() {
  $("key-form").hidden = false;
  $("key-set").hidden = true;
  $("key-input").focus();
}

function showKeySet() {
  $("key-form").hidden = true;
  $("key-set").hidden = false;
  const parts = state.key.split("_");
  $("key-id").textContent = parts.length >= 3 ? `${parts[0]}_${parts[1]}_…` : "(not a Rapport key)";
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  $("panels").hidden = true;
  $("period").hidden = true;
  showKeyForm();
}

function refused(error) {
  forgetKey();
  const what = error.status === 401
    ? "The API refused the key (401)"
    : "This key may not read the dashboard's figures (403); it needs the analyst role";
  say(`${what}: ${error.detail}`);
  document.body.dataset.state = "refused";
}

// ---- messages and DOM ------------------------------------------------------------------------

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = !text;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (name === "testid") node.dataset.testid = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

const text = (value) => (value === null || value === undefined ? "—" : String(value));
const money = (amounts) => {
  const currencies = Object.keys(amounts || {}).sort();
  return currencies.length ? currencies.map((c) => `${amounts[c]} ${c}`).join("\n") : "—"; // one line per currency
};

/** A table: columns [{label, num}], rows [{cells: [{text, testid}], testid, data}]. */
function table(caption, columns, rows) {
  const head = el("tr", {}, ...columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
  const body = rows.map((row) => {
    const tr = el("tr", { testid: row.testid });
    for (const [name, value] of Object.entries(row.data || {})) tr.dataset[name] = value;
    row.cells.forEach((cell, i) => {
      const tag = i === 0 && row.header ? "th" : "td";
      const classes = [columns[i].num ? "num" : "", columns[i].money ? "money" : "", cell.text === "" ? "empty" : ""];
      tr.append(el(tag, { testid: cell.testid, scope: tag === "th" ? "row" : null, title: cell.title,
        class: classes.filter(Boolean).join(" ") || null }, cell.text));
    });
    return tr;
  });
  return el("table", {}, el("caption", {}, caption), el("thead", {}, head), el("tbody", {}, ...body));
}

function put(id, ...nodes) {
  $(id).replaceChildren(...nodes);
}

function panelStatus(name, message, kind = "info") {
  const section = document.querySelector(`[data-testid="panel-${name}"]`);
  let status = section.querySelector(".status");
  if (!message) {
    if (status) status.remove();
    return;
  }
  if (!status) {
    status = el("p", { class: "status", testid: `${name}-status`, role: "status" });
    section.querySelector("h2").after(status);
  }
  status.className = `status ${kind}`;
  status.textContent = message;
}

// ---- charts ----------------------------------------------------------------------------------

function chart(id, config) {
  state.charts.get(id)?.destroy();
  const made = new window.Chart($(id), config);
  state.charts.set(id, made);
  return made;
}

function clearChart(id) {
  state.charts.get(id)?.destroy();
  state.charts.delete(id);
}

function barChart(id, labels, datasets, { horizontal = false, yTitle = "" } = {}) {
  chart(id, {
    type: "bar",
    data: { labels, datasets: datasets.map((d, i) => ({ backgroundColor: COLORS[(i + 1) % COLORS.length], ...d })) },
    options: {
      indexAxis: horizontal ? "y" : "x",
      plugins: { legend: { display: datasets.length > 1 } },
      scales: { [horizontal ? "x" : "y"]: { beginAtZero: true, title: { display: !!yTitle, text: yTitle } } },
    },
  });
}

// ---- the period ------------------------------------------------------------------------------

const day = (date) => date.toISOString().slice(0, 10);
const addDays = (iso, n) => day(new Date(Date.parse(`${iso}T00:00:00Z`) + n * DAY_MS));
const monday = (iso) => addDays(iso, -((new Date(`${iso}T00:00:00Z`).getUTCDay() + 6) % 7));
const nextMonth = (iso) => {
  const d = new Date(`${iso.slice(0, 7)}-01T00:00:00Z`);
  d.setUTCMonth(d.getUTCMonth() + 1);
  return day(d);
};

/** The last day with survey answers (either kind), or null: a month first, then its days. */
async function lastAnsweredDay() {
  const latest = async (granularity, from, to) => {
    const answers = await Promise.all(["nps", "csat"].map((kind) => api("/satisfaction/trend", { kind, granularity, from, to })));
    const starts = answers.flatMap((a) => a.points.map((p) => p.period_start)).sort();
    return starts.length ? starts[starts.length - 1] : null;
  };
  const month = await latest("month", "0001-01-01");
  return month ? latest("day", month, nextMonth(month)) : null;
}

/** By default, the year (52 ISO weeks) up to the last day with answers; alarms of its last 30 days. */
async function choosePeriod() {
  if ($("from").value && $("to").value && $("since").value) return;
  const last = await lastAnsweredDay();
  const to = last ? addDays(last, 1) : addDays(day(new Date()), 1);
  $("to").value = to;
  $("from").value = monday(addDays(to, -364));
  $("since").value = addDays(to, -30);
}

function period() {
  return { from: $("from").value, to: $("to").value, since: `${$("since").value}T00:00:00Z` };
}

// ---- panels ----------------------------------------------------------------------------------

const trendValue = (kind, point) => (kind === "nps" ? point.nps : point.csat);

async function showTrend({ from, to }) {
  const asked = [];
  for (const kind of ["nps", "csat"]) {
    for (const channel of CHANNELS) {
      asked.push(api("/satisfaction/trend", { kind, granularity: "week", from, to, channel: channel === "all" ? null : channel })
        .then((answer) => ({ kind, channel, points: answer.points })));
    }
  }
  const series = await Promise.all(asked);
  const summary = [];
  const details = [];
  for (const kind of ["nps", "csat"]) {
    const ofKind = series.filter((s) => s.kind === kind);
    const weeks = [...new Set(ofKind.flatMap((s) => s.points.map((p) => p.period_start)))].sort();
    chart(`chart-${kind}`, {
      type: "line",
      data: {
        labels: weeks,
        datasets: ofKind.map((s, i) => {
          const at = new Map(s.points.map((p) => [p.period_start, trendValue(kind, p)]));
          return { label: s.channel, data: weeks.map((w) => at.get(w) ?? null), borderColor: COLORS[i], backgroundColor: COLORS[i],
            borderWidth: s.channel === "all" ? 3 : 1.5, pointRadius: 2, spanGaps: true };
        }),
      },
      options: { scales: { y: kind === "nps" ? { min: -100, max: 100 } : { min: 0, max: 100 } } },
    });
    for (const s of ofKind) {
      const last = s.points[s.points.length - 1];
      summary.push({ header: true, testid: `trend-summary-${kind}-${s.channel}`, cells: [
        { text: kind.toUpperCase() }, { text: s.channel },
        { text: s.points.reduce((n, p) => n + p.responses, 0), testid: `trend-${kind}-${s.channel}-responses` },
        { text: last ? last.period_start : "—", testid: `trend-${kind}-${s.channel}-last-week` },
        { text: last ? text(trendValue(kind, last)) : "—", testid: `trend-${kind}-${s.channel}-last` },
      ] });
    }
    details.push(table(`${kind.toUpperCase()} per week (answers in the tooltip)`,
      [{ label: "Week from" }, ...CHANNELS.map((c) => ({ label: c, num: true }))],
      weeks.map((week) => ({ header: true, cells: [{ text: week }, ...ofKind.map((s) => {
        const point = s.points.find((p) => p.period_start === week);
        return { text: point ? text(trendValue(kind, point)) : "", testid: `trend-${kind}-${s.channel}-${week}`,
          title: point ? `${point.responses} answers` : null };
      })] }))));
  }
  put("trend-summary", table(`Answers from ${from} to ${to} (exclusive) and the latest week`,
    [{ label: "Survey" }, { label: "Channel" }, { label: "Answers", num: true }, { label: "Latest week" },
      { label: "Latest value", num: true }], summary));
  put("trend-tables", ...details);
}

async function showFunnel() {
  const answer = await api("/lifecycle/stages");
  const stages = [...STAGES, ...Object.keys(answer.stages).filter((s) => !STAGES.includes(s))];
  barChart("chart-funnel", stages, [{ label: "customers", data: stages.map((s) => answer.stages[s] ?? 0) }], { horizontal: true });
  put("funnel-table", table(`As of ${answer.as_of}`, [{ label: "Stage" }, { label: "Customers", num: true }],
    stages.map((s) => ({ header: true, cells: [{ text: s }, { text: text(answer.stages[s]), testid: `stage-${s}` }] }))));
}

async function showFlow({ from, to }) {
  const answer = await api("/lifecycle/flow", { from, to });
  const moves = new Map(answer.transitions.map((t) => [`${t.from_stage ?? "new"}>${t.to_stage}`, t.customers]));
  const seen = answer.transitions.flatMap((t) => [t.from_stage, t.to_stage]).filter((s) => s && !STAGES.includes(s));
  const stages = [...STAGES, ...new Set(seen)];
  panelStatus("flow", answer.transitions.length ? null : "No customer changed stage in the period.");
  put("flow-table", table(`From ${answer.from} to ${answer.to}: from (row) → to (column)`,
    [{ label: "From \\ to" }, ...stages.map((s) => ({ label: s, num: true }))],
    ["new", ...stages].map((origin) => ({ header: true, cells: [{ text: origin },
      ...stages.map((target) => ({ text: moves.get(`${origin}>${target}`) ?? "", testid: `flow-${origin}-${target}` }))] }))));
}

/** Revenue per customer by category, in one currency at a time (amounts in different currencies share no scale). */
function drawRevenue(answer) {
  const currency = $("revenue-currency").value;
  barChart("chart-revenue", answer.categories.map((c) => c.category), [{
    label: `revenue per customer (${currency})`, data: answer.categories.map((c) => Number(c.revenue_per_customer[currency] ?? 0)),
  }], { yTitle: `revenue per customer, ${currency}` });
}

async function showRevenue() {
  const answer = await api("/satisfaction/revenue-by-category");
  const currencies = [...new Set(answer.categories.flatMap((c) => Object.keys(c.revenue_per_customer)))].sort();
  const picker = $("revenue-currency");
  const kept = picker.value;
  picker.replaceChildren(...currencies.map((c) => el("option", { value: c }, c)));
  picker.value = currencies.includes(kept) ? kept : currencies.includes("USD") ? "USD" : currencies[0] ?? "";
  picker.onchange = () => drawRevenue(answer);
  drawRevenue(answer);
  put("revenue-table", table(`As of ${answer.as_of}; category of the latest NPS answer`,
    [{ label: "Category" }, { label: "Customers", num: true }, { label: "Revenue", num: true, money: true },
      { label: "Per customer", num: true, money: true }],
    answer.categories.map((c) => ({ header: true, cells: [{ text: c.category },
      { text: c.customers, testid: `revenue-${c.category}-customers` },
      { text: money(c.revenue), testid: `revenue-${c.category}-revenue` },
      { text: money(c.revenue_per_customer), testid: `revenue-${c.category}-per-customer` }] }))));
}

async function showProjections() {
  const answer = await api("/projections");
  const fields = ["position", "head", "lag", "lag_seconds", "parked"];
  const behind = Math.max(0, ...answer.items.map((i) => i.lag));
  panelStatus("projections", behind ? `The read models are up to ${behind} events behind the event store.`
    : "Every read model is caught up with the event store.");
  put("projections-table", table("Lag in events and in seconds (age of the oldest event not yet applied)",
    [{ label: "Read model" }, ...["Position", "Head", "Lag (events)", "Lag (s)", "Parked"].map((label) => ({ label, num: true }))],
    answer.items.map((item) => ({ header: true, cells: [{ text: item.name },
      ...fields.map((f) => ({ text: text(item[f]), testid: `projection-${item.name}-${f}` }))] }))));
}

const ALARM_FIELDS = ["name", "customer_id", "kind", "score", "answered_at", "channel", "revenue", "last_contact_at"];

async function showAlarms({ since }, more = false) {
  const answer = await api("/satisfaction/alarms", { since, limit: 50, cursor: more ? state.alarmsCursor : null });
  state.alarmsCursor = answer.next_cursor;
  const rows = answer.items.map((item) => ({ testid: "alarm-row", data: { customerId: item.customer_id, eventId: item.event_id },
    cells: ALARM_FIELDS.map((f) => ({ text: f === "revenue" ? money(item.revenue) : text(item[f]), testid: `alarm-${f}` })) }));
  const shown = more ? [...$("alarms-table").querySelectorAll("tbody tr")] : [];
  const made = table(`Latest answer an alarm, given since ${since}, newest first`,
    [{ label: "Name" }, { label: "Customer id" }, { label: "Survey" }, { label: "Score", num: true }, { label: "Answered at" },
      { label: "Channel" }, { label: "Revenue", num: true, money: true }, { label: "Last contact" }], rows);
  made.querySelector("tbody").prepend(...shown);
  put("alarms-table", made);
  $("alarms-table").classList.add("scroll");
  $("alarms-more").hidden = !answer.next_cursor;
  panelStatus("alarms", made.querySelectorAll("tbody tr").length ? null : "No customer to call back: no alarm answer since then.");
}

const ALERT_FIELDS = ["customer_id", "kind", "reason", "occurred_at", "raised_at", "revenue", "last_contact_at"];

async function showAlerts({ since }) {
  need("/alerts");
  const answer = await api("/alerts", { since });
  panelStatus("alerts", answer.items.length ? (answer.next_cursor ? "The newest page of alerts." : null) : "No alert since then.");
  put("alerts-table", table(`Raised for events since ${since}`,
    [{ label: "Customer id" }, { label: "Kind" }, { label: "Reason" }, { label: "Occurred at" }, { label: "Raised at" },
      { label: "Revenue", num: true, money: true }, { label: "Last contact" }],
    answer.items.map((item) => ({ testid: "alert-row", data: { alertId: item.alert_id },
      cells: ALERT_FIELDS.map((f) => ({ text: f === "revenue" ? money(item.revenue) : text(item[f]), testid: `alert-${f}` })) }))));
  $("alerts-table").classList.add("scroll");
}

const NO_MODEL = "No model yet: an admin fits one with POST /value/model/fit.";

/** The latest value model, or null before the first fit (404). */
async function valueModel() {
  need("/value/model");
  try {
    return await api("/value/model");
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

async function showValue(model) {
  put("value-model");
  put("value-table");
  clearChart("chart-value");
  if (!model) throw new Unavailable(NO_MODEL);
  const facts = [["version", model.version], ["fitted_at", model.fitted_at], ["calibration_end", model.calibration_end],
    ["customers", model.customers], ["purchases", model.purchases], ["currency", model.currency], ["source", model.source],
    ...Object.entries(model.bgnbd || {}).map(([k, v]) => [`bgnbd.${k}`, v]),
    ...Object.entries(model.gamma_gamma || {}).map(([k, v]) => [`gamma_gamma.${k}`, v])];
  put("value-model", ...facts.map(([name, value]) => el("div", {}, el("dt", {}, name.replaceAll("_", " ")),
    el("dd", { testid: `value-model-${name}` }, text(value)))));
  need("/value/distribution");
  const answer = await api("/value/distribution", { currency: model.currency || "USD" });
  const labels = answer.buckets.map((b) => (b.to === null ? `${b.from}+` : `${b.from}–${b.to}`));
  barChart("chart-value", labels, [{ label: "customers", data: answer.buckets.map((b) => b.customers) }],
    { yTitle: "customers" });
  put("value-table", table(`Customers by predicted 12-month CLV in ${answer.currency} (model ${answer.model_version})`,
    [{ label: "From", num: true }, { label: "To", num: true }, { label: "Customers", num: true }],
    answer.buckets.map((b, i) => ({ cells: [{ text: b.from, testid: `value-bucket-${i}-from` },
      { text: b.to === null ? "and above" : b.to, testid: `value-bucket-${i}-to` }, { text: b.customers, testid: `value-bucket-${i}-customers` }] }))));
}

const COHORT_FIELDS = [["customers", "Customers"], ["historical", "Revenue to date"], ["clv_12m", "CLV 12 months"],
  ["clv_12m_per_customer", "CLV per customer"], ["p_alive", "P(alive)"]];

async function showCohorts(model) {
  put("cohorts-table");
  if (!model) throw new Unavailable(NO_MODEL);
  need("/value/cohorts");
  const answer = await api("/value/cohorts", { currency: model.currency || "USD" });
  put("cohorts-table", table(`By month of first purchase, in ${answer.currency} (model ${answer.model_version})`,
    [{ label: "Cohort" }, ...COHORT_FIELDS.map(([, label]) => ({ label, num: true }))],
    answer.cohorts.map((c) => ({ header: true, cells: [{ text: c.cohort },
      ...COHORT_FIELDS.map(([f]) => ({ text: text(c[f]), testid: `cohort-${c.cohort}-${f}` }))] }))));
  $("cohorts-table").classList.add("scroll");
}

async function showSegments() {
  need("/segments");
  const answer = await api("/segments");
  barChart("chart-segments", answer.segments.map((s) => s.name),
    [{ label: "customers", data: answer.segments.map((s) => s.customers) }], { horizontal: true });
  put("segments-table", table(`As of ${answer.as_of}`,
    [{ label: "Segment" }, { label: "Customers", num: true }, { label: "Revenue", num: true, money: true }],
    answer.segments.map((s) => ({ header: true, cells: [{ text: s.name }, { text: s.customers, testid: `segment-${s.name}-customers` },
      { text: money(s.revenue), testid: `segment-${s.name}-revenue` }] }))));
}

// ---- loading ---------------------------------------------------------------------------------

/** Runs one panel; a refused key stops the page, anything else is said in the panel. */
async function run(name, show) {
  panelStatus(name, null);
  try {
    await show();
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) throw error;
    if (error instanceof Unavailable) panelStatus(name, error.message);
    else if (error instanceof ApiError) panelStatus(name, `The API answered ${error.status} to ${error.path}: ${error.detail}`, "error");
    else panelStatus(name, `Could not show this panel: ${error.message}`, "error");
  }
}

async function loadPanels() {
  document.body.dataset.state = "loading";
  const chosen = period();
  const model = valueModel().catch((error) => ({ error }));
  const modelOr = async () => {
    const m = await model;
    if (m && m.error) throw m.error;
    return m;
  };
  await Promise.all([
    run("trend", () => showTrend(chosen)),
    run("funnel", showFunnel),
    run("flow", () => showFlow(chosen)),
    run("revenue", showRevenue),
    run("projections", showProjections),
    run("alarms", () => showAlarms(chosen)),
    run("alerts", () => showAlerts(chosen)),
    run("value", async () => showValue(await modelOr())),
    run("cohorts", async () => showCohorts(await modelOr())),
    run("segments", showSegments),
  ]);
  $("loaded-at").textContent = `Loaded ${new Date().toISOString().slice(0, 19).replace("T", " ")} UTC`;
  document.body.dataset.state = "ready";
}

async function open() {
  say("");
  showKeySet();
  document.body.dataset.state = "loading";
  try {
    await api("/projections"); // the key is checked once here: a refused key makes one failed request, not one per panel
    state.routes = await offeredRoutes();
    await choosePeriod();
    $("period").hidden = false;
    $("panels").hidden = false;
    await loadPanels();
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) refused(error);
    else {
      say(error instanceof ApiError ? `The API answered ${error.status} to ${error.path}: ${error.detail}`
        : `Could not reach the API: ${error.message}`);
      document.body.dataset.state = "failed";
    }
  }
}

function start() {
  takeKeyFromFragment();
  window.Chart.defaults.animation = false;
  window.Chart.defaults.maintainAspectRatio = false;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("key-input").value.trim();
    $("key-input").value = "";
    if (!given) return;
    sessionStorage.setItem(KEY_STORE, given);
    state.key = given;
    open();
  });
  $("key-forget").addEventListener("click", () => {
    forgetKey();
    say("The key is forgotten in this tab.", "info");
  });
  $("period").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("from").value >= $("to").value) {
      say("The period's start must be before its end.");
      return;
    }
    say("");
    loadPanels().catch((error) => (error instanceof ApiError ? refused(error) : say(error.message)));
  });
  $("alarms-more").addEventListener("click", () => {
    run("alarms", () => showAlarms(period(), true)).catch(refused);
  });
  window.addEventListener("hashchange", () => {
    if (takeKeyFromFragment() && state.key) open(); // a link with a key opened in this tab again
  });
  if (state.key) open();
  else {
    showKeyForm();
    document.body.dataset.state = "no-key";
  }
}

start();

// gotapi-3dp web app: a plain GotAPI client (GotAPI-1/2 over HTTP, GotAPI-5 events over
// WebSocket) of the server that serves it. The user's models are listed from the contents
// server with the user's own key; the app never receives a model, only names and pictures.
"use strict";

const ORIGIN = window.location.origin;
const SCOPES = "printer3d,serviceDiscovery,serviceInformation";
const APP_NAME = "gotapi-3dp web app";
const TOKEN_KEY = "gotapi3dp.accessToken";
const CONTENTS_KEY = "gotapi3dp.contentsKey";
const CONTENTS_URL = "gotapi3dp.contentsUrl";
const FINAL_STATES = ["completed", "failed", "cancelled"];
const JOB_POLL_MS = 1000;          // without GotAPI-5 events
const JOB_SAFETY_POLL_MS = 5000;   // with events: a slow poll in case one is lost
const STATUS_POLL_MS = 2000;
const CHART_POINTS = 150;

const ERROR_NAMES = {
  "-1": "GotAPI server unreachable", 1: "unknown error", 2: "profile not supported",
  3: "method not supported", 4: "attribute not supported", 5: "empty serviceId",
  6: "service not found", 7: "timeout", 8: "unknown attribute", 10: "invalid parameter",
  11: "authorization", 12: "access token expired", 13: "empty access token",
  14: "out of scope", 15: "clientId not found", 16: "illegal device state",
  17: "illegal server state", 18: "invalid origin", 19: "invalid URL",
  1100: "contents server unavailable", 1101: "contents key refused", 1102: "content not found",
  1105: "printer not registered", 1110: "connection not found", 1111: "connection expired",
  1300: "printer unavailable", 1302: "printer busy", 1303: "job not found",
  1304: "not allowed in this job state", 1305: "model cannot be printed",
};

class ApiError extends Error {
  constructor(code, message, source) {
    super(message || ERROR_NAMES[code] || "error");
    this.code = code;
    this.source = source || "GotAPI";
  }
  get readable() {
    const name = ERROR_NAMES[this.code];
    const what = name ? `${name} (${this.source} error ${this.code})` : `${this.source} error ${this.code}`;
    return `${what}: ${this.message}`;
  }
}

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY), serviceId: null, contentId: null,
  contents: new Map(), thumbUrls: [], job: null, jobStarted: 0, printingSince: 0,
  lastState: null, ws: null, wsReady: false, jobTimer: 0, statusTimer: 0, clockTimer: 0,
  temps: [],
};

// ---------------------------------------------------------------- errors and log
function showError(err) {
  const text = err instanceof ApiError ? err.readable : `Unexpected error: ${err && err.message}`;
  $("error-text").textContent = text;
  $("error").hidden = false;
  if (state.job) addLog(text, "bad");
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

function addLog(text, kind) {
  const li = document.createElement("li");
  const time = new Date().toLocaleTimeString([], { hour12: false });
  li.textContent = `${time}  ${text}`;
  if (kind) li.className = kind;
  $("job-log").appendChild(li);
}

// ---------------------------------------------------------------- GotAPI-1/2 over HTTP
async function gotapi(method, path, params = {}, auth = true) {
  const all = { ...params };
  if (auth) all.accessToken = await accessToken();
  try {
    return await send(method, path, all);
  } catch (err) {
    if (auth && err instanceof ApiError && [11, 12, 13, 15].includes(err.code)) {
      dropToken();               // a stale or revoked token: authorize once more, retry once
      all.accessToken = await accessToken();
      return send(method, path, all);
    }
    throw err;
  }
}

async function send(method, path, params) {
  const query = new URLSearchParams(params).toString();
  const inQuery = method === "GET" || method === "DELETE";
  const url = `/gotapi/${path}` + (inQuery && query ? `?${query}` : "");
  const init = { method, headers: { "X-GotAPI-Origin": ORIGIN }, cache: "no-store" };
  if (!inQuery) {
    init.headers["Content-Type"] = "application/x-www-form-urlencoded";
    init.body = query;
  }
  let body;
  try {
    const response = await fetch(url, init);
    body = await response.json();
  } catch (err) {
    throw new ApiError(-1, `no answer from ${window.location.host}`);
  }
  if (body.result !== 0) throw new ApiError(Number(body.errorCode || 1), body.errorMessage);
  return body;
}

async function accessToken() {
  if (state.token) return state.token;
  const grant = await send("GET", "authorization/grant", {});
  const answer = await send("GET", "authorization/accessToken",
    { clientId: grant.clientId, scope: SCOPES, applicationName: APP_NAME });
  state.token = answer.accessToken;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("session").textContent = "authorized";
  return state.token;
}

function dropToken() {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("session").textContent = "not authorized";
}

// ---------------------------------------------------------------- printers
async function loadPrinters() {
  const answer = await gotapi("GET", "serviceDiscovery");
  const list = $("printers");
  list.replaceChildren();
  for (const service of answer.services || []) {
    list.appendChild(choice("printer", service.id, service.name, service.online ? "online" : "offline",
      service.online, () => { state.serviceId = service.id; updatePrintButton(); }));
  }
  const first = list.querySelector("input:not([disabled])");
  if (first && !state.serviceId) { first.checked = true; state.serviceId = first.value; }
  $("printers-empty").hidden = list.children.length > 0;
  updatePrintButton();
}

function choice(group, value, title, detail, enabled, onPick, picture) {
  const li = document.createElement("li");
  const label = document.createElement("label");
  const input = document.createElement("input");
  input.type = "radio";
  input.name = group;
  input.value = value;
  input.disabled = !enabled;
  input.addEventListener("change", onPick);
  label.appendChild(input);
  if (picture) label.appendChild(picture);
  const text = document.createElement("span");
  text.className = "choice-text";
  const strong = document.createElement("strong");
  strong.textContent = title;
  const small = document.createElement("span");
  small.className = `detail ${detail}`;
  small.textContent = detail;
  text.append(strong, small);
  label.appendChild(text);
  li.appendChild(label);
  return li;
}

// ---------------------------------------------------------------- contents (contents server)
async function contentsApi(path) {
  const base = $("contents-url").value.replace(/\/+$/, "");
  let response;
  try {
    response = await fetch(`${base}${path}`, { headers: { "X-Api-Key": $("contents-key").value.trim() },
      cache: "no-store" });
  } catch (err) {
    throw new ApiError(1100, `cannot reach ${base}`, "contents server");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = body.error || {};
    throw new ApiError(Number(error.code || response.status), error.message || response.statusText,
      "contents server");
  }
  return response;
}

async function loadContents(event) {
  if (event) event.preventDefault();
  clearError();
  sessionStorage.setItem(CONTENTS_KEY, $("contents-key").value.trim());
  localStorage.setItem(CONTENTS_URL, $("contents-url").value);
  const { contents } = await (await contentsApi("/api/contents")).json();
  state.thumbUrls.forEach((url) => URL.revokeObjectURL(url));
  state.thumbUrls = [];
  state.contents = new Map(contents.map((c) => [c.id, c]));
  const list = $("contents");
  list.replaceChildren();
  for (const c of contents) {
    const img = document.createElement("img");
    img.alt = "";
    img.width = 64;
    img.height = 64;
    const left = typeof c.remaining === "number" ? `, ${c.remaining} left` : "";
    const allowed = typeof c.prints === "number" ? `prints allowed: ${c.prints}${left}` : "unlimited prints";
    const detail = `${c.format.toUpperCase()}, ${formatBytes(c.bytes)}, ${allowed}`;
    list.appendChild(choice("content", c.id, c.name, detail, true,
      () => { state.contentId = c.id; updatePrintButton(); }, img));
    loadThumbnail(c.id, img);
  }
  $("contents-empty").hidden = contents.length > 0;
  updatePrintButton();
}

async function loadThumbnail(contentId, img) {
  try {
    const blob = await (await contentsApi(`/api/thumbnails/${encodeURIComponent(contentId)}`)).blob();
    const url = URL.createObjectURL(blob);
    state.thumbUrls.push(url);
    img.src = url;
  } catch (err) {
    img.classList.add("missing");   // a model without a picture is still printable
  }
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// ---------------------------------------------------------------- print and follow
function updatePrintButton() {
  const active = state.job && !FINAL_STATES.includes(state.job.state);
  const ready = state.serviceId && state.contentId && !active;
  $("print").disabled = !ready;
  $("print-hint").textContent = active ? "A job is running." :
    ready ? "Ready." : "Choose a printer and a model.";
}

async function startPrint() {
  clearError();
  const serviceId = state.serviceId;
  const content = state.contents.get(state.contentId);
  $("print").disabled = true;
  try {
    const conn = await gotapi("POST", "printer3d/connect",
      { serviceId, contentId: content.id, contentsKey: $("contents-key").value.trim() });
    const { jobId } = await gotapi("POST", "printer3d/print",
      { serviceId, connectionId: conn.connectionId });
    beginJob(serviceId, jobId, conn.content.name);
  } finally {
    updatePrintButton();
  }
}

function beginJob(serviceId, jobId, name) {
  stopFollowing();
  state.job = { id: jobId, serviceId, state: "queued", progress: 0, layer: 0, layers: 0 };
  state.jobStarted = Date.now();
  state.printingSince = 0;
  state.lastState = null;
  state.temps = [];
  $("job-log").replaceChildren();
  $("job-section").hidden = false;
  $("job-content").textContent = `${name} (job ${jobId})`;
  addLog(`print command accepted, job ${jobId}`);
  renderJob(state.job);
  follow();
}

async function follow() {
  state.clockTimer = setInterval(renderClock, 1000);
  state.statusTimer = setInterval(() => pollStatus().catch(() => {}), STATUS_POLL_MS);
  pollStatus().catch(() => {});
  const events = await openEvents().catch(() => false);
  $("job-channel").textContent = events ? "live (GotAPI-5 WebSocket)" : "polling every second";
  addLog(events ? "following the job over GotAPI-5 events" : "events unavailable: polling the job");
  const every = events ? JOB_SAFETY_POLL_MS : JOB_POLL_MS;
  state.jobTimer = setInterval(() => pollJob().catch(showError), every);
  pollJob().catch(showError);
}

function stopFollowing() {
  clearInterval(state.jobTimer);
  clearInterval(state.statusTimer);
  clearInterval(state.clockTimer);
  if (state.job && state.wsReady) {
    gotapi("DELETE", "printer3d/onJobChange", { serviceId: state.job.serviceId }).catch(() => {});
  }
}

async function pollJob() {
  if (!state.job) return;
  const { job } = await gotapi("GET", "printer3d/job", { serviceId: state.job.serviceId, jobId: state.job.id });
  onJob(job);
}

function onJob(job) {
  if (!state.job || job.id !== state.job.id) return;
  if (FINAL_STATES.includes(state.job.state) && state.lastState === state.job.state) return;
  state.job = { ...state.job, ...job };
  renderJob(state.job);
  if (FINAL_STATES.includes(job.state)) {
    stopFollowing();
    pollStatus().catch(() => {});
    updatePrintButton();
  }
}

function renderJob(job) {
  if (job.state !== state.lastState) {
    const err = job.error ? `: error ${job.error.code} ${job.error.name || ""} ${job.error.message || ""}` : "";
    addLog(`state ${job.state}${err}`, job.state === "failed" ? "bad" : job.state === "completed" ? "good" : "");
    if (job.state === "printing" && !state.printingSince) state.printingSince = Date.now();
    state.lastState = job.state;
  }
  const stateEl = $("job-state");
  stateEl.textContent = job.state;
  stateEl.dataset.state = job.state;
  const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
  $("job-progress").value = progress;
  $("job-progress-text").textContent = `${progress.toFixed(progress % 1 ? 1 : 0)} %`;
  $("job-layer").textContent = job.layers ? `${job.layer}/${job.layers}` : "-";
  const active = !FINAL_STATES.includes(job.state);
  $("pause").disabled = job.state !== "printing";
  $("resume").disabled = !["paused", "interrupted"].includes(job.state);
  $("cancel").disabled = !active;
  renderClock();
  updatePrintButton();
}

function renderClock() {
  const job = state.job;
  if (!job) return;
  const active = !FINAL_STATES.includes(job.state);
  if (active) state.jobEnded = 0; else if (!state.jobEnded) state.jobEnded = Date.now();
  const now = active ? Date.now() : state.jobEnded;
  $("job-elapsed").textContent = formatSeconds((now - state.jobStarted) / 1000);
  let remaining = "-";
  if (job.state === "completed") remaining = "0 s";
  else if (job.state === "printing" && job.progress > 0 && state.printingSince) {
    const spent = (Date.now() - state.printingSince) / 1000;
    remaining = `about ${formatSeconds(spent * (100 - job.progress) / job.progress)}`;
  }
  $("job-remaining").textContent = remaining;
}

function formatSeconds(s) {
  s = Math.max(0, Math.round(s));
  const m = Math.floor(s / 60);
  return m ? `${m} min ${s % 60} s` : `${s} s`;
}

async function jobCommand(method, attribute, label) {
  clearError();
  const job = state.job;
  await gotapi(method, `printer3d/${attribute}`, { serviceId: job.serviceId, jobId: job.id });
  addLog(`${label} requested`);
  await pollJob();
}

// ---------------------------------------------------------------- GotAPI-5 events
async function openEvents() {
  const token = await accessToken();
  const ws = new WebSocket(`ws://${window.location.host}/gotapi/websocket`);
  const ok = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 5000);
    ws.onopen = () => ws.send(JSON.stringify({ accessToken: token }));
    ws.onerror = () => { clearTimeout(timer); resolve(false); };
    ws.onclose = () => { clearTimeout(timer); resolve(false); };
    ws.onmessage = (msg) => {
      clearTimeout(timer);
      let body = {};
      try { body = JSON.parse(msg.data); } catch (err) { /* not JSON: refused */ }
      resolve(body.result === 0);
    };
  });
  if (!ok) { ws.close(); return false; }
  ws.onmessage = onEvent;
  ws.onclose = () => { state.wsReady = false; };
  state.ws = ws;
  await gotapi("PUT", "printer3d/onJobChange", { serviceId: state.job.serviceId });
  state.wsReady = true;
  return true;
}

function onEvent(msg) {
  let event;
  try { event = JSON.parse(msg.data); } catch (err) { return; }
  if (event.profile === "printer3d" && event.attribute === "onJobChange" && event.job) onJob(event.job);
}

// ---------------------------------------------------------------- temperatures
async function pollStatus() {
  if (!state.job) return;
  const status = await gotapi("GET", "printer3d/status", { serviceId: state.job.serviceId });
  const t = status.temperatures || {};
  const point = { at: Date.now(), hotend: reading(t.hotend), bed: reading(t.bed),
    hotendTarget: target(t.hotend), bedTarget: target(t.bed) };
  state.temps.push(point);
  if (state.temps.length > CHART_POINTS) state.temps.shift();
  $("temps-now").textContent = `hotend ${fmtTemp(point.hotend)} (target ${fmtTemp(point.hotendTarget)}), ` +
    `bed ${fmtTemp(point.bed)} (target ${fmtTemp(point.bedTarget)})`;
  drawChart();
}

const reading = (x) => (x && typeof x.actual === "number" ? x.actual : null);
const target = (x) => (x && typeof x.target === "number" ? x.target : null);
const fmtTemp = (v) => (v === null ? "-" : `${v.toFixed(1)} °C`);

function drawChart() {
  const canvas = $("temps");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640;
  const height = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const pad = { l: 40, r: 10, t: 20, b: 20 };
  const values = state.temps.flatMap((p) => [p.hotend, p.bed, p.hotendTarget, p.bedTarget]).filter((v) => v !== null);
  const top = Math.max(50, Math.ceil((Math.max(0, ...values) + 10) / 50) * 50);
  const x = (i) => pad.l + (width - pad.l - pad.r) * (state.temps.length > 1 ? i / (CHART_POINTS - 1) : 0);
  const y = (v) => height - pad.b - (height - pad.t - pad.b) * (v / top);
  ctx.font = "12px system-ui, sans-serif";
  ctx.strokeStyle = "#d0d7de";
  ctx.fillStyle = "#57606a";
  for (let v = 0; v <= top; v += top / 5) {
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(width - pad.r, y(v)); ctx.stroke();
    ctx.fillText(`${Math.round(v)}°`, 4, y(v) + 4);
  }
  line(ctx, "hotendTarget", "#f0a0a0", x, y, [4, 4]);
  line(ctx, "bedTarget", "#a0b8f0", x, y, [4, 4]);
  line(ctx, "hotend", "#cf222e", x, y, []);
  line(ctx, "bed", "#0969da", x, y, []);
  ctx.fillStyle = "#cf222e"; ctx.fillText("hotend", pad.l + 4, 14);
  ctx.fillStyle = "#0969da"; ctx.fillText("bed", pad.l + 60, 14);
}

function line(ctx, key, colour, x, y, dash) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.setLineDash(dash);
  ctx.beginPath();
  let pen = false;
  state.temps.forEach((p, i) => {
    if (p[key] === null) { pen = false; return; }
    if (pen) ctx.lineTo(x(i), y(p[key])); else ctx.moveTo(x(i), y(p[key]));
    pen = true;
  });
  ctx.stroke();
  ctx.setLineDash([]);
}

// ---------------------------------------------------------------- wiring
function guard(fn) {
  return (...args) => Promise.resolve().then(() => fn(...args)).catch(showError);
}

function init() {
  $("contents-url").value = localStorage.getItem(CONTENTS_URL) || $("contents-url").value;
  $("contents-key").value = sessionStorage.getItem(CONTENTS_KEY) || "";
  $("error-close").addEventListener("click", clearError);
  $("refresh-printers").addEventListener("click", guard(loadPrinters));
  $("contents-form").addEventListener("submit", guard(loadContents));
  $("print").addEventListener("click", guard(startPrint));
  $("pause").addEventListener("click", guard(() => jobCommand("PUT", "pause", "pause")));
  $("resume").addEventListener("click", guard(() => jobCommand("PUT", "resume", "resume")));
  $("cancel").addEventListener("click", guard(() => jobCommand("DELETE", "job", "cancel")));
  window.addEventListener("resize", drawChart);
  drawChart();
  guard(loadPrinters)();
  if ($("contents-key").value) guard(loadContents)();
}

document.addEventListener("DOMContentLoaded", init);

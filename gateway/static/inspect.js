// The request inspector: polls /inspect/api/records for new request-log lines and draws them.
// Every value from the log goes into the page as text (textContent), never as markup.
"use strict";

const KEEP = 1000;            // requests kept in the page
const POLL_MS = 1000;
const COMPACTION_DROP = 0.6;  // a turn whose context falls below 60% of the previous one: compacted
const state = { seq: 0, records: [], windows: {}, picked: null, session: null, token: sessionStorage.getItem("gatewayToken") || "" };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function ms(v) { return v === null || v === undefined ? "–" : v >= 10000 ? (v / 1000).toFixed(1) + "s" : Math.round(v) + "ms"; }
function num(v) { return v === null || v === undefined ? "–" : v >= 10000 ? (v / 1000).toFixed(1) + "k" : String(v); }
function errText(e) { return e ? (e.message ? `${e.type}: ${e.message}` : e.type) : ""; }
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }
function context(r) { return (r.input_tokens || 0) + (r.cache_read_tokens || 0); }

async function api(path) {
  const headers = state.token ? { "x-api-key": state.token } : {};
  const resp = await fetch(path, { headers, cache: "no-store" });
  if (resp.status === 401) { $("token-box").hidden = false; throw new Error("401"); }
  if (!resp.ok) { const body = await resp.json().catch(() => ({})); throw new Error(errText(body.error) || `HTTP ${resp.status}`); }
  return resp.json();
}

async function poll() {
  if ($("f-live").checked && $("token-box").hidden) {
    try {
      const data = await api(`/inspect/api/records?after=${state.seq}`);
      if (data.seq < state.seq) state.records = [];  // the gateway restarted: its numbering began again
      state.seq = data.seq;
      Object.assign(state.windows, data.context_windows || {});
      if (data.records.length) {
        state.records.push(...data.records);
        if (state.records.length > KEEP) state.records.splice(0, state.records.length - KEEP);
        render();
      }
      $("state").textContent = `live · ${state.records.length} requests`;
    } catch (e) {
      $("state").textContent = e.message === "401" ? "token needed" : `cannot reach the gateway (${e.message})`;
    }
  } else if (!$("f-live").checked) {
    $("state").textContent = "paused";
  }
  setTimeout(poll, POLL_MS);
}

function matches(r) {
  const text = $("f-text").value.trim().toLowerCase();
  const status = $("f-status").value;
  const session = $("f-session").value;
  if (status === "ok" && !(r.status >= 200 && r.status < 300)) return false;
  if (status === "errors" && !(r.status >= 400 || r.error)) return false;
  if (session && r.session_id !== session) return false;
  if (text) {
    const hay = [r.request_id, r.path, r.model, r.backend, r.backend_model, r.session_id, errText(r.error), (r.tool_names || []).join(" "), r.answer_preview].join(" ").toLowerCase();
    if (!hay.includes(text)) return false;
  }
  return true;
}

function row(r) {
  const bad = r.status >= 400 || r.error;
  const what = el("td", { class: "what" });
  if (r.tool_names && r.tool_names.length) what.append(el("span", { class: "tool" }, r.tool_names.join(", ")), " ");
  if (r.error) what.append(el("span", { class: "err" }, errText(r.error)));
  else if (r.answer_preview) what.append(el("span", { class: "muted" }, r.answer_preview));
  else if (r.stop_reason) what.append(el("span", { class: "muted" }, r.stop_reason));
  const req = el("td", {}, el("code", {}, r.request_id.slice(0, 12)), " ", el("span", { class: "muted req-path" }, `${r.method} ${r.path}`));
  if (r.session_id) req.append(" ", el("a", { class: "session", href: "#", title: "session timeline", onclick: (ev) => { ev.preventDefault(); ev.stopPropagation(); openSession(r.session_id); } }, "session"));
  const tr = el("tr", { "data-id": r.request_id, onclick: () => openRecord(r.request_id) },
    el("td", {}, (r.ts || "").slice(11, 19)),
    req,
    el("td", {}, r.model || "–", el("span", { class: "muted" }, r.backend ? ` → ${r.backend}` : "")),
    el("td", { class: bad ? "st-bad" : "st-ok" }, r.status),
    el("td", { class: "num" }, ms(r.ttft_ms)),
    el("td", { class: "num" }, ms(r.duration_ms)),
    el("td", { class: "num" }, `${num(r.input_tokens)} / ${num(r.output_tokens)}`),
    el("td", { class: "num" }, r.cache_read_tokens ? num(r.cache_read_tokens) : "–"),
    what);
  if (r.request_id === state.picked) tr.classList.add("picked");
  return tr;
}

function render() {
  const body = document.querySelector("#requests tbody");
  const shown = state.records.filter(matches).reverse();
  body.replaceChildren(...shown.map(row));
  $("empty").hidden = state.records.length > 0;
  const sessions = [...new Set(state.records.map((r) => r.session_id).filter(Boolean))];
  const select = $("f-session");
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "any session"), ...sessions.map((s) => el("option", { value: s }, s.slice(0, 18))));
  select.value = sessions.includes(current) ? current : "";
  if (state.session) drawSession();
}

async function openRecord(id) {
  state.picked = id;
  document.querySelectorAll("#requests tr.picked").forEach((tr) => tr.classList.remove("picked"));
  const tr = document.querySelector(`#requests tr[data-id="${CSS.escape(id)}"]`);
  if (tr) tr.classList.add("picked");
  $("detail-pane").hidden = false;
  document.querySelector("main").classList.add("with-detail");
  $("detail-id").textContent = id;
  let rec;
  try { rec = await api(`/inspect/api/records/${encodeURIComponent(id)}`); } catch (e) { $("detail-answer").replaceChildren(el("p", { class: "err" }, e.message)); return; }
  if (state.picked !== id) return;
  const facts = [["status", rec.status], ["model", `${rec.model || "–"} → ${rec.backend || "–"} (${rec.backend_model || "–"})`],
    ["stream", rec.stream ? "yes" : "no"], ["TTFT / total", `${ms(rec.ttft_ms)} / ${ms(rec.duration_ms)}`],
    ["tokens in / out", `${num(rec.input_tokens)} / ${num(rec.output_tokens)}`], ["cache read", num(rec.cache_read_tokens)],
    ["stop", rec.stop_reason || "–"], ["session", rec.session_id || "–"], ["error", errText(rec.error) || "–"]];
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("detail-answer").replaceChildren(...answerBlocks(rec));
  $("detail-question").textContent = lastUserMessage(rec.body);
  $("detail-json").textContent = JSON.stringify(rec, null, 2);
}

function answerBlocks(rec) {
  if (!("response" in rec)) return [el("p", { class: "muted" }, "Not here: answers are logged with log.bodies = true, and the page keeps only the latest ones whole (claude-gateway-replay show ID reads the log).")];
  if (!Array.isArray(rec.response) || !rec.response.length) return [el("p", { class: "muted" }, "No answer was sent.")];
  return rec.response.map((b) => {
    const cut = b.incomplete ? " (cut short)" : "";
    if (b.type === "text") return el("div", { class: "block answer-text" }, el("div", { class: "kind" }, "text" + cut), el("pre", {}, b.text));
    if (b.type === "thinking") return el("div", { class: "block" }, el("div", { class: "kind" }, "thinking" + cut), el("pre", {}, b.thinking));
    if (b.type === "tool_use") return el("div", { class: "block answer-tool" }, el("div", { class: "kind" }, `tool_use ${b.name}${cut}`),
      el("pre", {}, b.incomplete ? b.partial_json : JSON.stringify(b.input, null, 2)));
    return el("div", { class: "block" }, el("div", { class: "kind" }, b.type));
  });
}

function textOf(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content.map((b) => b && b.type === "text" ? b.text : b && b.type === "tool_result" ? `[tool_result] ${textOf(b.content)}` : b ? `[${b.type}]` : "").join("\n");
}

function lastUserMessage(body) {
  if (!body || !Array.isArray(body.messages)) return "(not logged)";
  const m = [...body.messages].reverse().find((x) => x && x.role === "user");
  return m ? textOf(m.content) : "(none)";
}

function openSession(id) {
  state.session = id;
  $("session-pane").hidden = false;
  $("session-id").textContent = id;
  drawSession();
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// The session's turns (generation requests, oldest first): context size against the window.
function drawSession() {
  const turns = state.records.filter((r) => r.session_id === state.session && r.event === "request" && /\/messages$/.test(r.path));
  const windowSize = Math.max(0, ...turns.map((r) => state.windows[`${r.backend}/${r.backend_model}`] || 0));
  const errors = turns.filter((r) => r.status >= 400 || r.error).length;
  const compactions = turns.filter((r, i) => i > 0 && context(r) < COMPACTION_DROP * context(turns[i - 1])).length;
  const last = turns.length ? context(turns[turns.length - 1]) : 0;
  $("session-facts").textContent = `${turns.length} turns · context now ${num(last)} tokens` +
    (windowSize ? ` of ${num(windowSize)} (${Math.round(100 * last / windowSize)}%)` : "") +
    ` · ${plural(compactions, "compaction")} · ${plural(errors, "error")}`;
  const W = 900, H = 220, L = 56, R = 12, T = 12, B = 28;
  const top = Math.max(windowSize, ...turns.map(context), 1);
  const x = (i) => L + (turns.length < 2 ? (W - L - R) / 2 : i * (W - L - R) / (turns.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "context size per turn" });
  for (let k = 0; k <= 4; k++) {
    const v = top * k / 4;
    chart.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }), svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, num(Math.round(v))));
  }
  if (windowSize) chart.append(svg("line", { class: "window", x1: L, x2: W - R, y1: y(windowSize), y2: y(windowSize) }), svg("text", { x: W - R, y: y(windowSize) - 4, "text-anchor": "end" }, "context window"));
  if (turns.length) chart.append(svg("polyline", { class: "ctx", points: turns.map((r, i) => `${x(i)},${y(context(r))}`).join(" ") }));
  turns.forEach((r, i) => {
    if (i > 0 && context(r) < COMPACTION_DROP * context(turns[i - 1])) chart.append(svg("line", { class: "compact", x1: x(i), x2: x(i), y1: T, y2: H - B }));
    const dot = svg("circle", { class: "turn" + (r.status >= 400 || r.error ? " bad" : ""), cx: x(i), cy: y(context(r)), r: 4 });
    dot.append(svg("title", {}, `turn ${i + 1}: ${context(r)} tokens · ${r.status}${r.error ? " · " + errText(r.error) : ""}`));
    dot.addEventListener("click", () => openRecord(r.request_id));
    chart.append(dot);
  });
  chart.append(svg("text", { x: L, y: H - 8 }, "turn 1"), svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `turn ${turns.length}`));
  $("chart").replaceChildren(chart);
}

$("filters").addEventListener("input", render);
$("filters").addEventListener("submit", (ev) => ev.preventDefault());
$("detail-close").addEventListener("click", () => { $("detail-pane").hidden = true; state.picked = null; document.querySelector("main").classList.remove("with-detail"); render(); });
$("session-close").addEventListener("click", () => { $("session-pane").hidden = true; state.session = null; });
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("gatewayToken", state.token);
  $("token-box").hidden = true;
});
poll();

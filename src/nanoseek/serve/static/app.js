// nanoseek chat: a plain-JS client of the server's /v1/chat/completions stream (no build step).
// Conversations live in localStorage; earlier reasoning is never sent back (DeepSeek API rule).
"use strict";

const $ = (sel) => document.querySelector(sel);
const store = {
  get(key, dflt) { try { const v = localStorage.getItem("nanoseek." + key); return v === null ? dflt : JSON.parse(v); } catch { return dflt; } },
  set(key, value) { localStorage.setItem("nanoseek." + key, JSON.stringify(value)); },
};

let conversations = store.get("conversations", []);   // [{id, title, messages: [{role, content, reasoning, error}]}]
let currentId = store.get("current", null);
let modelName = null;
let controller = null;                                  // AbortController of the running request

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("#api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function current() {
  let c = conversations.find((x) => x.id === currentId);
  if (!c) {
    c = { id: String(Date.now()) + Math.random().toString(16).slice(2, 6), title: "New chat", messages: [] };
    conversations.unshift(c);
    currentId = c.id;
  }
  return c;
}

function save() {
  store.set("conversations", conversations);
  store.set("current", currentId);
}

// ------------------------------------------------------------------------------ rendering
function renderList() {
  const ul = $("#conversations");
  ul.textContent = "";
  for (const c of conversations) {
    const li = document.createElement("li");
    li.textContent = c.title;
    li.dataset.id = c.id;
    if (c.id === currentId) li.classList.add("active");
    li.onclick = () => { if (!controller) { currentId = c.id; save(); render(); } };
    ul.appendChild(li);
  }
}

function messageView(m) {
  const div = document.createElement("div");
  div.className = "msg " + m.role;
  if (m.role === "user") {
    const b = document.createElement("div");
    b.className = "bubble";
    b.textContent = m.content;
    div.appendChild(b);
    return { div };
  }
  const details = document.createElement("details");
  details.className = "thinking";
  details.open = true;
  const summary = document.createElement("summary");
  summary.textContent = m.thinkingLabel || "Thinking";
  const reasoning = document.createElement("div");
  reasoning.className = "reasoning";
  reasoning.textContent = m.reasoning || "";
  details.append(summary, reasoning);
  details.hidden = !m.reasoning;
  const answer = document.createElement("div");
  answer.className = "answer";
  answer.textContent = m.content || "";
  const error = document.createElement("div");
  error.className = "error";
  error.textContent = m.error || "";
  div.append(details, answer, error);
  return { div, details, summary, reasoning, answer, error };
}

function render() {
  renderList();
  const box = $("#messages");
  box.textContent = "";
  for (const m of current().messages) box.appendChild(messageView(m).div);
  box.scrollTop = box.scrollHeight;
}

function setBusy(busy) {
  $("#send").hidden = busy;
  $("#stop").hidden = !busy;
  $("#input").disabled = busy;
}

// ------------------------------------------------------------------------------ the API
async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.statusText);
    modelName = j.data[0].id;
    $("#model-name").textContent = modelName;
  } catch (e) {
    $("#model-name").textContent = "(" + e.message + ")";
  }
}

// Yields the parsed JSON of each "data:" event of a Server-Sent-Events response body.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  const conv = current();
  if (conv.messages.length === 0) conv.title = text.slice(0, 40);
  conv.messages.push({ role: "user", content: text });
  const history = conv.messages.map((m) => ({ role: m.role, content: m.content || "" }));
  const m = { role: "assistant", content: "", reasoning: "" };
  conv.messages.push(m);
  save();
  render();
  const view = messageView(m);
  $("#messages").lastChild.replaceWith(view.div);
  const started = performance.now();
  let thoughtFor = null;
  controller = new AbortController();
  setBusy(true);
  try {
    if (!modelName) await loadModel();
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model: modelName || undefined, messages: history, stream: true }),
    });
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      throw new Error(j.error ? j.error.message : r.status + " " + r.statusText);
    }
    for await (const chunk of sseEvents(r)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices.length ? chunk.choices[0].delta : {};
      if (delta.reasoning_content) {
        m.reasoning += delta.reasoning_content;
        view.reasoning.textContent = m.reasoning;
        view.details.hidden = false;
      }
      if (delta.content) {
        if (thoughtFor === null && m.reasoning) {
          thoughtFor = ((performance.now() - started) / 1000).toFixed(1);
          m.thinkingLabel = "Thought for " + thoughtFor + " s";
          view.summary.textContent = m.thinkingLabel;
        }
        m.content += delta.content;
        view.answer.textContent = m.content;
      }
      $("#messages").scrollTop = $("#messages").scrollHeight;
    }
  } catch (e) {
    m.error = e.name === "AbortError" ? "(stopped)" : "Error: " + e.message;
    view.error.textContent = m.error;
  } finally {
    if (m.reasoning && !m.thinkingLabel) { m.thinkingLabel = "Thinking (unfinished)"; view.summary.textContent = m.thinkingLabel; }
    controller = null;
    setBusy(false);
    save();
    $("#input").focus();
  }
}

// ------------------------------------------------------------------------------ wiring
function applyDeepThink(on) {
  document.body.classList.toggle("deepthink", on);
  $("#deepthink").checked = on;
  store.set("deepthink", on);
}

$("#composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("#input").value.trim();
  if (!text || controller) return;
  $("#input").value = "";
  send(text);
});
$("#input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#composer").requestSubmit(); }
});
$("#stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("#deepthink").addEventListener("change", (e) => applyDeepThink(e.target.checked));
$("#new-chat").addEventListener("click", () => { if (!controller) { currentId = null; current(); save(); render(); } });
$("#api-key").value = store.get("apiKey", "");
$("#api-key").addEventListener("change", (e) => { store.set("apiKey", e.target.value.trim()); loadModel(); });

applyDeepThink(store.get("deepthink", true));
render();
loadModel();

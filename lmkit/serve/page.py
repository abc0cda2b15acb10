"""The chat page that ``lmkit serve`` answers at ``/``. Explained in chapter 13.

Plain HTML and JavaScript, no framework and nothing fetched from elsewhere (its Content-Security-
Policy allows requests to this server only). It reads the model's id from ``GET /v1/models``,
sends the conversation to ``POST /v1/chat/completions`` with ``"stream": true``, and appends each
chunk's text to the reply as it arrives (a ``fetch`` body read chunk by chunk, parsed as
server-sent events). "Stop" aborts the request: the server then frees the sequence's slot.

The page is a Python string, not a file beside this module, so that it ships in every install.
"""

CHAT_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
    "form-action 'none'",
    "Cache-Control": "no-store",
}

CHAT_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lmkit chat</title>
<link rel="icon" href="data:,">
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
  #log { border: 1px solid #ccc; border-radius: 6px; padding: .5rem 1rem; min-height: 12rem; }
  .turn { margin: .6rem 0; white-space: pre-wrap; }
  .user::before { content: "You: "; font-weight: bold; }
  .assistant::before { content: "Model: "; font-weight: bold; }
  .error { color: #b00020; }
  form { display: flex; gap: .5rem; margin-top: 1rem; }
  #message { flex: 1; padding: .4rem; }
  #status { color: #666; font-size: .9rem; margin-top: .4rem; }
</style>
</head>
<body>
<h1>lmkit chat</h1>
<p>A small GPT served by <code>lmkit serve</code> through its OpenAI-compatible API
(<code>/v1/chat/completions</code>, streamed). It is a base model: it continues text.</p>
<div id="log" aria-live="polite"></div>
<form id="form">
  <input id="message" autocomplete="off" placeholder="Type a message" aria-label="message">
  <label>max tokens <input id="max-tokens" type="number" min="1" value="" size="4"></label>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<div id="status">connecting...</div>
<script>
"use strict";
const log = document.getElementById("log");
const form = document.getElementById("form");
const input = document.getElementById("message");
const maxTokens = document.getElementById("max-tokens");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const statusLine = document.getElementById("status");
const history = [];
let model = null;
let controller = null;

function addTurn(role, text) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  div.textContent = text;
  log.appendChild(div);
  return div;
}

async function loadModel() {
  const r = await fetch("/v1/models");
  const body = await r.json();
  model = body.data[0].id;
  statusLine.textContent = "model: " + model;
}

// Server-sent events: "data: {...}" lines separated by blank lines; "data: [DONE]" ends.
function parseEvents(buffer, onData) {
  let end;
  while ((end = buffer.indexOf("\\n\\n")) >= 0) {
    const event = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    for (const line of event.split("\\n")) {
      if (line.startsWith("data: ")) onData(line.slice(6));
    }
  }
  return buffer;
}

async function send(text) {
  history.push({role: "user", content: text});
  addTurn("user", text);
  const reply = addTurn("assistant", "");
  reply.dataset.state = "streaming";
  const request = {model: model, messages: history, stream: true};
  if (maxTokens.value) request.max_tokens = Number(maxTokens.value);
  controller = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  let answer = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!r.ok) {
      const body = await r.json();
      throw new Error(r.status + ": " + (body.detail || JSON.stringify(body)));
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, {stream: true}), (data) => {
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          if (choice.delta && choice.delta.content) {
            answer += choice.delta.content;
            reply.textContent = answer;
          }
          if (choice.finish_reason) reply.dataset.finish = choice.finish_reason;
        }
      });
    }
    reply.dataset.state = "done";
  } catch (e) {
    reply.dataset.state = e.name === "AbortError" ? "stopped" : "error";
    if (e.name !== "AbortError") addTurn("error", String(e.message || e));
  } finally {
    history.push({role: "assistant", content: answer});
    controller = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  if (!text || !model || controller) return;
  input.value = "";
  send(text);
});
stopButton.addEventListener("click", () => { if (controller) controller.abort(); });
loadModel().catch((e) => { statusLine.textContent = "error: " + e; });
</script>
</body>
</html>
"""

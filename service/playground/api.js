// Talking to this server, and only to it: relative URLs, the token typed into the page (kept in
// this module, never stored), JSON and multipart calls, server-sent events read from fetch's stream,
// and the curl line that reproduces each call.

const ORIGIN = window.location.origin;
let token = "";

export function setToken(value) {
  token = value.trim();
}

// A 4xx or 5xx answer: its status and the server's own {"error": ...} message.
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function failure(res) {
  const text = await res.text();
  let message = text.slice(0, 500) || res.statusText;
  try {
    const data = JSON.parse(text);
    if (data && typeof data.error === "string") message = data.error;
  } catch {
    // not JSON: the text as it came
  }
  return new ApiError(res.status, message);
}

async function answer(res) {
  if (!res.ok) throw await failure(res);
  return res.json();
}

export async function getJSON(path) {
  return answer(await fetch(path, { headers: headers({ Accept: "application/json" }) }));
}

// GET without the token check mattering (probes): the status alone.
export async function status(path) {
  return (await fetch(path, { headers: headers() })).status;
}

// The last calls the page made, per model (the family named in the request), newest first.
const calls = new Map();

export function callsFor(model) {
  return calls.get(model) || [];
}

function remember(model, task, line) {
  const list = callsFor(model).filter((c) => c.task !== task);
  calls.set(model, [{ task, curl: line }, ...list]);
  return line;
}

// `quiet`: a call the page makes for itself (e.g. embedding the card's examples), not remembered.
export async function postJSON(path, body, { quiet = false } = {}) {
  const line = curl(path, { json: body });
  if (!quiet) remember(body.model, path.slice(1), line);
  const res = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  return { ...(await answer(res)), curl: line };
}

export async function postForm(path, fields, file) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  form.append("image", file, file.name);
  const line = remember(fields.model, path.slice(1), curl(path, { fields, file: file.name }));
  const res = await fetch(path, { method: "POST", headers: headers(), body: form });
  return { ...(await answer(res)), curl: line };
}

// POST a JSON body and yield its server-sent events ({event, data}) as they arrive.
export async function* events(path, body, signal) {
  remember(body.model, path.slice(1), curl(path, { json: body }));
  const res = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
    if (done) return;
  }
}

function quoted(s) {
  return `'${String(s).replaceAll("'", "'\\''")}'`;
}

// The curl command that sends what the page sent (the token as a variable, never its value).
export function curl(path, { json, fields, file }) {
  const auth = token ? ` -H "Authorization: Bearer $EE559_API_TOKEN"` : "";
  const url = `${ORIGIN}${path}`;
  if (json) {
    const flags = json.stream ? "-sN" : "-s";
    return `curl ${flags} -X POST ${url}${auth} -H 'Content-Type: application/json' -d ${quoted(JSON.stringify(json))}`;
  }
  const form = Object.entries(fields).map(([k, v]) => `-F ${quoted(`${k}=${v}`)}`);
  return `curl -s -X POST ${url}${auth} ${form.join(" ")} -F ${quoted(`image=@${file}`)}`;
}

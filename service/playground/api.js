// Talking to this server, and only to it: relative URLs, the token typed into the page (kept in
// this module, never stored), JSON and multipart calls, server-sent events read from fetch's stream,
// and the curl line and Python tritonclient script that reproduce each call.

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

// GET a picture or a text: the response itself (a 4xx or 5xx throws, with the server's message).
export async function getRaw(path) {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) throw await failure(res);
  return res;
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

// `python`: the tritonclient script that runs the same graph on the same input (null for text).
function remember(model, task, line, python = null) {
  const list = callsFor(model).filter((c) => c.task !== task);
  calls.set(model, [{ task, curl: line, python }, ...list]);
  return line;
}

// `quiet`: a call the page makes for itself (e.g. embedding the card's examples), not remembered.
export async function postJSON(path, body, { quiet = false, python = null } = {}) {
  const line = curl(path, { json: body });
  if (!quiet) remember(body.model, path.slice(1), line, python);
  const res = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  return { ...(await answer(res)), curl: line };
}

export async function postForm(path, fields, file, { python = null } = {}) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  form.append("image", file, file.name);
  const line = remember(fields.model, path.slice(1), curl(path, { fields, file: file.name }), python);
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

// The same graph run through the Open Inference Protocol (/v2) with Triton's Python client, on the
// input the page sent: `source` is {pixels} (the model input as the page computed it), {seed, n}
// or {interpolate} (the latent codes /generate draws: core.images.latent_noise, the first code of
// each seed, and the great circle between them as service/tasks/samples.py walks it). It prints
// every output of the graph as JSON; the token, when the server wants one, comes from the
// environment, as in the curl lines.
export function tritonScript(card, source) {
  const py = (v) => JSON.stringify(v); // strings and nested numbers: the same literals in Python
  const dim = card.inputs[0].shape.slice(1);
  const ssl = window.location.protocol === "https:" ? ", ssl=True" : "";
  const lines = ["import json"];
  if (token) lines.push("import os");
  lines.push("", "import numpy as np", "import tritonclient.http as httpclient", "", `client = httpclient.InferenceServerClient(${py(window.location.host)}${ssl})`);
  if (source.pixels) {
    if (source.upload) lines.push("# your upload as the page resized it: the service decodes and resizes the file itself, and may differ a little");
    lines.push(`x = np.array(${py(source.pixels)}, dtype=np.float32).reshape(1, ${dim.join(", ")})`);
  } else if (source.interpolate) {
    const { from_seed: a, to_seed: b, steps } = source.interpolate;
    lines.push(
      `# /generate's interpolate: the first latent code of seeds ${a} and ${b}, and ${steps} codes on the great circle between them`,
      `a, b = (np.random.default_rng(s).standard_normal((1, ${dim[0]}), dtype=np.float32)[0].astype(np.float64) for s in (${a}, ${b}))`,
      `t = np.linspace(0.0, 1.0, ${steps})[:, None]`,
      "omega = np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))",
      "x = ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)).astype(np.float32)",
    );
  } else {
    lines.push(`# the latent codes /generate draws for seed ${source.seed}`, `x = np.random.default_rng(${source.seed}).standard_normal((${source.n}, ${dim[0]}), dtype=np.float32)`);
  }
  const outputs = card.outputs.map((o) => o.name);
  const auth = token ? `, headers={"Authorization": "Bearer " + os.environ["EE559_API_TOKEN"]}` : "";
  lines.push(
    `inp = httpclient.InferInput(${py(card.inputs[0].name)}, list(x.shape), "FP32")`,
    "inp.set_data_from_numpy(x)",
    `outputs = ${py(outputs)}`,
    `result = client.infer(${py(card.name)}, [inp], model_version=${py(card.version)}, outputs=[httpclient.InferRequestedOutput(o) for o in outputs]${auth})`,
    "print(json.dumps({o: result.as_numpy(o).round(4).tolist() for o in outputs}))",
  );
  return lines.join("\n");
}

// The playground: one view per serving task this server serves (from GET /models), a view per
// model rendering its card (GET /models/{name}), and the API (/docs.json). Text from the server
// is always set as textContent, never parsed as HTML.

import { ApiError, callsFor, events, getJSON, getRaw, postForm, postJSON, setToken, status, tritonScript } from "./api.js";
import { PALETTE, Pad, drawArray, drawGrid, heat, noisy, overlay } from "./images.js";

const state = { cards: [], docs: null, provider: null, examples: new Map() };

// -- small DOM helpers -----------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function canvas(id, size = 224) {
  return el("canvas", { id, width: size, height: size, class: "picture" });
}

function showError(err) {
  const box = document.getElementById("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const hint = err.status === 401 ? " (type the API token in the field above)" : "";
  box.textContent = err instanceof ApiError ? `${err.status}: ${err.message}${hint}` : `error: ${err.message}`;
  box.hidden = false;
}

// Runs an action, showing its error; at most one at a time per key, the latest request wins.
const running = new Map();
async function act(key, fn) {
  if (running.get(key)) {
    running.set(key, "again");
    return;
  }
  running.set(key, true);
  try {
    showError(null);
    await fn();
  } catch (err) {
    showError(err);
  } finally {
    const again = running.get(key) === "again";
    running.delete(key);
    if (again) act(key, fn);
  }
}

function noteProvider(answer) {
  if (answer && answer.provider) {
    state.provider = answer.provider;
    document.getElementById("status-provider").textContent = `provider: ${answer.provider}`;
  }
}

function curlBlock() {
  const pre = el("pre", { class: "curl", text: "nothing sent yet" });
  return { node: el("details", { class: "reproduce", open: "" }, el("summary", { text: "The curl call that does what the page just did" }), pre), pre };
}

// The models (the names requests use: a graph's family) serving `task`, with a card for each.
function servedFor(task) {
  const families = new Map();
  for (const card of state.cards) if (card.tasks.includes(task) && !families.has(card.family)) families.set(card.family, card);
  return families;
}

function modelSelect(task, onChange) {
  const select = el("select", { id: `${task}-model`, onchange: onChange });
  for (const [family, card] of servedFor(task)) select.append(el("option", { value: family, text: `${family} (${card.chapter.split("(")[0].trim()})` }));
  return select;
}

async function examplesOf(name) {
  if (!state.examples.has(name)) state.examples.set(name, (await getJSON(`/models/${encodeURIComponent(name)}`)).examples || {});
  return state.examples.get(name);
}

// -- image tasks: one input pad, a model choice, a task-specific answer ---------------------------
const IMAGE_TASKS = {
  classify: {
    title: "Classify: draw a digit (or a shape), upload a photo",
    live: true,
    setup(out) {
      out.append(
        el("output", { id: "classify-label", class: "big", text: "–" }),
        el("p", { id: "classify-ood", class: "caption" }),
        el("div", { id: "classify-bars", class: "bars" }),
      );
    },
    extra: () => ({ top_k: 5 }),
    render(answer) {
      document.getElementById("classify-label").textContent = answer.label;
      // The card's out-of-distribution rule (absent for models exported without calibration).
      document.getElementById("classify-ood").textContent =
        answer.out_of_distribution === undefined
          ? ""
          : answer.out_of_distribution
            ? "Out of distribution: this does not look like the model's training data; the label is a guess."
            : "In distribution.";
      const bars = document.getElementById("classify-bars");
      bars.replaceChildren(
        ...answer.top_k.map((t) => {
          const fill = el("span", { class: "fill" });
          fill.style.width = `${(100 * t.probability).toFixed(1)}%`;
          return el("div", { class: "bar" }, el("span", { class: "name", text: t.label }), el("span", { class: "track" }, fill), el("span", { class: "value", text: t.probability.toFixed(3) }));
        }),
      );
    },
  },
  explain: {
    title: "Explain: the class activation map over the image",
    setup(out) {
      out.append(canvas("explain-overlay"), el("p", { id: "explain-label", class: "caption" }));
    },
    render(answer, pixels) {
      const c = document.getElementById("explain-overlay");
      drawArray(c, pixels);
      overlay(c, answer.heatmap, heat, 0.5);
      c.dataset.drawn = "true";
      document.getElementById("explain-label").textContent = `${answer.label} (p = ${answer.probability.toFixed(3)}): red is where the evidence was`;
    },
  },
  segment: {
    title: "Segment: a class per pixel, over the image",
    setup(out) {
      out.append(canvas("segment-overlay"), el("ul", { id: "segment-legend", class: "legend" }));
    },
    render(answer, pixels) {
      const c = document.getElementById("segment-overlay");
      drawArray(c, pixels);
      overlay(c, answer.mask, (k) => (k === 0 ? null : PALETTE[k % PALETTE.length]), 0.6);
      document.getElementById("segment-legend").replaceChildren(
        ...answer.classes.map((name, k) => {
          const swatch = el("span", { class: "swatch" });
          swatch.style.background = k === 0 ? "transparent" : `rgb(${PALETTE[k % PALETTE.length].join(",")})`;
          return el("li", {}, swatch, `${name}: ${answer.pixel_counts[name]} px`);
        }),
      );
    },
  },
  denoise: {
    title: "Denoise: add noise, see it removed",
    setup(out, rerun) {
      const slider = el("input", { id: "denoise-noise", type: "range", min: "0", max: "1", step: "0.05", value: "0.4", oninput: rerun });
      out.append(el("label", { class: "row" }, "noise σ ", slider, el("output", { id: "denoise-sigma", text: "0.4" })), el("div", { class: "pair" }, el("figure", {}, canvas("denoise-noisy", 168), el("figcaption", { text: "noisy (sent)" })), el("figure", {}, canvas("denoise-clean", 168), el("figcaption", { text: "denoised" }))));
    },
    json: true, // the noise is added here, to the pixels: always sent as JSON
    transform(pixels) {
      const sigma = Number(document.getElementById("denoise-noise").value);
      document.getElementById("denoise-sigma").textContent = sigma.toFixed(2);
      return noisy(pixels, sigma);
    },
    render(answer, pixels) {
      drawArray(document.getElementById("denoise-noisy"), pixels);
      drawArray(document.getElementById("denoise-clean"), answer.denoised);
    },
  },
  embed: {
    title: "Embed: the bottleneck code, and the nearest held-out examples",
    setup(out) {
      out.append(el("div", { id: "embed-vector", class: "bars" }), el("p", { class: "caption", text: "nearest of the card's held-out examples (Euclidean distance of the codes):" }), el("div", { id: "embed-neighbours", class: "neighbours" }));
    },
    async render(answer, pixels, model) {
      const max = Math.max(...answer.embedding.map(Math.abs), 1e-6);
      document.getElementById("embed-vector").replaceChildren(
        ...answer.embedding.map((v, i) => {
          const fill = el("span", { class: v < 0 ? "fill negative" : "fill" });
          fill.style.width = `${(50 * Math.abs(v)) / max}%`;
          return el("div", { class: "bar" }, el("span", { class: "name", text: `z${i}` }), el("span", { class: "track" }, fill), el("span", { class: "value", text: v.toFixed(2) }));
        }),
      );
      const card = servedFor("embed").get(model);
      const examples = await examplesOf(card.name);
      const stored = await embeddingsOf(card, examples.inputs || []);
      const order = stored.map((z, i) => [Math.hypot(...z.map((v, k) => v - answer.embedding[k])), i]).sort((a, b) => a[0] - b[0]).slice(0, 5);
      document.getElementById("embed-neighbours").replaceChildren(
        ...order.map(([d, i]) => {
          const c = canvas(`embed-n${i}`, 56);
          drawArray(c, examples.inputs[i]);
          const target = examples.targets ? card.labels[examples.targets[i]] ?? examples.targets[i] : "";
          return el("figure", {}, c, el("figcaption", { text: `${target} d=${d.toFixed(2)}` }));
        }),
      );
    },
  },
  reconstruct: {
    title: "Reconstruct: the VAE's reconstruction, from the posterior mean",
    setup(out) {
      out.append(el("div", { class: "pair" }, el("figure", {}, canvas("reconstruct-input", 168), el("figcaption", { text: "input" })), el("figure", {}, canvas("reconstruct-output", 168), el("figcaption", { text: "reconstruction" }))), el("p", { id: "reconstruct-posterior", class: "caption" }));
    },
    render(answer, pixels) {
      drawArray(document.getElementById("reconstruct-input"), pixels);
      drawArray(document.getElementById("reconstruct-output"), answer.reconstruction);
      document.getElementById("reconstruct-posterior").textContent = `posterior mean: [${answer.mean.map((v) => v.toFixed(2)).join(", ")}]`;
    },
  },
};

// The held-out examples' embeddings, computed once per model version (one request each).
const embeddings = new Map();
async function embeddingsOf(card, inputs) {
  const key = `${card.name}:${card.version}`;
  if (!embeddings.has(key)) {
    const codes = [];
    for (const image of inputs) codes.push((await postJSON("/embed", { model: card.family, image }, { quiet: true })).embedding);
    embeddings.set(key, codes);
  }
  return embeddings.get(key);
}

function imageView(task, spec) {
  const models = servedFor(task);
  const card = () => models.get(select.value);
  const shape = () => card().inputs[0].shape.slice(1);
  const out = el("div", { class: "pane output" });
  const reproduce = curlBlock();
  const run = () =>
    act(task, async () => {
      if (pad.empty) return;
      const model = select.value;
      let pixels = pad.pixels(shape());
      if (spec.transform) pixels = spec.transform(pixels);
      const extra = spec.extra ? spec.extra() : {};
      const input = spec.json ? { pixels } : pad.input(shape());
      const python = tritonScript(card(), { pixels, upload: Boolean(input.file) });
      const answer = input.file ? await postForm(`/${task}`, { model, ...extra }, input.file, { python }) : await postJSON(`/${task}`, { model, ...extra, image: pixels }, { python });
      reproduce.pre.textContent = answer.curl;
      noteProvider(answer);
      await spec.render(answer, pixels, model);
    });
  const select = modelSelect(task, run);
  const pad = new Pad(canvas(`${task}-pad`, 280), { onStroke: () => spec.live && run(), onEnd: run });
  let next = 0;
  const upload = el("input", {
    id: `${task}-upload`,
    type: "file",
    accept: "image/png,image/jpeg",
    onchange: async () => {
      if (upload.files.length) {
        await pad.showUpload(upload.files[0]);
        run();
      }
    },
  });
  const example = () =>
    act(`${task}-example`, async () => {
      const inputs = (await examplesOf(card().name)).inputs || [];
      if (!inputs.length) throw new Error("this model's card has no held-out examples");
      pad.showExample(inputs[next++ % inputs.length]);
      run();
    });
  spec.setup(out, run);
  const hint = shape()[0] === 1 ? "Draw white on black: it is centred as MNIST digits are." : "Draw, or better, take a held-out example or upload a picture.";
  return el(
    "section",
    { class: "task", id: `view-${task}` },
    el("h2", { text: spec.title }),
    el("p", { class: "row" }, el("label", {}, "model ", select), el("a", { href: `#/models/${card().name}`, text: "its card" })),
    el(
      "div",
      { class: "panes" },
      el("div", { class: "pane input" }, pad.canvas, el("div", { class: "row" }, el("button", { type: "button", onclick: () => pad.clear(), text: "Clear" }), el("button", { type: "button", onclick: example, text: "Held-out example" }), el("label", { class: "upload" }, "Upload ", upload)), el("p", { class: "hint", text: hint })),
      out,
    ),
    reproduce.node,
  );
}

// -- generate: a grid of samples for a seed, and a walk between the latent codes of two seeds ----
function drawRow(canvas, images) {
  const size = canvas.height;
  canvas.width = size * images.length;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  images.forEach((img, i) => drawArray(canvas, img, i * size + 1, 1, size - 2, size - 2));
}

function generateView() {
  const reproduce = curlBlock();
  const seed = el("input", { id: "generate-seed", type: "number", min: "0", value: "0" });
  const n = el("input", { id: "generate-n", type: "number", min: "1", max: "100", value: "16" });
  const grid = canvas("generate-grid", 336);
  const card = () => servedFor("generate").get(select.value);
  const run = () =>
    act("generate", async () => {
      const body = { model: select.value, n: Number(n.value), seed: Number(seed.value) };
      const answer = await postJSON("/generate", body, { python: tritonScript(card(), { seed: body.seed, n: body.n }) });
      reproduce.pre.textContent = answer.curl;
      noteProvider(answer);
      drawGrid(grid, answer.images);
    });
  const select = modelSelect("generate", run);
  const fresh = () => {
    seed.value = String(Math.floor(Math.random() * 2 ** 31));
    run();
  };
  const fromSeed = el("input", { id: "interpolate-from", type: "number", min: "0", value: "3" });
  const toSeed = el("input", { id: "interpolate-to", type: "number", min: "0", value: "7" });
  const steps = el("input", { id: "interpolate-steps", type: "number", min: "2", max: "16", value: "8" });
  const row = el("canvas", { id: "interpolate-row", width: "84", height: "84", class: "picture" });
  const caption = el("p", { id: "interpolate-caption", class: "caption" });
  const walk = () =>
    act("interpolate", async () => {
      const interpolate = { from_seed: Number(fromSeed.value), to_seed: Number(toSeed.value), steps: Number(steps.value) };
      const answer = await postJSON("/generate", { model: select.value, interpolate }, { python: tritonScript(card(), { interpolate }) });
      reproduce.pre.textContent = answer.curl;
      noteProvider(answer);
      drawRow(row, answer.images);
      row.dataset.drawn = String(answer.images.length);
      caption.textContent = `${answer.n} images from the first sample of seed ${interpolate.from_seed} to the first of seed ${interpolate.to_seed}, along the great circle between their latent codes`;
    });
  return el(
    "section",
    { class: "task", id: "view-generate" },
    el("h2", { text: "Generate: samples drawn from a seed (the same seed, the same images)" }),
    el("p", { class: "row" }, el("label", {}, "model ", select), el("label", {}, "n ", n), el("label", {}, "seed ", seed), el("button", { type: "button", onclick: run, text: "Generate" }), el("button", { id: "generate-new-seed", type: "button", onclick: fresh, text: "New seed" })),
    grid,
    el("h3", { text: "A walk through the latent space, from one seed to another" }),
    el("p", { class: "row" }, el("label", {}, "from seed ", fromSeed), el("label", {}, "to seed ", toSeed), el("label", {}, "steps ", steps), el("button", { id: "interpolate-run", type: "button", onclick: walk, text: "Interpolate" })),
    el("div", { class: "strip" }, row),
    caption,
    reproduce.node,
  );
}

// -- generate_text: streamed, character by character ------------------------------------------
function textView() {
  const reproduce = curlBlock();
  const prompt = el("textarea", { id: "text-prompt", rows: "2", cols: "60", spellcheck: "false" });
  const field = (id, attrs) => el("input", { id, type: "number", ...attrs });
  const temperature = field("text-temperature", { min: "0.05", max: "10", step: "0.05", value: "0.8" });
  const topK = field("text-top-k", { min: "1", placeholder: "all" });
  const maxTokens = field("text-max-tokens", { min: "1", value: "300" });
  const seed = field("text-seed", { min: "0", placeholder: "random" });
  const shown = el("span", { class: "prompt" });
  const generated = el("span", { id: "text-generated" });
  const output = el("pre", { id: "text-output", class: "text" }, shown, generated);
  const summary = el("p", { id: "text-summary", class: "caption" });
  let controller = null;
  const loadPrompt = async () => {
    const card = servedFor("generate_text").get(select.value);
    const prompts = (await examplesOf(card.name)).prompts || [];
    if (prompts.length && !prompt.value) prompt.value = prompts[0];
  };
  const start = () =>
    act("text", async () => {
      controller?.abort();
      controller = new AbortController();
      const body = { model: select.value, prompt: prompt.value, max_new_tokens: Number(maxTokens.value), temperature: Number(temperature.value), stream: true };
      if (topK.value) body.top_k = Number(topK.value);
      if (seed.value) body.seed = Number(seed.value);
      shown.textContent = prompt.value;
      generated.textContent = "";
      summary.textContent = "generating…";
      reproduce.pre.textContent = callsFor(body.model)[0]?.curl ?? "";
      try {
        for await (const { event, data } of events("/generate_text", body, controller.signal)) {
          reproduce.pre.textContent = callsFor(body.model)[0].curl;
          if (event === "message") generated.append(data.token); // a text node: never HTML
          else if (event === "done") {
            noteProvider(data);
            summary.textContent = `${data.tokens} characters, first after ${(1000 * data.time_to_first_token_s).toFixed(1)} ms, all in ${data.seconds.toFixed(3)} s; ${data.finish_reason}; seed ${data.seed}`;
          } else if (event === "error") throw new Error(data.error);
        }
      } catch (err) {
        if (err.name === "AbortError") summary.textContent = "stopped";
        else throw err;
      }
    });
  const select = modelSelect("generate_text", () => {
    prompt.value = "";
    act("text-prompt", loadPrompt);
  });
  act("text-prompt", loadPrompt);
  return el(
    "section",
    { class: "task", id: "view-generate_text" },
    el("h2", { text: "Generate text: streamed character by character" }),
    el("p", { class: "row" }, el("label", {}, "model ", select), el("label", {}, "temperature ", temperature), el("label", {}, "top-k ", topK), el("label", {}, "max tokens ", maxTokens), el("label", {}, "seed ", seed)),
    el("p", { class: "row" }, prompt, el("button", { id: "text-start", type: "button", onclick: start, text: "Generate" }), el("button", { type: "button", onclick: () => controller?.abort(), text: "Stop" })),
    output,
    summary,
    reproduce.node,
  );
}

// -- a model's card, for a student ------------------------------------------------------------
function table(rows, head) {
  return el("table", {}, head ? el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))) : null, el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: typeof c === "string" ? c : JSON.stringify(c) }))))));
}

function modelsList() {
  const row = (c) => el("tr", {}, el("td", {}, el("a", { href: `#/models/${c.name}`, text: c.name })), el("td", { text: c.chapter }), el("td", { text: c.tasks.join(", ") }), el("td", { text: c.version }));
  const head = el("tr", {}, ...["model", "course chapter", "tasks", "version"].map((h) => el("th", { text: h })));
  return el("section", { class: "task", id: "view-models" }, el("h2", { text: "Served models" }), el("table", {}, el("thead", {}, head), el("tbody", {}, ...state.cards.map(row))));
}

function modelView(name) {
  const section = el("section", { class: "task", id: "view-model" }, el("h2", { text: name }));
  act("model", async () => {
    const card = await getJSON(`/models/${encodeURIComponent(name)}`);
    const calls = callsFor(card.family).filter((c) => card.tasks.includes(c.task));
    const parity = (card.parity.batches || []).flatMap((b) => Object.entries(b.outputs).map(([out, p]) => [String(b.batch_size), out, p.max_abs_error.toExponential(2), p.tolerance.toExponential(0), p.top1_agreement === undefined ? "" : String(p.top1_agreement)]));
    const examples = el("div", { class: "neighbours" });
    const curve = el("div", { id: "model-curve", class: "curve" }, el("p", { class: "caption", text: "loading…" }));
    if (!card.generation && card.inputs[0].shape.length === 4) {
      (card.examples.inputs || []).slice(0, 8).forEach((x, i) => {
        const c = canvas(`example-${i}`, 56);
        drawArray(c, x);
        examples.append(el("figure", {}, c, el("figcaption", { text: String(card.labels[card.examples.targets?.[i]] ?? "") })));
      });
    }
    section.append(
      el("p", { text: `Course chapter: ${card.chapter}. Serves ${card.tasks.map((t) => `/${t}`).join(", ")} as "${card.family}"; version ${card.version} (sha256 ${card.sha256.slice(0, 16)}…, ONNX opset ${card.opset}).` }),
      el("h3", { text: "Architecture (its training config)" }),
      table(Object.entries(card.config).map(([k, v]) => [k, v])),
      el("h3", { text: "Data" }),
      table(Object.entries(card.dataset).map(([k, v]) => [k, v])),
      card.labels.length <= 20 ? el("p", { text: `Labels: ${card.labels.join(", ")}` }) : el("p", { text: `Vocabulary: ${card.labels.length} characters` }),
      el("h3", { text: "Inputs and outputs" }),
      table([...card.inputs.map((t) => ["input", t.name, t.shape.join(" × "), t.dtype]), ...card.outputs.map((t) => ["output", t.name, t.shape.join(" × "), t.dtype])], ["", "name", "shape", "dtype"]),
      el("h3", { text: "Quality on held-out data" }),
      table(Object.entries(card.metrics).map(([k, v]) => [k, typeof v === "number" ? String(+v.toFixed(4)) : v])),
      el("h3", { text: `Parity: ONNX Runtime against PyTorch (${card.parity.provider || ""})` }),
      table(parity, ["batch", "output", "max |error|", "tolerance", "top-1 agreement"]),
      examples.childElementCount ? el("h3", { text: "Held-out examples (the model never saw them)" }) : null,
      examples,
      el("h3", { text: "Training curve" }),
      curve,
      el("h3", { text: "Libraries" }),
      table(Object.entries(card.libraries).map(([k, v]) => [k, v])),
      el("h3", { text: "What the page just did with it, as curl and as Python (tritonclient, through /v2)" }),
      ...(calls.length ? calls.flatMap(reproduction) : [el("p", { id: "model-nothing-yet", text: `Nothing yet: try ${card.tasks.map((t) => `/${t}`).join(" or ")} in its tab, then come back.` })]),
    );
    await showCurve(curve, card);
  });
  return section;
}

// The loss per epoch of the run the graph was exported from, as the server stores it. Fetched with
// the token (an <img> alone could not send it) and shown from a blob: URL of this page.
async function showCurve(box, card) {
  try {
    const res = await getRaw(`/models/${encodeURIComponent(card.name)}/loss_curve.png?version=${encodeURIComponent(card.version)}`);
    const img = el("img", { id: "model-loss-curve", alt: `${card.name}: loss per epoch of its training run`, src: URL.createObjectURL(await res.blob()) });
    box.replaceChildren(img);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    box.replaceChildren(el("p", { class: "caption", text: err.status === 404 ? err.message : `${err.status}: ${err.message}` }));
  }
}

function reproduction(call) {
  const python = call.python
    ? el("pre", { class: "curl python", text: call.python })
    : el("p", { class: "caption", text: "Text is generated step by step by /generate_text: the v2 route describes the text graphs but does not generate with them." });
  return [el("h4", { text: `/${call.task}` }), el("pre", { class: "curl", text: call.curl }), python];
}

// -- the API, from /docs.json (its paths only: the document's description is BentoML's) ------------
function apiView() {
  const section = el("section", { class: "task", id: "view-api" }, el("h2", { text: "API: every route, from /docs.json" }));
  act("api", async () => {
    state.docs = state.docs || (await getJSON("/docs.json"));
    for (const [path, ops] of Object.entries(state.docs.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const json = op.requestBody?.content?.["application/json"]?.schema?.properties || {};
        const types = Object.keys(op.requestBody?.content || {});
        section.append(
          el("h3", {}, el("code", { text: `${method.toUpperCase()} ${path}` })),
          el("p", { text: op.summary || op.description || "" }),
          types.length ? el("p", { class: "caption", text: `accepts ${types.join(", ")}` }) : null,
          Object.keys(json).length ? table(Object.entries(json).map(([k, s]) => [k, s.type || (s.enum ? "one of" : ""), s.enum ? s.enum.join(", ") : s.description || ""]), ["field", "type", "values"]) : null,
        );
      }
    }
  });
  return section;
}

// -- the page ----------------------------------------------------------------------------------
const VIEWS = { ...Object.fromEntries(Object.entries(IMAGE_TASKS).map(([t, spec]) => [t, () => imageView(t, spec)])), generate: generateView, generate_text: textView };
const TITLES = { classify: "Classify", explain: "Explain", segment: "Segment", denoise: "Denoise", embed: "Embed", reconstruct: "Reconstruct", generate: "Generate", generate_text: "Text" };
const built = new Map();

function servedTasks() {
  const tasks = new Set(state.cards.flatMap((c) => c.tasks));
  return Object.keys(VIEWS).filter((t) => tasks.has(t));
}

function renderTabs() {
  const tabs = [...servedTasks().map((t) => [t, TITLES[t]]), ["models", "Models"], ["api", "API"]];
  document.getElementById("tabs").replaceChildren(...tabs.map(([id, title]) => el("a", { href: `#/${id}`, id: `tab-${id}`, text: title })));
}

function renderStatus() {
  const models = document.getElementById("status-models");
  models.replaceChildren(...state.cards.map((c) => el("a", { class: "pill", href: `#/models/${c.name}`, text: `${c.name} ${c.version.slice(0, 8)}` })));
}

async function pollReady() {
  const pill = document.getElementById("status-ready");
  try {
    const code = await status("/readyz");
    pill.textContent = code === 200 ? "ready" : `not ready (${code})`;
    pill.className = code === 200 ? "pill ok" : "pill bad";
  } catch {
    pill.textContent = "unreachable";
    pill.className = "pill bad";
  }
}

// -- live latency and request rate, from the server's own /metrics ----------------------------------
// Snapshots of the request-duration histogram (its buckets summed over routes) and of the request
// counter; the strip shows the quantiles and the rate of the requests between the oldest snapshot
// of the last minute and the newest, as Prometheus's histogram_quantile and rate would.
const WINDOW_MS = 60000;
const snapshots = [];

export function parseMetrics(text) {
  const buckets = new Map();
  let total = 0;
  for (const line of text.split("\n")) {
    const bucket = /^ee559_request_duration_seconds_bucket\{(.*)\} (\S+)$/.exec(line);
    if (bucket) {
      const le = /(?:^|,)le="([^"]+)"/.exec(bucket[1]);
      if (le) buckets.set(le[1], (buckets.get(le[1]) || 0) + Number(bucket[2]));
      continue;
    }
    const count = /^ee559_requests_total(?:\{.*\})? (\S+)$/.exec(line);
    if (count) total += Number(count[1]);
  }
  return { buckets: [...buckets].map(([le, n]) => [Number(le), n]).sort((a, b) => a[0] - b[0]), total };
}

// The q-quantile of the requests counted in cumulative buckets [[upper bound, count]], linear
// within the bucket that holds it (Prometheus's histogram_quantile); null without requests.
export function quantile(q, buckets) {
  const all = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (all <= 0) return null;
  const rank = q * all;
  let below = 0;
  let lower = 0;
  for (const [upper, n] of buckets) {
    if (n >= rank) {
      if (!Number.isFinite(upper)) return lower; // past the last finite bound: at least that
      return lower + ((upper - lower) * (rank - below)) / Math.max(n - below, 1e-12);
    }
    below = n;
    lower = upper;
  }
  return lower;
}

function ms(seconds) {
  if (seconds === null) return "–";
  const v = 1000 * seconds;
  return `${v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)} ms`;
}

async function pollMetrics() {
  const latency = document.getElementById("status-latency");
  const rate = document.getElementById("status-rate");
  let now;
  try {
    const res = await getRaw("/metrics");
    now = { at: performance.now(), ...parseMetrics(await res.text()) };
  } catch {
    snapshots.length = 0; // e.g. a 401 with EE559_AUTH_PROBES=1 and no token yet
    latency.textContent = "p50 n/a p99 n/a";
    rate.textContent = "n/a req/s";
    return;
  }
  const last = snapshots[snapshots.length - 1];
  if (last && now.total < last.total) snapshots.length = 0; // the server restarted: counters reset
  snapshots.push(now);
  while (snapshots.length > 2 && now.at - snapshots[1].at >= WINDOW_MS) snapshots.shift();
  const first = snapshots[0];
  if (first === now) return;
  const before = new Map(first.buckets);
  const delta = now.buckets.map(([le, n]) => [le, n - (before.get(le) || 0)]);
  latency.textContent = `p50 ${ms(quantile(0.5, delta))} p99 ${ms(quantile(0.99, delta))}`;
  rate.textContent = `${((1000 * (now.total - first.total)) / (now.at - first.at)).toFixed(2)} req/s`;
  latency.dataset.requests = String(delta.length ? delta[delta.length - 1][1] : 0);
}

function route() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const fallback = window.location.pathname === "/docs" ? "api" : servedTasks()[0] || "models";
  const [name, arg] = (hash || fallback).split("/");
  let view;
  if (name === "models" && arg) view = modelView(decodeURIComponent(arg));
  else if (name === "models") view = modelsList();
  else if (name === "api") view = apiView();
  else if (VIEWS[name] && servedTasks().includes(name)) {
    if (!built.has(name)) built.set(name, VIEWS[name]()); // kept: drawings and text stay as left
    view = built.get(name);
  } else view = el("p", { text: `Nothing served here: ${hash}` });
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.id === `tab-${name}`);
  document.getElementById("view").replaceChildren(view);
}

async function load() {
  built.clear();
  state.examples.clear();
  try {
    state.cards = (await getJSON("/models")).models;
    showError(null);
  } catch (err) {
    state.cards = [];
    showError(err);
  }
  renderStatus();
  renderTabs();
  route();
}

function main() {
  const token = document.getElementById("token");
  token.addEventListener("change", () => {
    setToken(token.value);
    load();
  });
  window.addEventListener("hashchange", route);
  load();
  pollReady();
  setInterval(pollReady, 5000);
  pollMetrics();
  setInterval(pollMetrics, 3000);
}

main();

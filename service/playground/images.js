// Pictures on canvases: the model inputs and outputs as nested arrays in [0, 1] ((H, W) or
// (C, H, W), as the service takes and answers them), colour maps, and the drawing pad.

// (H, W) or (C, H, W) -> {c, h, w, at(ch, y, x)}
function planes(array) {
  const cube = Array.isArray(array[0][0]) ? array : [array];
  return { c: cube.length, h: cube[0].length, w: cube[0][0].length, at: (ch, y, x) => cube[ch][y][x] };
}

function byte(v) {
  return Math.max(0, Math.min(255, Math.round(v * 255)));
}

// An array as RGBA pixels at its own size.
export function imageData(array) {
  const p = planes(array);
  const data = new ImageData(p.w, p.h);
  for (let y = 0; y < p.h; y++) {
    for (let x = 0; x < p.w; x++) {
      const i = 4 * (y * p.w + x);
      for (let k = 0; k < 3; k++) data.data[i + k] = byte(p.at(p.c === 3 ? k : 0, y, x));
      data.data[i + 3] = 255;
    }
  }
  return data;
}

function scaled(data, canvas, x = 0, y = 0, w = canvas.width, h = canvas.height) {
  const small = document.createElement("canvas");
  small.width = data.width;
  small.height = data.height;
  small.getContext("2d").putImageData(data, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false; // the model's pixels, as they are
  ctx.drawImage(small, x, y, w, h);
}

export function drawArray(canvas, array, x, y, w, h) {
  scaled(imageData(array), canvas, x, y, w, h);
}

// A colour per value in [0, 1]: blue (cold) to red (hot), as the service's PNG rendering.
export function heat(v) {
  const t = Math.max(0, Math.min(1, v));
  return [byte(Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 3)))), byte(Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 2)))), byte(Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 1))))];
}

export const PALETTE = [
  [0, 0, 0],
  [230, 85, 13],
  [49, 130, 189],
  [49, 163, 84],
  [117, 107, 177],
  [222, 45, 38],
  [253, 174, 107],
  [158, 202, 225],
];

// (H, W) values -> an overlay of colours (colour(value) -> [r, g, b] or null for transparent).
export function overlay(canvas, grid, colour, alpha) {
  const h = grid.length;
  const w = grid[0].length;
  const data = new ImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const rgb = colour(grid[y][x]);
      if (!rgb) continue;
      const i = 4 * (y * w + x);
      data.data.set([...rgb, byte(alpha)], i);
    }
  }
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  small.getContext("2d").putImageData(data, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

// n images (each (H, W) or (C, H, W)) in a square-ish grid on the canvas.
export function drawGrid(canvas, images) {
  const cols = Math.ceil(Math.sqrt(images.length));
  const rows = Math.ceil(images.length / cols);
  const size = Math.floor(Math.min(canvas.width / cols, canvas.height / rows));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  images.forEach((img, i) => drawArray(canvas, img, (i % cols) * size + 1, Math.floor(i / cols) * size + 1, size - 2, size - 2));
}

// The pixels of a canvas region as an (H, W) gray or (3, H, W) RGB array in [0, 1].
function readArray(ctx, w, h, channels) {
  const d = ctx.getImageData(0, 0, w, h).data;
  const plane = (k) => Array.from({ length: h }, (_, y) => Array.from({ length: w }, (_, x) => +(d[4 * (y * w + x) + k] / 255).toFixed(4)));
  if (channels === 3) return [plane(0), plane(1), plane(2)];
  return Array.from({ length: h }, (_, y) => Array.from({ length: w }, (_, x) => {
    const i = 4 * (y * w + x);
    return +((0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]) / 255).toFixed(4);
  }));
}

function mean(array) {
  const flat = array.flat(2);
  return flat.reduce((a, b) => a + b, 0) / flat.length;
}

// A drawing as MNIST digits are: the ink's bounding box scaled into 20x20 pixels, its centre of mass
// at the centre of the 28x28 (or whatever size) input.
function mnistLike(source, h, w) {
  const ctx = source.getContext("2d");
  const d = ctx.getImageData(0, 0, source.width, source.height).data;
  let x0 = source.width;
  let y0 = source.height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < source.height; y++) {
    for (let x = 0; x < source.width; x++) {
      if (d[4 * (y * source.width + x)] > 40) {
        x0 = Math.min(x0, x);
        x1 = Math.max(x1, x);
        y0 = Math.min(y0, y);
        y1 = Math.max(y1, y);
      }
    }
  }
  const out = document.createElement("canvas");
  out.width = w;
  out.height = h;
  const octx = out.getContext("2d", { willReadFrequently: true });
  octx.fillStyle = "#000";
  octx.fillRect(0, 0, w, h);
  if (x1 < 0) return readArray(octx, w, h, 1);
  const box = Math.round((20 / 28) * Math.min(h, w));
  const s = box / Math.max(x1 - x0 + 1, y1 - y0 + 1);
  const bw = (x1 - x0 + 1) * s;
  const bh = (y1 - y0 + 1) * s;
  octx.imageSmoothingEnabled = true;
  octx.imageSmoothingQuality = "high";
  octx.drawImage(source, x0, y0, x1 - x0 + 1, y1 - y0 + 1, (w - bw) / 2, (h - bh) / 2, bw, bh);
  const first = readArray(octx, w, h, 1);
  let mass = 0;
  let cx = 0;
  let cy = 0;
  first.forEach((row, y) => row.forEach((v, x) => {
    mass += v;
    cx += v * x;
    cy += v * y;
  }));
  const dx = Math.round((w - 1) / 2 - cx / mass);
  const dy = Math.round((h - 1) / 2 - cy / mass);
  octx.fillRect(0, 0, w, h);
  octx.drawImage(source, x0, y0, x1 - x0 + 1, y1 - y0 + 1, (w - bw) / 2 + dx, (h - bh) / 2 + dy, bw, bh);
  return readArray(octx, w, h, 1);
}

// The drawing pad: white ink on black, drawn with a mouse, pen or finger; or a held-out example
// from the model's card, or an uploaded picture, shown on the same canvas.
export class Pad {
  constructor(canvas, { onStroke, onEnd }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.onStroke = onStroke;
    this.onEnd = onEnd;
    this.clear();
    let last = null;
    const at = (e) => {
      const r = canvas.getBoundingClientRect();
      return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
    };
    canvas.addEventListener("pointerdown", (e) => {
      canvas.setPointerCapture(e.pointerId);
      if (this.source !== "drawing") this.clear();
      this.source = "drawing";
      last = at(e);
      this.line(last, last);
      this.onStroke();
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      const p = at(e);
      this.line(last, p);
      last = p;
      this.onStroke();
    });
    const end = () => {
      if (!last) return;
      last = null;
      this.onEnd();
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }

  line(a, b) {
    const ctx = this.ctx;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = this.canvas.width / 14;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
  }

  clear() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.source = "blank";
    this.file = null;
    this.example = null;
  }

  get empty() {
    return this.source === "blank";
  }

  showExample(array) {
    this.clear();
    drawArray(this.canvas, array);
    this.source = "example";
    this.example = array;
  }

  async showUpload(file) {
    const bitmap = await createImageBitmap(file);
    this.clear();
    this.ctx.imageSmoothingEnabled = true;
    this.ctx.drawImage(bitmap, 0, 0, this.canvas.width, this.canvas.height); // stretched, as the service resizes
    this.source = "upload";
    this.file = file;
  }

  // The model input of `shape` ([C, H, W]) as the page sees it: the example itself, a drawing
  // centred as MNIST digits are (one channel) or the whole canvas (RGB), an upload resized (and,
  // for one channel, inverted when mostly light, as the service does).
  pixels([c, h, w]) {
    if (this.source === "example") return this.example;
    if (this.source === "drawing" && c === 1) return mnistLike(this.canvas, h, w);
    const out = document.createElement("canvas");
    out.width = w;
    out.height = h;
    const octx = out.getContext("2d", { willReadFrequently: true });
    octx.imageSmoothingEnabled = true;
    octx.imageSmoothingQuality = "high";
    octx.drawImage(this.canvas, 0, 0, w, h);
    const array = readArray(octx, w, h, c);
    if (c === 1 && this.source === "upload" && mean(array) > 0.5) return array.map((row) => row.map((v) => +(1 - v).toFixed(4)));
    return array;
  }

  // What to send: the uploaded file itself, or the pixels as JSON.
  input(shape) {
    return this.source === "upload" ? { file: this.file } : { pixels: this.pixels(shape) };
  }
}

// Gaussian noise of a seed (mulberry32 and Box-Muller): the same slider position, the same noise.
export function noisy(array, sigma, seed = 559) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const gauss = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  const walk = (a) => (Array.isArray(a) ? a.map(walk) : +Math.max(0, Math.min(1, a + sigma * gauss())).toFixed(4));
  return walk(array);
}

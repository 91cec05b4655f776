// sam3d serve: three slice views and a 3D view of the mask on plain canvases.
// The volume is the network grid, (D, H, W) = (superior, anterior, right), sent once as int16;
// each click, box or scribble returns the masks' bounding boxes (bit-packed) and the page redraws.
// A scan holds several objects, each drawn in its colour; interactions, undo and reset go to the selected one.
// On a slice view: click = click; drag = box on that slice; Alt+drag = scribble; Shift or the right
// button makes a click or a drag negative (a negative drag is a negative scribble: boxes are positive).
"use strict";

const VIEWS = {
  // rows/cols: volume axes shown down/across; every axis is drawn reversed (radiological convention).
  axial: { axis: 0, rows: 1, cols: 2, edges: ["A", "P", "R", "L"] },
  coronal: { axis: 1, rows: 0, cols: 2, edges: ["S", "I", "R", "L"] },
  sagittal: { axis: 2, rows: 0, cols: 1, edges: ["S", "I", "A", "P"] },
};
const DRAG_PIXELS = 4; // a press that moves less than this is a click
const PRESETS = { "soft tissue": [400, 40], liver: [150, 90], lung: [1500, -600], bone: [1800, 400] };
// Object colours by id (object 1 red); beyond these, hues a golden angle apart.
const PALETTE = [
  [255, 40, 40], [40, 120, 255], [255, 170, 0], [160, 80, 255], [0, 200, 160],
  [255, 80, 200], [140, 220, 30], [0, 200, 255], [255, 120, 90], [120, 120, 255],
];

function colour(id) {
  if (id <= PALETTE.length) return PALETTE[id - 1];
  const hue = (id * 137.508) % 360, f = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (0.5 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

const $ = (id) => document.getElementById(id);
const state = {
  page: sessionStorage.getItem("sam3d-page") || "", // the server's secret for this tab (POST /api/page)
  config: null,
  scan: null, // describe() of the server
  volume: null, // Int16Array, (D, H, W) C order
  result: { clicks: [], interactions: [], crop: null, mask: null, volume_ml: 0, seconds: null, objects: [], selected: 1 },
  stroke: null, // the drag in progress: { name, button, alt, shift, points: [[x, y], ...], dragging }
  mask: null, // { start, shape, data: Uint8Array } of the selected object's mask's bounding box
  objects: [], // [{ id, name, interactions, volume_ml, mask: unpacked or null }]: the label map, object by object
  cursor: [0, 0, 0],
  window: [400, 40],
  turn: [0.6, 0.35], // 3D view azimuth and elevation
  overlay: { opacity: 0.45, outline: false }, // how the masks are drawn over the slices
  queue: Promise.resolve(),
};

// The tab's page token: kept while the server knows it (a reload keeps its scan), else a new one. It goes
// in a header only, never in a URL (history, logs and Referer would show it).
async function claimPage() {
  const { page } = await (await post("/api/page", { page: state.page || undefined })).json();
  state.page = page;
  sessionStorage.setItem("sam3d-page", page);
}

// ---------------------------------------------------------------- server

function show(text, kind) {
  const box = $("message");
  box.hidden = !text;
  box.textContent = text || "";
  box.className = kind || "";
}

async function api(path, options = {}) {
  document.body.dataset.busy = "1";
  try {
    const response = await fetch(path, {
      ...options,
      headers: { "X-Sam3d-Page": state.page, ...(options.headers || {}) },
    });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).error || message;
      } catch (_) {}
      throw new Error(message);
    }
    return response;
  } finally {
    document.body.dataset.busy = "0";
  }
}

// Requests run one after another, in the order of the user's actions; an error is shown, never thrown.
function enqueue(task) {
  state.queue = state.queue.then(task).catch((error) => show(error.message, "error"));
  return state.queue;
}

const post = (path, body) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });

// The Scan list shows the open scan: a listed one, or the uploaded one (one entry, after the listed).
function listScan(name, index) {
  const select = $("scans");
  let uploaded = select.querySelector("option[data-uploaded]");
  if (index == null) index = state.config.scans.indexOf(name);
  if (index >= 0) {
    if (uploaded) uploaded.remove();
  } else {
    if (!uploaded) {
      uploaded = new Option();
      uploaded.dataset.uploaded = "1";
      select.add(uploaded);
    }
    uploaded.text = name;
    index = uploaded.index;
  }
  select.selectedIndex = index;
}

async function loadScan(result, index) {
  if (!result.scan) return;
  const bytes = await (await api("/api/volume")).arrayBuffer();
  state.scan = result.scan;
  state.volume = new Int16Array(bytes);
  state.cursor = result.scan.shape.map((n) => Math.floor(n / 2));
  for (const [name, view] of Object.entries(VIEWS)) {
    const slider = $(`${name}-slice`);
    slider.max = result.scan.shape[view.axis] - 1;
  }
  setPreset("network");
  listScan(result.scan.name, index);
  show(`${result.scan.name}: ${result.scan.note}`, "info");
  update(result);
  const last = result.interactions[result.interactions.length - 1];
  if (last) state.cursor = last.voxels[0].map(Math.round);
  draw();
}

function update(result) {
  state.result = result;
  state.mask = result.mask ? unpack(result.mask) : null;
  state.objects = result.objects.map((o) => ({ ...o, mask: o.mask ? unpack(o.mask) : null }));
  const selected = result.objects.find((o) => o.id === result.selected);
  document.body.dataset.objects = String(result.objects.length);
  document.body.dataset.selected = String(result.selected);
  const clicks = result.clicks.length;
  const positive = result.clicks.filter((c) => c.positive).length;
  const count = (kind) => result.interactions.filter((i) => i.kind === kind).length;
  const boxes = count("box"), scribbles = count("scribble");
  document.body.dataset.clicks = String(clicks);
  document.body.dataset.interactions = String(result.interactions.length);
  document.body.dataset.maskVoxels = String(state.mask ? state.mask.count : 0);
  const latency = result.seconds == null ? "" : ` · last update ${result.seconds.toFixed(2)} s`;
  const drawn = (boxes ? `, ${boxes} box(es)` : "") + (scribbles ? `, ${scribbles} scribble(s)` : "");
  $("status").textContent =
    `${state.scan.name} · file: ${state.scan.source} · ${selected.name}: ` +
    `${clicks} click(s) (${positive}+, ${clicks - positive}−)` +
    `${drawn} · ${result.volume_ml.toFixed(2)} mL${latency}`;
  $("download-interactions").hidden = !result.interactions.length;
  $("download-interactions").dataset.kind = "interactions";
  $("download-mask").hidden = true;
  listObjects();
  buildSurface();
}

// The object list: a colour, name and volume each; a click selects.
function listObjects() {
  const list = $("object-list");
  list.replaceChildren();
  for (const o of state.objects) {
    const item = document.createElement("li");
    item.dataset.id = String(o.id);
    item.className = o.id === state.result.selected ? "selected" : "";
    item.title = `label ${o.id} · ${o.interactions} interaction(s)`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${colour(o.id).join(",")})`;
    item.append(swatch, `${o.id} ${o.name} · ${o.volume_ml.toFixed(2)} mL`);
    item.addEventListener("click", () => edit("/api/objects/select", { id: o.id }));
    list.append(item);
  }
  const selected = state.objects.find((o) => o.id === state.result.selected);
  if (selected && document.activeElement !== $("object-name")) $("object-name").value = selected.name;
}

function unpack(mask) {
  const packed = Uint8Array.from(atob(mask.bits), (c) => c.charCodeAt(0));
  const total = mask.shape[0] * mask.shape[1] * mask.shape[2];
  const data = new Uint8Array(total);
  let count = 0;
  for (let i = 0; i < total; i++) {
    data[i] = (packed[i >> 3] >> (7 - (i & 7))) & 1;
    count += data[i];
  }
  return { start: mask.start, shape: mask.shape, data, count };
}

function masked(m, d, h, w) {
  if (!m) return 0;
  const a = d - m.start[0], b = h - m.start[1], c = w - m.start[2];
  if (a < 0 || b < 0 || c < 0 || a >= m.shape[0] || b >= m.shape[1] || c >= m.shape[2]) return 0;
  return m.data[(a * m.shape[1] + b) * m.shape[2] + c];
}

// The label map's value at voxel (d, h, w): the id of the object there, 0 for none.
function labelAt(d, h, w) {
  for (const o of state.objects) if (masked(o.mask, d, h, w)) return o.id;
  return 0;
}

// ---------------------------------------------------------------- slice views

// Where a view's slice is drawn on its canvas: the rectangle keeping the voxels' physical aspect.
function layout(name) {
  const view = VIEWS[name], shape = state.scan.shape, spacing = state.scan.spacing;
  const canvas = $(name);
  const rows = shape[view.rows], cols = shape[view.cols];
  const height = rows * spacing[view.rows], width = cols * spacing[view.cols];
  const scale = Math.min(canvas.width / width, canvas.height / height);
  const w = width * scale, h = height * scale;
  return { rows, cols, x: (canvas.width - w) / 2, y: (canvas.height - h) / 2, w, h };
}

// Canvas position (CSS pixels from the canvas's top left) of voxel (d, h, w) in a view.
function screenPoint(name, point) {
  const view = VIEWS[name], box = layout(name);
  const column = box.cols - 1 - point[view.cols], row = box.rows - 1 - point[view.rows];
  return { x: box.x + ((column + 0.5) / box.cols) * box.w, y: box.y + ((row + 0.5) / box.rows) * box.h };
}

// The voxel under a canvas position in a view, on the view's current slice (may lie outside the volume).
function voxelAt(name, x, y) {
  const view = VIEWS[name], box = layout(name);
  const column = Math.floor(((x - box.x) / box.w) * box.cols), row = Math.floor(((y - box.y) / box.h) * box.rows);
  const point = state.cursor.slice();
  point[view.cols] = box.cols - 1 - column;
  point[view.rows] = box.rows - 1 - row;
  return point;
}

// The canvas rectangle (CSS pixels) of the voxels lower..upper (inclusive) of a view's rows and columns.
function voxelRect(name, lower, upper) {
  const view = VIEWS[name], box = layout(name);
  const sx = box.w / box.cols, sy = box.h / box.rows;
  return {
    x: box.x + (box.cols - 1 - upper[view.cols]) * sx,
    y: box.y + (box.rows - 1 - upper[view.rows]) * sy,
    w: (upper[view.cols] - lower[view.cols] + 1) * sx,
    h: (upper[view.rows] - lower[view.rows] + 1) * sy,
  };
}

function drawSlice(name) {
  const view = VIEWS[name], shape = state.scan.shape, box = layout(name);
  const canvas = $(name), ctx = canvas.getContext("2d");
  const image = new ImageData(box.cols, box.rows);
  const [width, level] = state.window, low = level - width / 2;
  const { offset, scale } = state.scan;
  const strides = [shape[1] * shape[2], shape[2], 1];
  // The slice's label map first: the outline needs each voxel's neighbours on the slice.
  const labels = new Uint8Array(box.rows * box.cols);
  const point = state.cursor.slice();
  for (let row = 0; row < box.rows; row++) {
    point[view.rows] = box.rows - 1 - row;
    for (let column = 0; column < box.cols; column++) {
      point[view.cols] = box.cols - 1 - column;
      labels[row * box.cols + column] = labelAt(point[0], point[1], point[2]);
    }
  }
  const alpha = state.overlay.opacity, outline = state.overlay.outline;
  const labelOf = (row, column) =>
    row < 0 || column < 0 || row >= box.rows || column >= box.cols ? 0 : labels[row * box.cols + column];
  for (let row = 0; row < box.rows; row++) {
    point[view.rows] = box.rows - 1 - row;
    for (let column = 0; column < box.cols; column++) {
      point[view.cols] = box.cols - 1 - column;
      const value = offset + scale * state.volume[point[0] * strides[0] + point[1] * strides[1] + point[2]];
      const grey = Math.max(0, Math.min(255, ((value - low) / width) * 255));
      const i = 4 * (row * box.cols + column);
      const label = labels[row * box.cols + column];
      const border = label && (labelOf(row - 1, column) !== label || labelOf(row + 1, column) !== label ||
        labelOf(row, column - 1) !== label || labelOf(row, column + 1) !== label);
      if (label && (!outline || border)) {
        const rgb = colour(label);
        image.data[i] = (1 - alpha) * grey + alpha * rgb[0];
        image.data[i + 1] = (1 - alpha) * grey + alpha * rgb[1];
        image.data[i + 2] = (1 - alpha) * grey + alpha * rgb[2];
      } else {
        image.data[i] = image.data[i + 1] = image.data[i + 2] = grey;
      }
      image.data[i + 3] = 255;
    }
  }
  const pixels = new OffscreenCanvas(box.cols, box.rows);
  pixels.getContext("2d").putImageData(image, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(pixels, box.x, box.y, box.w, box.h);
  drawOverlays(name, ctx, box);
  $(`${name}-slice`).value = state.cursor[view.axis];
  $(`${name}-caption`).textContent =
    `${name[0].toUpperCase()}${name.slice(1)} ${state.cursor[view.axis] + 1} / ${shape[view.axis]}`;
}

function drawOverlays(name, ctx, box) {
  const view = VIEWS[name];
  const sx = box.w / box.cols, sy = box.h / box.rows;
  // the crop: voxels [start, start + size) of the rows and columns axes, when this slice cuts it
  const crop = state.result.crop;
  const slice = state.cursor[view.axis];
  if (crop && slice >= crop.start[view.axis] && slice < crop.start[view.axis] + crop.size[view.axis]) {
    const left = box.x + (box.cols - crop.start[view.cols] - crop.size[view.cols]) * sx;
    const top = box.y + (box.rows - crop.start[view.rows] - crop.size[view.rows]) * sy;
    ctx.save();
    ctx.beginPath();
    ctx.rect(box.x, box.y, box.w, box.h);
    ctx.clip();
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#fd3";
    ctx.strokeRect(left, top, crop.size[view.cols] * sx, crop.size[view.rows] * sy);
    ctx.restore();
  }
  const cursor = screenPoint(name, state.cursor);
  ctx.strokeStyle = "rgba(80, 200, 255, 0.35)";
  ctx.setLineDash([]);
  ctx.beginPath();
  ctx.moveTo(cursor.x, box.y);
  ctx.lineTo(cursor.x, box.y + box.h);
  ctx.moveTo(box.x, cursor.y);
  ctx.lineTo(box.x + box.w, cursor.y);
  ctx.stroke();
  for (const drawn of state.result.interactions) {
    ctx.strokeStyle = ctx.fillStyle = drawn.positive ? "#3d3" : "#e3e";
    if (drawn.kind === "box") {
      const [lower, upper] = drawn.voxels;
      if (slice < lower[view.axis] || slice > upper[view.axis]) continue;
      const r = voxelRect(name, lower, upper);
      ctx.lineWidth = 2;
      ctx.strokeRect(r.x, r.y, r.w, r.h);
      ctx.lineWidth = 1;
    } else if (drawn.kind === "scribble") {
      for (const voxel of drawn.voxels) {
        if (Math.round(voxel[view.axis]) !== slice) continue;
        const r = voxelRect(name, voxel, voxel);
        ctx.fillRect(r.x, r.y, Math.max(r.w, 2), Math.max(r.h, 2));
      }
    }
  }
  drawStroke(name, ctx);
  for (const click of state.result.clicks) {
    if (Math.abs(click.point[view.axis] - slice) > 1) continue;
    const at = screenPoint(name, click.point);
    ctx.fillStyle = click.positive ? "#3d3" : "#e3e";
    ctx.beginPath();
    ctx.arc(at.x, at.y, 5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = "#000";
    ctx.fillText(click.positive ? "+" : "−", at.x - 3, at.y + 4);
  }
  ctx.fillStyle = "#fd3";
  ctx.font = "13px sans-serif";
  const [top, bottom, left, right] = view.edges;
  ctx.fillText(top, box.x + box.w / 2 - 4, box.y + 14);
  ctx.fillText(bottom, box.x + box.w / 2 - 4, box.y + box.h - 4);
  ctx.fillText(left, box.x + 4, box.y + box.h / 2);
  ctx.fillText(right, box.x + box.w - 12, box.y + box.h / 2);
}

// The drag in progress on this view: the box's outline, or the scribble's voxels.
function drawStroke(name, ctx) {
  const stroke = state.stroke;
  if (!stroke || stroke.name !== name || !stroke.dragging) return;
  ctx.save();
  ctx.setLineDash([4, 3]);
  ctx.strokeStyle = ctx.fillStyle = strokeNegative(stroke) ? "#e3e" : "#3d3";
  if (strokeIsScribble(stroke)) {
    for (const voxel of scribbleVoxels(name, stroke.points)) {
      const r = voxelRect(name, voxel, voxel);
      ctx.fillRect(r.x, r.y, Math.max(r.w, 2), Math.max(r.h, 2));
    }
  } else {
    const [lower, upper] = boxCorners(name, stroke.points[0], stroke.points[stroke.points.length - 1]);
    const r = voxelRect(name, lower, upper);
    ctx.strokeRect(r.x, r.y, r.w, r.h);
  }
  ctx.restore();
}

// ---------------------------------------------------------------- 3D view of the mask

let surface = null; // Float32Array of x, y, z (mm, centred on the objects) of the objects' boundary voxels
let normals = null; // Float32Array: the outward unit normal (x, y, z) at each point
let surfaceIds = null; // Uint8Array: the object id of each point

// The objects' boundary voxels, each with its normal: the gradient of the mask over its 26 neighbours, in mm.
// (Normals taken from the slopes of the depth map instead show every slice's step as a stripe on a slanted
// face, the more so for thick slices.)
function buildSurface() {
  const shown = state.objects.filter((o) => o.mask);
  if (!shown.length) {
    surface = normals = surfaceIds = null;
    return;
  }
  const spacing = state.scan.spacing, low = [Infinity, Infinity, Infinity], high = [-Infinity, -Infinity, -Infinity];
  for (const o of shown)
    for (let axis = 0; axis < 3; axis++) {
      low[axis] = Math.min(low[axis], o.mask.start[axis]);
      high[axis] = Math.max(high[axis], o.mask.start[axis] + o.mask.shape[axis]);
    }
  const centre = low.map((l, axis) => (l + high[axis]) / 2);
  const points = [], directions = [], ids = [];
  for (const o of shown) {
    const m = o.mask, [D, H, W] = m.shape, [d0, h0, w0] = m.start;
    const inside = (a, b, c) => a >= 0 && b >= 0 && c >= 0 && a < D && b < H && c < W && m.data[(a * H + b) * W + c];
    for (let a = 0; a < D; a++)
      for (let b = 0; b < H; b++)
        for (let c = 0; c < W; c++) {
          if (!m.data[(a * H + b) * W + c]) continue;
          const boundary = !(inside(a - 1, b, c) && inside(a + 1, b, c) && inside(a, b - 1, c) &&
            inside(a, b + 1, c) && inside(a, b, c - 1) && inside(a, b, c + 1));
          if (!boundary) continue;
          let gd = 0, gh = 0, gw = 0; // towards the empty neighbours
          for (let i = -1; i <= 1; i++)
            for (let j = -1; j <= 1; j++)
              for (let k = -1; k <= 1; k++)
                if (!inside(a + i, b + j, c + k)) (gd += i), (gh += j), (gw += k);
          const nx = gw / spacing[2], ny = gh / spacing[1], nz = gd / spacing[0];
          const length = Math.hypot(nx, ny, nz) || 1;
          points.push((c + w0 - centre[2]) * spacing[2], (b + h0 - centre[1]) * spacing[1], (a + d0 - centre[0]) * spacing[0]);
          directions.push(nx / length, ny / length, nz / length);
          ids.push(o.id);
        }
  }
  surface = Float32Array.from(points);
  normals = Float32Array.from(directions);
  surfaceIds = Uint8Array.from(ids);
}

function drawRender() {
  const canvas = $("render"), ctx = canvas.getContext("2d"), size = canvas.width;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, size, size);
  const total = state.objects.reduce((sum, o) => sum + o.volume_ml, 0);
  $("render-caption").textContent =
    `Objects in 3D (drag to turn) · ${total.toFixed(2)} mL on the network grid`;
  if (!surface || !surface.length) return;
  let radius = 1;
  for (let i = 0; i < surface.length; i++) radius = Math.max(radius, Math.abs(surface[i]));
  const scale = (0.45 * size) / (radius * Math.sqrt(3));
  const [azimuth, elevation] = state.turn;
  const ca = Math.cos(azimuth), sa = Math.sin(azimuth), ce = Math.cos(elevation), se = Math.sin(elevation);
  // The view of a vector: across the screen (to the left), up, and towards the viewer.
  const turned = (x, y, z) => {
    const toward = ca * y - sa * x; // turned about the S axis; anterior faces us
    return [ca * x + sa * y, ce * z - se * toward, ce * toward + se * z];
  };
  const depth = new Float32Array(size * size).fill(-Infinity);
  const shade = new Float32Array(size * size);
  const nearest = new Uint8Array(size * size); // the object id drawn at each pixel
  const dot = Math.max(2, Math.ceil(Math.max(...state.scan.spacing) * scale) + 1);
  let near = -Infinity, far = Infinity;
  for (let i = 0; i < surface.length; i += 3) {
    const d = turned(surface[i], surface[i + 1], surface[i + 2])[2];
    near = Math.max(near, d);
    far = Math.min(far, d);
  }
  for (let i = 0; i < surface.length; i += 3) {
    const [across, up, d] = turned(surface[i], surface[i + 1], surface[i + 2]);
    const [nAcross, nUp, nToward] = turned(normals[i], normals[i + 1], normals[i + 2]);
    // Lambert with the light from the viewer's upper left, dimmed with depth.
    const lambert = Math.max(0, 0.3 * nAcross + 0.4 * nUp + 0.87 * nToward);
    const light = 0.15 + 0.85 * lambert * (0.6 + (0.4 * (d - far)) / Math.max(near - far, 1e-6));
    const px = Math.round(size / 2 - across * scale - dot / 2), py = Math.round(size / 2 - up * scale - dot / 2);
    for (let v = Math.max(0, py); v < py + dot && v < size; v++)
      for (let u = Math.max(0, px); u < px + dot && u < size; u++)
        if (d > depth[v * size + u]) {
          depth[v * size + u] = d;
          shade[v * size + u] = light;
          nearest[v * size + u] = surfaceIds[i / 3];
        }
  }
  const image = ctx.createImageData(size, size);
  for (let p = 0; p < size * size; p++) {
    if (depth[p] === -Infinity) continue;
    const rgb = colour(nearest[p] || state.result.selected), i = 4 * p;
    image.data[i] = rgb[0] * shade[p];
    image.data[i + 1] = rgb[1] * shade[p];
    image.data[i + 2] = rgb[2] * shade[p];
    image.data[i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function draw() {
  if (!state.scan) return;
  for (const name of Object.keys(VIEWS)) drawSlice(name);
  drawRender();
}

// ---------------------------------------------------------------- controls

function setPreset(name) {
  const scan = state.scan, network = state.config.window;
  const windows = {
    network: [network[1] - network[0], (network[0] + network[1]) / 2],
    ...PRESETS,
    "full range": [scan.range[1] - scan.range[0], (scan.range[0] + scan.range[1]) / 2],
  };
  const select = $("preset");
  if (!select.options.length)
    for (const key of Object.keys(windows)) select.add(new Option(key === "network" ? "network's window" : key, key));
  select.value = name;
  state.window = windows[name];
  $("width").value = Math.round(state.window[0]);
  $("level").value = Math.round(state.window[1]);
}

function addClick(point, positive) {
  enqueue(async () => {
    const result = await (await post("/api/click", { point, positive })).json();
    show("");
    state.cursor = point.map((c, axis) => Math.max(0, Math.min(state.scan.shape[axis] - 1, c)));
    update(result);
    draw();
  });
}

const inside = (point) => point.every((c, axis) => c >= 0 && c < state.scan.shape[axis]);
const clamp = (point) => point.map((c, axis) => Math.max(0, Math.min(state.scan.shape[axis] - 1, c)));
const strokeNegative = (stroke) => stroke.shift || stroke.button === 2;
const strokeIsScribble = (stroke) => stroke.alt || strokeNegative(stroke);

// A box's corners from a drag between two canvas positions: on the view's slice, clamped to the volume.
function boxCorners(name, from, to) {
  const a = clamp(voxelAt(name, ...from)), b = clamp(voxelAt(name, ...to));
  return [a.map((c, axis) => Math.min(c, b[axis])), a.map((c, axis) => Math.max(c, b[axis]))];
}

// The voxels of the view's slice a drag passes over, in order, without gaps or repeats (outside ones dropped).
function scribbleVoxels(name, points) {
  const view = VIEWS[name], voxels = [], seen = new Set();
  let previous = null;
  for (const point of points) {
    const voxel = voxelAt(name, ...point);
    const from = previous || voxel;
    const steps = Math.max(Math.abs(voxel[view.rows] - from[view.rows]), Math.abs(voxel[view.cols] - from[view.cols]), 1);
    for (let i = previous ? 1 : 0; i <= steps; i++) {
      const step = voxel.slice();
      step[view.rows] = Math.round(from[view.rows] + ((voxel[view.rows] - from[view.rows]) * i) / steps);
      step[view.cols] = Math.round(from[view.cols] + ((voxel[view.cols] - from[view.cols]) * i) / steps);
      const key = step.join(",");
      if (inside(step) && !seen.has(key)) {
        seen.add(key);
        voxels.push(step);
      }
    }
    previous = voxel;
  }
  return voxels;
}

function addDrawn(path, body) {
  enqueue(async () => {
    const result = await (await post(path, body)).json();
    show("");
    update(result);
    draw();
  });
}

// A click off the image, in the page's words: the view's slice, and the row and column as shown (from the top left).
function outsideMessage(name, point) {
  const view = VIEWS[name], box = layout(name), shape = state.scan.shape;
  const row = box.rows - point[view.rows], column = box.cols - point[view.cols];
  return `the click at ${name} slice ${point[view.axis] + 1}, row ${row}, column ${column} is outside the image ` +
    `(${name} slices have ${box.rows} rows and ${box.cols} columns; there are ${shape[view.axis]} of them): click on the image`;
}

// Finish a press on a slice view: a click, a box or a scribble.
function finishStroke(name, stroke, at) {
  const negative = strokeNegative(stroke);
  if (!stroke.dragging) {
    const point = voxelAt(name, ...at);
    if (!inside(point)) return show(outsideMessage(name, point), "error");
    return addClick(point, !negative);
  }
  if (!strokeIsScribble(stroke)) {
    const [lower, upper] = boxCorners(name, stroke.points[0], at);
    return addDrawn("/api/box", { lower, upper });
  }
  const voxels = scribbleVoxels(name, stroke.points);
  if (!voxels.length) return show("the scribble passed over no voxel of the scan: draw it on the image", "error");
  addDrawn("/api/scribble", { voxels, positive: !negative });
}

function canvasPoint(name, event) {
  const bounds = $(name).getBoundingClientRect();
  return [event.clientX - bounds.left, event.clientY - bounds.top];
}

function bindDrawing(name) {
  const canvas = $(name);
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.scan || (event.button !== 0 && event.button !== 2)) return;
    canvas.setPointerCapture(event.pointerId);
    const { altKey: alt, shiftKey: shift, button } = event;
    state.stroke = { name, button, alt, shift, points: [canvasPoint(name, event)], dragging: false };
  });
  canvas.addEventListener("pointermove", (event) => {
    const stroke = state.stroke;
    if (!stroke || stroke.name !== name) return;
    const at = canvasPoint(name, event), start = stroke.points[0];
    if (!stroke.dragging && Math.hypot(at[0] - start[0], at[1] - start[1]) < DRAG_PIXELS) return;
    stroke.dragging = true;
    stroke.alt ||= event.altKey;
    stroke.shift ||= event.shiftKey;
    stroke.points.push(at);
    drawSlice(name);
  });
  canvas.addEventListener("pointerup", (event) => {
    const stroke = state.stroke;
    if (!stroke || stroke.name !== name) return;
    state.stroke = null;
    const at = canvasPoint(name, event);
    if (stroke.dragging) stroke.points.push(at);
    stroke.alt ||= event.altKey;
    stroke.shift ||= event.shiftKey;
    finishStroke(name, stroke, at);
    drawSlice(name);
  });
  canvas.addEventListener("pointercancel", () => {
    state.stroke = null;
    drawSlice(name);
  });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
}

function edit(path, body) {
  enqueue(async () => {
    update(await (await post(path, body)).json());
    show("");
    draw();
  });
}

function bind() {
  for (const [name, view] of Object.entries(VIEWS)) {
    const canvas = $(name);
    bindDrawing(name);
    canvas.addEventListener("wheel", (event) => {
      if (!state.scan) return;
      event.preventDefault();
      const n = state.scan.shape[view.axis];
      state.cursor[view.axis] = Math.max(0, Math.min(n - 1, state.cursor[view.axis] + Math.sign(event.deltaY)));
      for (const other of Object.keys(VIEWS)) drawSlice(other);
    });
    $(`${name}-slice`).addEventListener("input", (event) => {
      state.cursor[view.axis] = Number(event.target.value);
      draw();
    });
  }
  const render = $("render");
  render.addEventListener("pointermove", (event) => {
    if (!event.buttons) return;
    state.turn[0] += event.movementX * 0.01;
    state.turn[1] = Math.max(-1.5, Math.min(1.5, state.turn[1] + event.movementY * 0.01));
    drawRender();
  });
  $("open").addEventListener("click", () => {
    const index = $("scans").selectedIndex;
    if ($("scans").options[index]?.dataset.uploaded)
      return show("the uploaded scan is open; to start it afresh, upload it again", "info");
    enqueue(async () => loadScan(await (await post("/api/open", { index })).json(), index));
  });
  $("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    show(`uploading ${file.name}…`, "info");
    enqueue(async () => {
      const response = await api(`/api/upload?name=${encodeURIComponent(file.name)}`, {
        method: "POST",
        headers: { "Content-Type": "application/octet-stream" },
        body: file,
      });
      await loadScan(await response.json());
    }).finally(() => (event.target.value = ""));
  });
  $("opacity").addEventListener("input", (event) => {
    state.overlay.opacity = Number(event.target.value) / 100;
    draw();
  });
  $("outline").addEventListener("change", (event) => {
    state.overlay.outline = event.target.checked;
    draw();
  });
  window.addEventListener("resize", fit);
  $("preset").addEventListener("change", (event) => {
    setPreset(event.target.value);
    draw();
  });
  for (const id of ["width", "level"])
    $(id).addEventListener("change", () => {
      state.window = [Math.max(1, Number($("width").value)), Number($("level").value)];
      draw();
    });
  $("undo").addEventListener("click", () => edit("/api/undo"));
  $("reset").addEventListener("click", () => edit("/api/reset"));
  const typedName = () => $("object-name").value.trim();
  $("add-object").addEventListener("click", () => {
    const taken = state.objects.some((o) => o.name === typedName());
    edit("/api/objects/add", typedName() && !taken ? { name: typedName() } : {});
  });
  const rename = () => edit("/api/objects/rename", { id: state.result.selected, name: typedName() });
  $("rename-object").addEventListener("click", rename);
  $("object-name").addEventListener("keydown", (event) => event.key === "Enter" && rename());
  $("delete-object").addEventListener("click", () => {
    const selected = state.objects.find((o) => o.id === state.result.selected);
    if (selected && selected.interactions && !confirm(`Delete ${selected.name} and its ${selected.interactions} interaction(s)?`))
      return;
    edit("/api/objects/delete", { id: state.result.selected });
  });
  // A closed tab gives its place on the server to another page (a reload takes it back).
  // (fetch with keepalive outlives the page, as a beacon, and sends the token in its header)
  window.addEventListener("pagehide", () =>
    fetch("/api/leave", {
      method: "POST",
      keepalive: true,
      headers: { "X-Sam3d-Page": state.page, "Content-Type": "application/json" },
      body: "{}",
    }),
  );
  for (const id of ["download-mask", "download-interactions"])
    $(id).addEventListener("click", (event) => {
      event.preventDefault();
      enqueue(() => download(event.currentTarget.dataset.kind));
    });
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return; // Ctrl+Z in the name box edits the name
    if ((event.ctrlKey || event.metaKey) && event.key === "z") edit("/api/undo");
  });
  $("save").addEventListener("click", () =>
    enqueue(async () => {
      const saved = await (await post("/api/save")).json();
      const volumes = saved.objects.length > 1
        ? saved.objects.map((o) => `${o.name} ${o.volume_ml.toFixed(2)} mL`).join(", ")
        : `${saved.volume_ml.toFixed(2)} mL`;
      show(`saved ${Object.values(saved.files).join(", ")} (${volumes} on the scan's grid)`, "info");
      const kind = saved.files.labels ? "labels" : "mask";
      const link = $("download-mask");
      link.dataset.kind = kind;
      link.textContent = kind === "labels" ? "label map (NIfTI)" : "mask (NIfTI)";
      link.hidden = false;
      document.body.dataset.saved = saved.files[kind];
    }),
  );
}

// A download through fetch, so that the page token goes in a header: the file is handed to the browser
// as a blob, under the name the server gives.
async function download(kind) {
  const response = await api(`/api/download/${kind}`);
  const disposition = response.headers.get("Content-Disposition") || "";
  const encoded = /filename\*=utf-8''([^;]+)/i.exec(disposition);
  const plain = /filename="([^"]+)"/i.exec(disposition);
  const name = encoded ? decodeURIComponent(encoded[1]) : plain ? plain[1] : kind;
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// What the checkpoint learned about clicks, said on the page; a reference-mode one was never shown negatives.
function showClickMode(mode) {
  const reference = mode === "reference";
  const says = {
    reference: "positive clicks only: it never learned negative ones (the server refuses them)",
    labelled: "positive and negative clicks",
    interactive: "positive and negative clicks, trained as corrections",
  };
  $("click-mode").textContent = `This checkpoint was trained with ${mode} clicks: ${says[mode] || "see its config"}.`;
  $("click-mode").className = reference ? "reference" : "";
  document.body.dataset.clickMode = mode;
  if (reference) $("negative-help").textContent = "no negative clicks or scribbles with this checkpoint";
}

// The canvases as large as the views' area allows: 4 in a row, 2 by 2 or one column, whichever is larger.
function fit() {
  const main = $("views"), style = getComputedStyle(main);
  const width = main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const height = main.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
  const gap = parseFloat(style.columnGap) || 0;
  const figures = [...main.querySelectorAll("figure")];
  const below = Math.max(...figures.map((f) => f.offsetHeight - f.querySelector("canvas").offsetHeight));
  let best = 0, columns = 2;
  for (const n of [4, 2, 1]) {
    const rows = 4 / n;
    const size = Math.floor(Math.min((width - gap * (n - 1)) / n, (height - gap * (rows - 1)) / rows - below));
    if (size > best) [best, columns] = [size, n];
  }
  const size = Math.max(120, best);
  main.style.gridTemplateColumns = `repeat(${columns}, ${size}px)`;
  for (const canvas of main.querySelectorAll("canvas"))
    if (canvas.width !== size) canvas.width = canvas.height = size;
  draw();
}

async function start() {
  bind();
  fit();
  await enqueue(async () => {
    await claimPage();
    state.config = await (await api("/api/config")).json();
    for (const name of state.config.scans) $("scans").add(new Option(name));
    $("open").disabled = !state.config.scans.length;
    showClickMode(state.config.click_mode);
    const result = await (await api("/api/state")).json();
    if (result.scan) await loadScan(result);
    else if (state.config.scans.length) await loadScan(await (await post("/api/open", { index: 0 })).json(), 0);
  });
  if (state.config && state.config.problems.length)
    show(`inputs skipped: ${state.config.problems.join("; ")}`, "error");
  document.body.dataset.ready = "1";
}

window.sam3d = { screenPoint, voxelAt, scribbleVoxels, colour, state, fit, buildSurface, drawRender }; // for the tests and the console
start();

// calae explore: the page. Plain JS, no libraries; it talks only to this server's /api/*.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, map: null, base: null, hover: null, sliders: [], options: {}, bends: [],
  mixCode: null, a: null, b: null, busy: false, pending: null, pinned: null,
};

function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = false; }
function clearError() { const e = $("error"); e.textContent = ""; e.hidden = true; }

async function call(path, body, raw) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": raw ? "application/octet-stream" : "application/json" },
    body: raw ? body : JSON.stringify(body),
  };
  let res;
  try { res = await fetch(path, init); } catch (e) { throw new Error("the server did not answer (" + e.message + ")"); }
  let data;
  try { data = await res.json(); } catch (e) { throw new Error("the server sent a non-JSON reply (HTTP " + res.status + ")"); }
  if (!res.ok) throw new Error(data.error || ("HTTP " + res.status));
  return data;
}

// ---- decoding: one request in flight, the latest wins -----------------------------------------
function request(extra) {
  const r = { sliders: state.sliders, options: state.options, bends: activeBends() };
  if ($("mix-on").checked && state.mixCode) {
    r.mix = { code: state.mixCode, lo: +$("mix-lo").value, hi: +$("mix-hi").value };
  }
  return Object.assign(r, extra);
}

function render(extra) {
  const body = request(extra || (state.hover ? { map: state.hover } : { code: state.base }));
  if (state.busy) { state.pending = body; return; }
  send(body);
}

async function send(body) {
  state.busy = true;
  try {
    const r = await call("/api/decode", body);
    $("view").src = r.image;
    $("latency").textContent = "decode " + r.ms.toFixed(1) + " ms";
    if ((body.map && state.pinNext) || body.code === null) { state.base = r.code; state.pinNext = false; }
    state.full = r.full || r.code;
    clearError();
  } catch (e) { showError(e.message); state.pinNext = false; }
  state.busy = false;
  if (state.pending) { const p = state.pending; state.pending = null; send(p); }
}

function setBase(code) { state.base = code; state.hover = null; render(); }

// ---- the map ----------------------------------------------------------------------------------
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];

function viridis(t) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return "rgb(" + c.join(",") + ")";
}

function mapFrame() {
  const xy = state.map.xy, c = $("map"), pad = 14;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const [u, v] of xy) { x0 = Math.min(x0, u); x1 = Math.max(x1, u); y0 = Math.min(y0, v); y1 = Math.max(y1, v); }
  const mu = 0.08 * (x1 - x0 || 1), mv = 0.08 * (y1 - y0 || 1);
  x0 -= mu; x1 += mu; y0 -= mv; y1 += mv;
  const sx = (c.width - 2 * pad) / (x1 - x0), sy = (c.height - 2 * pad) / (y1 - y0);
  return {
    toPx: (u, v) => [pad + (u - x0) * sx, c.height - pad - (v - y0) * sy],
    toMap: (px, py) => [x0 + (px - pad) / sx, y0 + (c.height - pad - py) / sy],
  };
}

function drawMap() {
  const c = $("map"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (!state.map || !state.map.xy.length) {
    g.fillStyle = "#888"; g.fillText("no data to map (start with --data SPEC)", 20, 30); return;
  }
  const f = mapFrame(), key = $("colour-by").value, col = state.map.colours[key];
  let lo = 0, hi = 1, cat = false;
  if (col) {
    lo = Math.min(...col); hi = Math.max(...col);
    cat = col.every((v) => Number.isInteger(v)) && hi - lo < 10;
  }
  state.map.xy.forEach(([u, v], i) => {
    const [px, py] = f.toPx(u, v);
    g.fillStyle = !col ? "#1f77b4" : cat ? PALETTE[(col[i] - lo) % 10] : viridis((col[i] - lo) / (hi - lo || 1));
    g.beginPath(); g.arc(px, py, 2.2, 0, 2 * Math.PI); g.fill();
  });
  if (state.pinned) {
    const [px, py] = f.toPx(...state.pinned);
    g.strokeStyle = "#000"; g.lineWidth = 2; g.beginPath(); g.arc(px, py, 6, 0, 2 * Math.PI); g.stroke();
  }
}

function mapPoint(ev) {
  const c = $("map"), r = c.getBoundingClientRect();
  const px = (ev.clientX - r.left) * c.width / r.width, py = (ev.clientY - r.top) * c.height / r.height;
  return mapFrame().toMap(px, py);
}

async function loadMap() {
  if (!state.info.n_points) { state.map = null; drawMap(); return; }
  try {
    state.map = await call("/api/map?projection=" + encodeURIComponent($("projection").value));
    const sel = $("colour-by"), keep = sel.value;
    sel.innerHTML = "";
    for (const k of ["none", ...Object.keys(state.map.colours)]) sel.add(new Option(k, k));
    sel.value = [...sel.options].some((o) => o.value === keep) ? keep :
      (state.map.colours.label ? "label" : (Object.keys(state.map.colours)[0] || "none"));
    drawMap();
  } catch (e) { showError(e.message); }
}

// ---- controls built from /api/info ----------------------------------------------------------------
function buildOptions() {
  const box = $("options"); box.innerHTML = "";
  for (const o of state.info.options) {
    const shown = o.name in state.info.display_options ? state.info.display_options[o.name] : o.default;
    state.options[o.name] = shown;
    const row = document.createElement("label"); row.className = "row option";
    row.append(o.name + " ");
    const inp = document.createElement("input"); inp.id = "option-" + o.name; inp.title = o.doc;
    const out = document.createElement("output");
    if (o.integer) { inp.type = "number"; inp.step = 1; if (o.low !== null) inp.min = o.low; }
    else { inp.type = "range"; inp.step = 0.05; inp.min = o.low ?? -2; inp.max = o.high ?? 2; }
    inp.value = shown; out.textContent = shown;
    inp.addEventListener("input", () => { state.options[o.name] = +inp.value; out.textContent = inp.value; render(); });
    row.append(inp, out); box.append(row);
  }
}

function buildSliders() {
  const box = $("sliders"); box.innerHTML = "";
  state.sliders = new Array(state.info.directions).fill(0);
  for (let i = 0; i < state.info.directions; i++) {
    const row = document.createElement("label"); row.className = "slider";
    const inp = document.createElement("input");
    Object.assign(inp, { type: "range", min: -3, max: 3, step: 0.1, value: 0, id: "slider-" + i });
    const out = document.createElement("output"); out.textContent = "0.0σ";
    inp.addEventListener("input", () => {
      state.sliders[i] = +inp.value; out.textContent = (+inp.value).toFixed(1) + "σ"; render();
    });
    row.append("PC" + (i + 1), inp, out); box.append(row);
  }
}

function buildMix() {
  const L = state.info.style_layers;
  if (L <= 1) return;
  $("mix-panel").hidden = false;
  for (const id of ["mix-lo", "mix-hi"]) { $(id).max = L - 1; }
  $("mix-lo").value = Math.floor(L / 2); $("mix-hi").value = L - 1;
  const label = () => { $("mix-range-label").textContent = $("mix-lo").value + "–" + $("mix-hi").value; };
  label();
  for (const id of ["mix-on", "mix-lo", "mix-hi"]) $(id).addEventListener("input", () => { label(); render(); });
  $("set-mix").addEventListener("click", async () => {
    state.mixCode = state.full; $("mix-source").src = $("view").src; render();
  });
}

// ---- bending -----------------------------------------------------------------------------------------
function activeBends() {
  return state.bends.filter((b) => b.on).map((b) => ({
    layer: b.layer, transform: b.transform + (b.params.trim() ? ":" + b.params.trim() : ""), channels: b.channels.trim() || "all",
  }));
}

function addBend() {
  const layers = Object.keys(state.info.layers), tnames = Object.keys(state.info.transforms);
  const b = { on: true, layer: layers[Math.min(1, layers.length - 1)], transform: "rotate", params: "90", channels: "all" };
  state.bends.push(b);
  const i = state.bends.length - 1, row = document.createElement("div"); row.className = "bend"; row.id = "bend-" + i;
  const on = document.createElement("input"); on.type = "checkbox"; on.checked = true;
  const ls = document.createElement("select"); ls.className = "bend-layer";
  for (const l of layers) ls.add(new Option(l + " [" + state.info.layers[l].join("×") + "]", l));
  ls.value = b.layer;
  const ts = document.createElement("select"); ts.className = "bend-transform";
  for (const t of tnames) ts.add(new Option(t, t));
  ts.value = b.transform;
  const ps = document.createElement("input"); ps.type = "text"; ps.className = "bend-params"; ps.value = b.params;
  const cs = document.createElement("input"); cs.type = "text"; cs.className = "bend-channels"; cs.value = b.channels;
  cs.title = "all, random:P, cluster:K or 0,3,5";
  const hint = document.createElement("span"); hint.className = "hint";
  const showHint = () => { hint.textContent = "params: " + (state.info.transforms[b.transform].params.join(",") || "none"); };
  showHint();
  const rm = document.createElement("button"); rm.type = "button"; rm.textContent = "remove";
  on.addEventListener("input", () => { b.on = on.checked; render(); });
  ls.addEventListener("input", () => { b.layer = ls.value; render(); });
  ts.addEventListener("input", () => {
    b.transform = ts.value; ps.value = b.params = state.info.transforms[ts.value].defaults.join(","); showHint(); render();
  });
  ps.addEventListener("change", () => { b.params = ps.value; render(); });
  cs.addEventListener("change", () => { b.channels = cs.value; render(); });
  rm.addEventListener("click", () => { b.on = false; row.remove(); render(); });
  row.append(on, ls, ts, ps, "channels", cs, hint, rm);
  $("bends").append(row);
  render();
}

// ---- samples, uploads, interpolation -------------------------------------------------------------
async function drawSamples() {
  try {
    const r = await call("/api/samples", request({ seed: +$("seed").value, n: 8 }));
    const box = $("samples"); box.innerHTML = "";
    r.images.forEach((src, i) => {
      const im = document.createElement("img"); im.src = src; im.title = "seed " + r.seed + ", #" + i;
      im.addEventListener("click", () => { state.pinned = null; drawMap(); setBase(r.codes[i]); });
      box.append(im);
    });
    clearError();
  } catch (e) { showError(e.message); }
}

async function upload(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  if (file.size > state.info.max_upload) {
    showError("the upload is " + file.size + " bytes; the limit is " + state.info.max_upload + " bytes");
    return;
  }
  try {
    const r = await call("/api/upload", await file.arrayBuffer(), true);
    const box = $("upload-result"); box.innerHTML = "";
    for (const [src, t] of [[r.image, "uploaded"], [r.reconstruction, "reconstruction"]]) {
      const im = document.createElement("img"); im.src = src; im.className = "thumb"; im.title = t; box.append(im);
    }
    clearError();
    state.pinned = null; drawMap(); setBase(r.code);
  } catch (e) { showError(e.message); }
  ev.target.value = "";
}

async function interpolate() {
  if (!state.a || !state.b) { showError("pick A and B first (current → A, current → B)"); return; }
  try {
    const r = await call("/api/interpolate", request({ a: state.a, b: state.b, steps: +$("steps").value }));
    const box = $("frames"); box.innerHTML = "";
    for (const src of r.frames) { const im = document.createElement("img"); im.src = src; box.append(im); }
    $("interp-gif").src = r.gif; $("interp-gif").hidden = false;
    $("gif-download").href = r.gif; $("gif-download").hidden = false;
    clearError();
  } catch (e) { showError(e.message); }
}

// ---- start -------------------------------------------------------------------------------------------
async function main() {
  try { state.info = await call("/api/info"); } catch (e) { showError(e.message); return; }
  const info = state.info;
  $("model-name").textContent = info.name + " · " + info.latent.dim + "-D " + info.latent.name + " · " +
    info.resolution + " px";
  for (const p of info.projections) $("projection").add(new Option(p.toUpperCase(), p));
  buildOptions(); buildSliders(); buildMix();
  if (!Object.keys(info.layers).length) {
    $("bend-panel").querySelector(".hint").textContent = "This decoder has no convolutional layers to bend.";
    $("add-bend").hidden = true;
  }
  const m = $("map");
  m.addEventListener("mousemove", (ev) => { if (state.map) { state.hover = { projection: $("projection").value, xy: mapPoint(ev) }; render(); } });
  m.addEventListener("mouseleave", () => { state.hover = null; render(); });
  m.addEventListener("click", (ev) => {
    if (!state.map) return;
    const xy = mapPoint(ev);
    state.pinned = xy; state.pinNext = true; state.hover = null; drawMap();
    render({ map: { projection: $("projection").value, xy } });
  });
  $("projection").addEventListener("input", () => { state.pinned = null; loadMap(); });
  $("colour-by").addEventListener("input", drawMap);
  $("reset-sliders").addEventListener("click", () => {
    document.querySelectorAll("#sliders input").forEach((s) => { s.value = 0; s.dispatchEvent(new Event("input")); });
  });
  $("draw-samples").addEventListener("click", drawSamples);
  $("upload").addEventListener("change", upload);
  $("set-a").addEventListener("click", () => { state.a = state.full; $("interp-a").src = $("view").src; });
  $("set-b").addEventListener("click", () => { state.b = state.full; $("interp-b").src = $("view").src; });
  $("interpolate").addEventListener("click", interpolate);
  $("add-bend").addEventListener("click", addBend);
  await loadMap();
  render({ code: null });
  drawSamples();
  document.body.dataset.ready = "1";
}

main();

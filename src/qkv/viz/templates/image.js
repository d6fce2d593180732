/* qkv image viewer. Plain ES2017, no libraries, no network.
 *
 * Reads the JSON in <script id="qkv-data"> (image pixels, patch grid, prefix tokens, attention
 * per layer, named maps), decodes the 16-bit weights with qkvShared (common.js, inlined before
 * this file) and draws the image with its patch grid and one overlay: the attention of one query
 * token over the patches (a hovered or pinned patch, or a prefix token such as the class token),
 * for one head or the mean of the heads, or one of the given maps. Nothing is computed here
 * beyond that mean. Names reach the page only through textContent and option labels.
 */
(function () {
  "use strict";

  const started = performance.now();
  const $ = (id) => document.getElementById(id);
  const LUT = qkvShared.LUT;
  const visible = qkvShared.visible;
  const fillSelect = qkvShared.fillSelect;
  const ATTENTION = "attention";

  const hook = { ready: false, mode: "image", draws: 0, timings: {} };
  window.qkvViewer = hook;

  let data = null;
  let state = null;
  let layout = null;
  const base = document.createElement("canvas"); // the image, one canvas pixel per image pixel
  const heat = document.createElement("canvas"); // the overlay, one canvas pixel per patch
  const means = new Map(); // layer -> mean over heads (T * T)

  function clamp(v, lo, hi) {
    return v < lo ? lo : v > hi ? hi : v;
  }

  function fmt(v) {
    return Number.isFinite(v) ? v.toFixed(4) : String(v);
  }

  // ---------------------------------------------------------------- data

  function paintImage(img) {
    const bin = atob(img.pixels);
    const n = img.height * img.width;
    if (bin.length !== n * img.channels) {
      throw new Error("image data has " + bin.length + " bytes, expected " + n * img.channels);
    }
    base.width = img.width;
    base.height = img.height;
    const ctx = base.getContext("2d");
    const out = ctx.createImageData(img.width, img.height);
    for (let p = 0; p < n; p++) {
      for (let c = 0; c < 3; c++) out.data[4 * p + c] = bin.charCodeAt(p * img.channels + (img.channels === 1 ? 0 : c));
      out.data[4 * p + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
  }

  function decode(payload) {
    const a = payload.attention;
    paintImage(payload.image);
    heat.width = payload.grid.w;
    heat.height = payload.grid.h;
    return {
      title: visible(payload.title),
      height: payload.image.height,
      width: payload.image.width,
      gh: payload.grid.h,
      gw: payload.grid.w,
      prefix: payload.prefix,
      layers: a.layers,
      heads: a.heads,
      tokens: a.tokens,
      values: qkvShared.decode16(a.data, a.lo, a.hi, a.tokens * a.tokens),
      maps: payload.maps.map((m) => ({ name: visible(m.name), values: Float32Array.from(m.values) })),
    };
  }

  // (T * T) weights of one head, or the mean over heads for head "all"
  function matrixOf(layer, head) {
    const per = data.tokens * data.tokens;
    if (head !== "all") {
      const off = (layer * data.heads + head) * per;
      return data.values.subarray(off, off + per);
    }
    let mean = means.get(layer);
    if (!mean) {
      mean = new Float32Array(per);
      for (let h = 0; h < data.heads; h++) {
        const off = (layer * data.heads + h) * per;
        for (let p = 0; p < per; p++) mean[p] += data.values[off + p];
      }
      for (let p = 0; p < per; p++) mean[p] /= data.heads;
      means.set(layer, mean);
    }
    return mean;
  }

  function tokenName(t) {
    if (t >= data.prefix) {
      const p = t - data.prefix;
      return "patch (" + Math.floor(p / data.gw) + ", " + (p % data.gw) + ")";
    }
    return t === 0 ? "class token" : "prefix token " + t;
  }

  // the token whose attention is shown: the hovered patch unless one is pinned
  function shownQuery() {
    if (!state.pinned && state.hover) return data.prefix + state.hover.row * data.gw + state.hover.col;
    return state.query;
  }

  // the (h * w) values under the overlay
  function shownMap() {
    if (state.overlay !== ATTENTION) return data.maps.find((m) => m.name === state.overlay).values;
    const m = matrixOf(state.layer, state.head);
    const row = shownQuery() * data.tokens;
    return m.subarray(row + data.prefix, row + data.tokens);
  }

  function rangeOf(m) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of m) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    lo = Math.min(0, lo);
    return { lo: lo, hi: hi > lo ? hi : lo + 1 };
  }

  // ---------------------------------------------------------------- drawing

  function sizeCanvas(canvas, width, height) {
    const ratio = Math.max(1, Math.min(window.devicePixelRatio || 1, 2));
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    return ctx;
  }

  function makeLayout() {
    const scale = clamp(Math.floor(480 / Math.max(data.height, data.width)), 1, 32);
    const pad = 8;
    return {
      scale: scale,
      pad: pad,
      width: data.width * scale + 2 * pad,
      height: data.height * scale + 2 * pad,
      ph: (data.height / data.gh) * scale, // one patch, in CSS pixels
      pw: (data.width / data.gw) * scale,
    };
  }

  function paintHeat(m, range) {
    const ctx = heat.getContext("2d");
    const img = ctx.createImageData(data.gw, data.gh);
    const scale = 255 / (range.hi - range.lo);
    for (let p = 0; p < m.length; p++) {
      const t = clamp(Math.round((m[p] - range.lo) * scale), 0, 255);
      img.data[4 * p] = LUT[3 * t];
      img.data[4 * p + 1] = LUT[3 * t + 1];
      img.data[4 * p + 2] = LUT[3 * t + 2];
      img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function outline(ctx, row, col, colour, width) {
    const L = layout;
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.strokeRect(L.pad + col * L.pw + width / 2, L.pad + row * L.ph + width / 2, L.pw - width, L.ph - width);
  }

  function drawGrid(ctx) {
    const L = layout;
    const right = L.pad + data.width * L.scale;
    const bottom = L.pad + data.height * L.scale;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.35)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let r = 0; r <= data.gh; r++) {
      const y = Math.round(L.pad + r * L.ph) + 0.5;
      ctx.moveTo(L.pad, y);
      ctx.lineTo(right, y);
    }
    for (let c = 0; c <= data.gw; c++) {
      const x = Math.round(L.pad + c * L.pw) + 0.5;
      ctx.moveTo(x, L.pad);
      ctx.lineTo(x, bottom);
    }
    ctx.stroke();
  }

  function drawColourBar(range) {
    const h = Math.max(120, layout.height - 2 * layout.pad);
    const ctx = sizeCanvas($("colour-bar"), 90, h + 16);
    for (let y = 0; y < h; y++) {
      const t = Math.round(255 * (1 - y / Math.max(1, h - 1)));
      ctx.fillStyle = "rgb(" + LUT[3 * t] + "," + LUT[3 * t + 1] + "," + LUT[3 * t + 2] + ")";
      ctx.fillRect(0, 8 + y, 14, 1);
    }
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#1d232a";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(range.hi.toFixed(3), 20, 8);
    ctx.textBaseline = "bottom";
    ctx.fillText(range.lo.toFixed(3), 20, 8 + h);
  }

  function draw() {
    const t = performance.now();
    const L = layout;
    const ctx = sizeCanvas($("image-canvas"), L.width, L.height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(base, 0, 0, data.width, data.height, L.pad, L.pad, data.width * L.scale, data.height * L.scale);
    const m = shownMap();
    const range = rangeOf(m);
    paintHeat(m, range);
    ctx.globalAlpha = state.opacity;
    ctx.drawImage(heat, 0, 0, data.gw, data.gh, L.pad, L.pad, data.width * L.scale, data.height * L.scale);
    ctx.globalAlpha = 1;
    drawGrid(ctx);
    const q = shownQuery();
    if (state.overlay === ATTENTION && q >= data.prefix) {
      outline(ctx, Math.floor((q - data.prefix) / data.gw), (q - data.prefix) % data.gw, "#00e5ff", 3);
    }
    if (state.hover) outline(ctx, state.hover.row, state.hover.col, "#ffffff", 1);
    drawColourBar(range);
    $("image-readout").textContent = readout(m, range);
    hook.draws += 1;
    hook.timings.lastDraw = performance.now() - t;
    return hook.timings.lastDraw;
  }

  function readout(m, range) {
    const lines = [];
    if (state.overlay === ATTENTION) {
      const q = shownQuery();
      const row = matrixOf(state.layer, state.head).subarray(q * data.tokens, (q + 1) * data.tokens);
      lines.push("query: " + tokenName(q) + (state.pinned ? " (pinned)" : ""));
      lines.push("layer " + state.layer + ", " + (state.head === "all" ? "mean over heads" : "head " + state.head));
      for (let t = 0; t < data.prefix; t++) lines.push("on " + tokenName(t) + ": " + fmt(row[t]));
    } else {
      lines.push(state.overlay);
    }
    lines.push("colour: " + range.lo.toFixed(3) + " to " + range.hi.toFixed(3));
    if (state.hover) {
      const p = state.hover.row * data.gw + state.hover.col;
      lines.push("patch (" + state.hover.row + ", " + state.hover.col + "): " + fmt(m[p]));
    }
    return lines.join("\n");
  }

  // ---------------------------------------------------------------- controls

  function hit(clientX, clientY) {
    const r = $("image-canvas").getBoundingClientRect();
    const x = clientX - r.left - layout.pad;
    const y = clientY - r.top - layout.pad;
    const row = Math.floor(y / layout.ph);
    const col = Math.floor(x / layout.pw);
    if (x < 0 || y < 0 || row >= data.gh || col >= data.gw) return null;
    return { row: row, col: col };
  }

  function syncControls() {
    const queries = [];
    for (let t = 0; t < data.prefix; t++) queries.push([t, tokenName(t)]);
    if (state.query >= data.prefix) queries.push([state.query, tokenName(state.query)]);
    fillSelect($("query"), queries);
    $("query").value = String(state.query);
    $("layer").value = String(state.layer);
    $("head").value = String(state.head);
    $("overlay").value = state.overlay;
    const attention = state.overlay === ATTENTION;
    for (const id of ["layer-box", "head-box", "query-box"]) $(id).hidden = !attention;
    $("image-hint").textContent = attention
      ? "Hover a patch to see where it looks among the patches; click to pin it (click again to unpin). " +
        "The Query selector picks the class token or another prefix token."
      : "The " + state.overlay + " map given with the data, over the image (its own colour range).";
  }

  function update() {
    syncControls();
    return draw();
  }

  function setLayer(layer) {
    const l = Number(layer);
    if (!Number.isInteger(l) || l < 0 || l >= data.layers) throw new Error("layer out of range: " + layer);
    state.layer = l;
    return update();
  }

  function setHead(head) {
    const h = head === "all" ? "all" : Number(head);
    if (h !== "all" && (!Number.isInteger(h) || h < 0 || h >= data.heads)) throw new Error("head out of range: " + head);
    state.head = h;
    return update();
  }

  function setQuery(token) {
    const t = Number(token);
    if (!Number.isInteger(t) || t < 0 || t >= data.tokens) throw new Error("query out of range: " + token);
    state.query = t;
    state.pinned = t >= data.prefix;
    return update();
  }

  function setOverlay(name) {
    if (name !== ATTENTION && !data.maps.some((m) => m.name === name)) throw new Error("unknown overlay " + name);
    state.overlay = name;
    return update();
  }

  function setOpacity(value) {
    state.opacity = clamp(Number(value), 0, 1);
    $("opacity").value = String(Math.round(state.opacity * 100));
    return draw();
  }

  function showTip(text, clientX, clientY) {
    const tip = $("tooltip");
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = clientX + 14 + "px";
    tip.style.top = clientY + 14 + "px";
  }

  function wire() {
    $("layer").addEventListener("change", (e) => setLayer(e.target.value));
    $("head").addEventListener("change", (e) => setHead(e.target.value));
    $("query").addEventListener("change", (e) => setQuery(e.target.value));
    $("overlay").addEventListener("change", (e) => setOverlay(e.target.value));
    $("opacity").addEventListener("input", (e) => setOpacity(Number(e.target.value) / 100));
    const canvas = $("image-canvas");
    canvas.addEventListener("mousemove", (e) => {
      const at = hit(e.clientX, e.clientY);
      const prev = state.hover;
      if (!(prev === at || (prev && at && prev.row === at.row && prev.col === at.col))) {
        state.hover = at;
        draw();
      }
      if (at) {
        const m = shownMap();
        showTip("patch (" + at.row + ", " + at.col + "): " + fmt(m[at.row * data.gw + at.col]), e.clientX, e.clientY);
      } else {
        $("tooltip").hidden = true;
      }
    });
    canvas.addEventListener("mouseleave", () => {
      $("tooltip").hidden = true;
      state.hover = null;
      draw();
    });
    canvas.addEventListener("click", (e) => {
      const at = hit(e.clientX, e.clientY);
      if (!at || state.overlay !== ATTENTION) return;
      const token = data.prefix + at.row * data.gw + at.col;
      if (state.pinned && state.query === token) {
        state.pinned = false; // unpin: back to the first prefix token, or the hovered patch
        state.query = data.prefix > 0 ? 0 : token;
      } else {
        state.pinned = true;
        state.query = token;
      }
      update();
    });
  }

  // ---------------------------------------------------------------- test hook

  hook.state = () => ({
    overlay: state.overlay,
    layer: state.layer,
    head: state.head,
    query: state.query,
    pinned: state.pinned,
    shownQuery: shownQuery(),
    opacity: state.opacity,
  });
  hook.setLayer = (l) => setLayer(l);
  hook.setHead = (h) => setHead(h);
  hook.setQuery = (t) => setQuery(t);
  hook.setOverlay = (name) => setOverlay(name);
  hook.setOpacity = (v) => setOpacity(v);
  hook.shownMap = () => Array.from(shownMap());
  hook.weight = (layer, head, i, j) => data.values[((layer * data.heads + head) * data.tokens + i) * data.tokens + j];
  hook.patchCenter = (row, col) => {
    const r = $("image-canvas").getBoundingClientRect();
    return { x: r.left + layout.pad + (col + 0.5) * layout.pw, y: r.top + layout.pad + (row + 0.5) * layout.ph };
  };

  // ---------------------------------------------------------------- start

  function init() {
    const payload = JSON.parse($("qkv-data").textContent);
    data = decode(payload);
    hook.timings.decode = performance.now() - started;
    $("qkv-title").textContent = data.title;
    document.title = data.title;
    // the class token (the first prefix token) at first; with no prefix, the first patch, pinned
    state = { overlay: ATTENTION, layer: 0, head: "all", query: 0, pinned: data.prefix === 0, hover: null, opacity: 0.6 };
    qkvShared.fillLayersAndHeads($("layer"), $("head"), data.layers, data.heads);
    fillSelect($("overlay"), [[ATTENTION, "attention"]].concat(data.maps.map((m) => [m.name, m.name])));
    layout = makeLayout();
    wire();
    update();
    hook.timings.firstDraw = performance.now() - started;
    hook.ready = true;
    document.documentElement.dataset.qkvReady = "1";
  }

  qkvShared.start(init, $("qkv-error"));
})();

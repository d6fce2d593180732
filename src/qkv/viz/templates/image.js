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
  const clamp = qkvShared.clamp;
  const visible = qkvShared.visible;
  const fillSelect = qkvShared.fillSelect;
  const ATTENTION = "attention";

  const hook = { ready: false, mode: "image", draws: 0, timings: {} };
  window.qkvViewer = hook;

  let data = null;
  let state = null;
  let layout = null;
  let base = null; // the image, one canvas pixel per image pixel
  const heat = document.createElement("canvas"); // the overlay, one canvas pixel per patch
  const means = new Map(); // layer -> mean over heads (T * T)

  function fmt(v) {
    return Number.isFinite(v) ? v.toFixed(4) : String(v);
  }

  // ---------------------------------------------------------------- data

  function decode(payload) {
    const a = payload.attention;
    base = qkvShared.imageCanvas(payload.image);
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

  // ---------------------------------------------------------------- drawing

  function draw() {
    const t = performance.now();
    const L = layout;
    const ctx = qkvShared.sizeImageCanvas($("image-canvas"), L.width, L.height);
    const m = shownMap();
    const range = qkvShared.rangeOf(m);
    qkvShared.paintHeat(heat, m, data.gh, data.gw, range);
    qkvShared.drawPicture(ctx, L, base, heat, state.opacity);
    const q = shownQuery();
    if (state.overlay === ATTENTION && q >= data.prefix) {
      qkvShared.outlinePatch(ctx, L, Math.floor((q - data.prefix) / data.gw), (q - data.prefix) % data.gw, "#00e5ff", 3);
    }
    if (state.hover) qkvShared.outlinePatch(ctx, L, state.hover.row, state.hover.col, "#ffffff", 1);
    qkvShared.drawColourBar($("colour-bar"), range, L.height - 2 * L.pad);
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
    layout = qkvShared.patchLayout(data.height, data.width, data.gh, data.gw);
    wire();
    update();
    hook.timings.firstDraw = performance.now() - started;
    hook.ready = true;
    document.documentElement.dataset.qkvReady = "1";
  }

  qkvShared.start(init, $("qkv-error"));
})();

/* qkv attention viewer. Plain ES2017, no libraries, no network.
 *
 * Reads the JSON in <script id="qkv-data">, decodes the 16-bit weights (qkvShared, common.js,
 * inlined before this file) and draws three views on
 * <canvas>: head (token lines), model (layer x head thumbnails) and matrix (heatmap). Token
 * strings reach the page only through textContent, attribute setters and canvas fillText, and
 * only after visible(): bidirectional control characters show as their code points, never act.
 */
(function () {
  "use strict";

  const started = performance.now();
  const $ = (id) => document.getElementById(id);

  const LUT = qkvShared.LUT;
  const visible = qkvShared.visible;
  const fillSelect = qkvShared.fillSelect;
  // Software canvases spend ~0.1 ms per long anti-aliased line: keep one drawing to a few thousand
  // lines (the strongest) and skip lines too faint to see.
  const LINE_BUDGET = 3000;
  const MIN_LINE_OPACITY = 1 / 128;
  const MONO = "ui-monospace, Menlo, Consolas, monospace";
  const KIND_LABELS = {
    encoder: "encoder self-attention",
    decoder: "decoder self-attention",
    cross: "cross-attention (target \u2192 source)",
  };

  const hook = { ready: false, draws: 0, lines: null, timings: {} };
  window.qkvViewer = hook;

  let payload = null;
  let kinds = [];
  let state = null;
  const layouts = { head: null, matrix: null };
  let modelBuilt = null; // "kind:size" the model grid was drawn for
  const scratch = document.createElement("canvas");

  function clamp(v, lo, hi) {
    return v < lo ? lo : v > hi ? hi : v;
  }

  function fmt(v) {
    return Number.isFinite(v) ? v.toFixed(4) : String(v);
  }

  // ---------------------------------------------------------------- data

  function decodeKind(spec, tokens) {
    const values = qkvShared.decode16(spec.data, spec.lo, spec.hi, spec.tq * spec.tk);
    let peak = 0;
    for (let m = 0; m < spec.lo.length; m++) peak = Math.max(peak, Math.abs(spec.lo[m]), Math.abs(spec.hi[m]));
    return {
      name: spec.name,
      layers: spec.layers,
      heads: spec.heads,
      tq: spec.tq,
      tk: spec.tk,
      querySide: spec.queries,
      keySide: spec.keys,
      queryLabel: spec.queryLabel || "queries (" + spec.queries + ")",
      keyLabel: spec.keyLabel || "keys (" + spec.keys + ")",
      queries: tokens[spec.queries],
      keys: tokens[spec.keys],
      values: values,
      opacityScale: Math.max(1, peak), // weights in [0, 1] keep opacity = weight
      means: new Map(),
      fitted: new Map(),
    };
  }

  function kind() {
    return kinds[state.kind];
  }

  // (Tq * Tk) weights of one head, or the mean over heads for head "all"
  function matrixOf(k, layer, head) {
    const per = k.tq * k.tk;
    if (head !== "all") {
      const off = (layer * k.heads + head) * per;
      return k.values.subarray(off, off + per);
    }
    let mean = k.means.get(layer);
    if (!mean) {
      mean = new Float32Array(per);
      for (let h = 0; h < k.heads; h++) {
        const off = (layer * k.heads + h) * per;
        for (let p = 0; p < per; p++) mean[p] += k.values[off + p];
      }
      for (let p = 0; p < per; p++) mean[p] /= k.heads;
      k.means.set(layer, mean);
    }
    return mean;
  }

  function rangeOf(m) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let p = 0; p < m.length; p++) {
      const v = m[p];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    lo = Math.min(0, lo);
    return { lo: lo, hi: hi > lo ? hi : lo + 1 };
  }

  // one pixel per weight in the shared scratch canvas (tk wide, tq high)
  function paintMatrix(k, m, range) {
    if (scratch.width !== k.tk || scratch.height !== k.tq) {
      scratch.width = k.tk;
      scratch.height = k.tq;
    }
    const ctx = scratch.getContext("2d");
    const img = ctx.createImageData(k.tk, k.tq);
    const d = img.data;
    const scale = 255 / (range.hi - range.lo);
    for (let p = 0; p < m.length; p++) {
      const t = clamp(Math.round((m[p] - range.lo) * scale), 0, 255);
      d[4 * p] = LUT[3 * t];
      d[4 * p + 1] = LUT[3 * t + 1];
      d[4 * p + 2] = LUT[3 * t + 2];
      d[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return scratch;
  }

  // ---------------------------------------------------------------- canvas helpers

  function sizeCanvas(canvas, width, height) {
    const budget = 24e6; // device pixels; keeps a 512-token head view affordable on HiDPI
    const ratio = Math.max(1, Math.min(window.devicePixelRatio || 1, Math.sqrt(budget / (width * height))));
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

  function fitText(ctx, text, maxWidth) {
    if (ctx.measureText(text).width <= maxWidth) return text;
    let lo = 0;
    let hi = text.length;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (ctx.measureText(text.slice(0, mid) + "\u2026").width <= maxWidth) lo = mid;
      else hi = mid - 1;
    }
    return text.slice(0, lo) + "\u2026";
  }

  // token labels cut to maxWidth with the current font, cached per kind
  function fitted(ctx, k, side, maxWidth) {
    const key = side + "|" + ctx.font + "|" + maxWidth;
    let out = k.fitted.get(key);
    if (!out) {
      const list = side === "q" ? k.queries : k.keys;
      let widest = 0;
      const texts = list.map((t) => {
        const s = fitText(ctx, t.replace(/[\r\n\t]/g, " "), maxWidth);
        widest = Math.max(widest, ctx.measureText(s).width);
        return s;
      });
      out = { texts: texts, width: Math.ceil(widest) };
      k.fitted.set(key, out);
    }
    return out;
  }

  function headColour(h, count) {
    return "hsl(" + Math.round((h * 360) / count) + ", 70%, 42%)";
  }

  // ---------------------------------------------------------------- head view

  function headLayout(k, ctx) {
    const n = Math.max(k.tq, k.tk);
    const rowH = n > 160 ? 12 : n > 60 ? 15 : 20;
    const fontPx = rowH >= 20 ? 13 : rowH >= 15 ? 12 : 10;
    ctx.font = fontPx + "px " + MONO;
    const q = fitted(ctx, k, "q", 200);
    const kk = fitted(ctx, k, "k", 200);
    const pad = 10;
    const numW = 56;
    const top = 30;
    const qLeft = pad + numW; // left edge of the query labels
    const xq = qLeft + Math.max(q.width, 40); // right edge of the query labels
    const x0 = xq + 8;
    const x1 = x0 + 240;
    const xk = x1 + 8; // left edge of the key labels
    const kRight = xk + Math.max(kk.width, 40);
    return {
      qLeft: qLeft,
      kRight: kRight,
      font: ctx.font,
      rowH: rowH,
      top: top,
      xq: xq,
      x0: x0,
      x1: x1,
      xk: xk,
      qTexts: q.texts,
      kTexts: kk.texts,
      width: kRight + numW + pad,
      height: top + n * rowH + pad,
      y: (i) => top + (i + 0.5) * rowH,
    };
  }

  function selectedHeads(k) {
    if (state.head !== "all") return [state.head];
    const out = [];
    for (let h = 0; h < k.heads; h++) out.push(h);
    return out;
  }

  // weights between the focused token and every token of the other side (mean over shown heads)
  function focusVector(k, focus) {
    const heads = selectedHeads(k);
    const n = focus.side === "q" ? k.tk : k.tq;
    const out = new Float32Array(n);
    for (const h of heads) {
      const m = matrixOf(k, state.layer, h);
      for (let t = 0; t < n; t++) {
        out[t] += focus.side === "q" ? m[focus.i * k.tk + t] : m[t * k.tk + focus.i];
      }
    }
    for (let t = 0; t < n; t++) out[t] /= heads.length;
    return out;
  }

  // the lines to draw: (head, query, key, opacity), weakest first, at most LINE_BUDGET of them.
  // Opacity is the weight over the largest weight of the shown heads (so the strongest line is
  // opaque and weights of long rows, all small, still show).
  function collectLines(k, heads, focus) {
    const iFrom = focus && focus.side === "q" ? focus.i : 0;
    const iTo = focus && focus.side === "q" ? focus.i + 1 : k.tq;
    const jFrom = focus && focus.side === "k" ? focus.i : 0;
    const jTo = focus && focus.side === "k" ? focus.i + 1 : k.tk;
    let peak = 0;
    for (const h of heads) {
      const m = matrixOf(k, state.layer, h);
      for (let p = 0; p < m.length; p++) peak = Math.max(peak, Math.abs(m[p]));
    }
    const scale = peak > 0 ? peak : 1;
    const lines = [];
    for (const h of heads) {
      const m = matrixOf(k, state.layer, h);
      for (let i = iFrom; i < iTo; i++) {
        const row = i * k.tk;
        for (let j = jFrom; j < jTo; j++) {
          const a = Math.min(1, Math.abs(m[row + j]) / scale);
          if (a >= MIN_LINE_OPACITY) lines.push({ h: h, i: i, j: j, a: a });
        }
      }
    }
    lines.sort((x, y) => x.a - y.a);
    const total = lines.length;
    return { lines: total > LINE_BUDGET ? lines.slice(total - LINE_BUDGET) : lines, total: total };
  }

  function strokeLines(ctx, L, k, heads, focus) {
    const found = collectLines(k, heads, focus);
    const colours = {};
    for (const h of heads) colours[h] = headColour(h, k.heads); // one colour per head, as in the legend
    ctx.lineWidth = focus ? 2 : Math.max(k.tq, k.tk) <= 40 ? 2 : 1;
    let current = -1;
    for (const line of found.lines) {
      if (line.h !== current) {
        ctx.strokeStyle = colours[line.h];
        current = line.h;
      }
      ctx.globalAlpha = line.a;
      ctx.beginPath();
      ctx.moveTo(L.x0, L.y(line.i));
      ctx.lineTo(L.x1, L.y(line.j));
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    hook.lines = { drawn: found.lines.length, total: found.total, heads: heads.slice(), colours: colours };
    return hook.lines;
  }

  function drawHead() {
    const k = kind();
    const canvas = $("head-canvas");
    const L = headLayout(k, canvas.getContext("2d"));
    const ctx = sizeCanvas(canvas, L.width, L.height);
    layouts.head = L;
    const focus = state.focus;

    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#5b6570";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    ctx.fillText(k.queryLabel, L.xq, 14);
    ctx.textAlign = "left";
    ctx.fillText(k.keyLabel, L.xk, 14);

    ctx.font = L.font;
    let vec = null;
    if (focus) {
      vec = focusVector(k, focus);
      // bars behind the other side's labels: length and opacity grow with the weight
      const onKeys = focus.side === "q";
      const x = onKeys ? L.xk - 3 : L.qLeft - 3;
      const full = onKeys ? L.kRight - L.xk + 6 : L.xq - L.qLeft + 6;
      for (let t = 0; t < vec.length; t++) {
        const a = Math.min(1, Math.abs(vec[t]) / k.opacityScale);
        if (a <= 0) continue;
        ctx.fillStyle = "rgba(47, 111, 176, " + (0.1 + 0.45 * a).toFixed(3) + ")";
        const w = full * Math.max(a, 0.03);
        ctx.fillRect(onKeys ? x : x + full - w, L.top + t * L.rowH + 1, w, L.rowH - 2);
      }
      // the focused token itself
      ctx.fillStyle = "rgba(255, 196, 0, 0.45)";
      if (onKeys) ctx.fillRect(L.qLeft - 3, L.top + focus.i * L.rowH, L.xq - L.qLeft + 6, L.rowH);
      else ctx.fillRect(L.xk - 3, L.top + focus.i * L.rowH, L.kRight - L.xk + 6, L.rowH);
    }

    const lines = strokeLines(ctx, L, k, selectedHeads(k), focus);
    strokeGold(ctx, L, k);
    const note = $("head-lines");
    note.textContent =
      lines.drawn < lines.total
        ? "Showing the " + lines.drawn + " strongest of " + lines.total + " lines (hover a token to see all of its lines)."
        : "";

    ctx.fillStyle = "#1d232a";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i < k.tq; i++) ctx.fillText(L.qTexts[i], L.xq, L.y(i));
    ctx.textAlign = "left";
    for (let j = 0; j < k.tk; j++) ctx.fillText(L.kTexts[j], L.xk, L.y(j));

    if (vec) {
      ctx.fillStyle = "#1d232a";
      if (focus.side === "q") {
        ctx.textAlign = "right";
        for (let j = 0; j < k.tk; j++) ctx.fillText(vec[j].toFixed(3), L.width - 10, L.y(j));
      } else {
        ctx.textAlign = "left";
        for (let i = 0; i < k.tq; i++) ctx.fillText(vec[i].toFixed(3), 10, L.y(i));
      }
    }
  }

  // the selected relation's gold pairs, dashed: dependent -> head, or head -> dependent when the
  // shown head (or, for all heads, the relation's best) reads the tree the other way
  function strokeGold(ctx, L, k) {
    hook.gold = [];
    const rel = state.relation;
    if (!rel || k.name !== "encoder") return;
    const mark = rel.heads.find((b) => b.layer === state.layer && b.head === state.head) || rel.heads[0];
    const reverse = Boolean(mark && mark.direction === 1);
    ctx.strokeStyle = "#ff7f0e"; // the best heads' colour
    ctx.lineWidth = 2.5;
    ctx.setLineDash([6, 4]);
    for (const a of payload.arcs) {
      if (a.rel !== rel.name || a.head < 0) continue;
      const q = reverse ? a.head : a.dep;
      const key = reverse ? a.dep : a.head;
      ctx.beginPath();
      ctx.moveTo(L.x0, L.y(q));
      ctx.lineTo(L.x1, L.y(key));
      ctx.stroke();
      hook.gold.push([q, key]);
    }
    ctx.setLineDash([]);
  }

  function headHit(clientX, clientY) {
    const L = layouts.head;
    if (!L) return null;
    const r = $("head-canvas").getBoundingClientRect();
    const x = clientX - r.left;
    const y = clientY - r.top;
    const k = kind();
    const side = x < (L.x0 + L.x1) / 2 ? "q" : "k";
    const i = Math.floor((y - L.top) / L.rowH);
    if (i < 0 || i >= (side === "q" ? k.tq : k.tk) || y < L.top) return null;
    return { side: side, i: i };
  }

  function headTip(k, focus) {
    const vec = focusVector(k, focus);
    const own = focus.side === "q" ? k.queries : k.keys;
    const other = focus.side === "q" ? k.keys : k.queries;
    const order = Array.from(vec.keys()).sort((a, b) => Math.abs(vec[b]) - Math.abs(vec[a]));
    const where = "layer " + state.layer + ", " + (state.head === "all" ? "mean over heads" : "head " + state.head);
    const lines = [(focus.side === "q" ? "query " : "key ") + own[focus.i] + " (" + focus.i + "), " + where];
    for (const t of order.slice(0, 6)) {
      lines.push((focus.side === "q" ? "-> " : "<- ") + other[t] + " (" + t + "): " + fmt(vec[t]));
    }
    return lines.join("\n");
  }

  function sameFocus(a, b) {
    return a === b || (a && b && a.side === b.side && a.i === b.i);
  }

  // ---------------------------------------------------------------- matrix view

  function matrixLayout(k, ctx) {
    const n = Math.max(k.tq, k.tk);
    const cell = clamp(Math.floor(720 / n), 1, 32);
    const labelled = cell >= 9;
    const fontPx = Math.min(12, cell - 2);
    let left = 10;
    let top = 10;
    let q = null;
    let kk = null;
    if (labelled) {
      ctx.font = fontPx + "px " + MONO;
      q = fitted(ctx, k, "q", 160);
      kk = fitted(ctx, k, "k", 140);
      left = q.width + 14;
      top = kk.width + 14;
    }
    const gridH = k.tq * cell;
    return {
      cell: cell,
      labelled: labelled,
      font: ctx.font,
      left: left,
      top: top,
      qTexts: q && q.texts,
      kTexts: kk && kk.texts,
      width: left + k.tk * cell + 96,
      height: top + Math.max(gridH, 120) + 12,
    };
  }

  function drawMatrix() {
    const k = kind();
    const canvas = $("matrix-canvas");
    const L = matrixLayout(k, canvas.getContext("2d"));
    const ctx = sizeCanvas(canvas, L.width, L.height);
    const m = matrixOf(k, state.layer, state.head);
    const range = rangeOf(m);
    layouts.matrix = L;
    L.range = range;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(paintMatrix(k, m, range), 0, 0, k.tk, k.tq, L.left, L.top, k.tk * L.cell, k.tq * L.cell);

    if (L.labelled) {
      ctx.font = L.font;
      ctx.fillStyle = "#1d232a";
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (let i = 0; i < k.tq; i++) ctx.fillText(L.qTexts[i], L.left - 6, L.top + (i + 0.5) * L.cell);
      ctx.textAlign = "left";
      for (let j = 0; j < k.tk; j++) {
        ctx.save();
        ctx.translate(L.left + (j + 0.5) * L.cell, L.top - 6);
        ctx.rotate(-Math.PI / 2);
        ctx.fillText(L.kTexts[j], 0, 0);
        ctx.restore();
      }
    }

    // colour bar
    const bx = L.left + k.tk * L.cell + 16;
    const bh = Math.max(k.tq * L.cell, 120);
    for (let y = 0; y < bh; y++) {
      const t = Math.round(255 * (1 - y / Math.max(1, bh - 1)));
      ctx.fillStyle = "rgb(" + LUT[3 * t] + "," + LUT[3 * t + 1] + "," + LUT[3 * t + 2] + ")";
      ctx.fillRect(bx, L.top + y, 12, 1);
    }
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#1d232a";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(range.hi.toFixed(3), bx + 16, L.top);
    ctx.textBaseline = "bottom";
    ctx.fillText(range.lo.toFixed(3), bx + 16, L.top + bh);

    const hv = state.hover;
    if (hv && hv.i < k.tq && hv.j < k.tk) {
      ctx.strokeStyle = "rgba(255, 255, 255, 0.7)";
      ctx.lineWidth = 1;
      ctx.strokeRect(L.left + 0.5, L.top + hv.i * L.cell + 0.5, k.tk * L.cell - 1, L.cell - 1);
      ctx.strokeRect(L.left + hv.j * L.cell + 0.5, L.top + 0.5, L.cell - 1, k.tq * L.cell - 1);
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      ctx.strokeRect(L.left + hv.j * L.cell, L.top + hv.i * L.cell, Math.max(L.cell, 2), Math.max(L.cell, 2));
    }
  }

  function matrixHit(clientX, clientY) {
    const L = layouts.matrix;
    if (!L) return null;
    const k = kind();
    const r = $("matrix-canvas").getBoundingClientRect();
    const x = clientX - r.left - L.left;
    const y = clientY - r.top - L.top;
    const i = Math.floor(y / L.cell);
    const j = Math.floor(x / L.cell);
    if (x < 0 || y < 0 || i >= k.tq || j >= k.tk) return null;
    const m = matrixOf(k, state.layer, state.head);
    return { i: i, j: j, query: k.queries[i], key: k.keys[j], weight: m[i * k.tk + j] };
  }

  function matrixTip(hit) {
    const where = "layer " + state.layer + ", " + (state.head === "all" ? "mean over heads" : "head " + state.head);
    return hit.query + " -> " + hit.key + ": " + fmt(hit.weight) + "\nquery " + hit.i + ", key " + hit.j + ", " + where;
  }

  // ---------------------------------------------------------------- model view

  function buildModel() {
    const k = kind();
    const grid = $("model-grid");
    const avail = Math.max(320, document.documentElement.clientWidth - 120);
    const size = clamp(Math.floor(avail / k.heads) - 4, 36, 96);
    const key = state.kind + ":" + size;
    if (modelBuilt === key) return markCurrentThumb();
    grid.replaceChildren();
    grid.style.gridTemplateColumns = "auto repeat(" + k.heads + ", " + size + "px)";
    grid.appendChild(document.createElement("div"));
    for (let h = 0; h < k.heads; h++) {
      const d = document.createElement("div");
      d.className = "col-head";
      d.textContent = "head " + h;
      grid.appendChild(d);
    }
    for (let l = 0; l < k.layers; l++) {
      const d = document.createElement("div");
      d.className = "row-head";
      d.textContent = "layer " + l;
      grid.appendChild(d);
      for (let h = 0; h < k.heads; h++) {
        const c = document.createElement("canvas");
        const ctx = sizeCanvas(c, size, size);
        const m = matrixOf(k, l, h);
        // average when shrinking, crisp cells when enlarging
        ctx.imageSmoothingEnabled = k.tk > size || k.tq > size;
        ctx.imageSmoothingQuality = "high";
        ctx.drawImage(paintMatrix(k, m, rangeOf(m)), 0, 0, k.tk, k.tq, 0, 0, size, size);
        c.dataset.layer = String(l);
        c.dataset.head = String(h);
        c.setAttribute("title", "layer " + l + ", head " + h);
        c.setAttribute("aria-label", "open layer " + l + ", head " + h);
        c.setAttribute("role", "button");
        c.tabIndex = 0;
        grid.appendChild(c);
      }
    }
    modelBuilt = key;
    markCurrentThumb();
  }

  function markCurrentThumb() {
    for (const c of $("model-grid").querySelectorAll("canvas")) {
      const on = Number(c.dataset.layer) === state.layer && Number(c.dataset.head) === state.head;
      c.classList.toggle("current", on);
      c.classList.toggle("best", isBest(Number(c.dataset.layer), Number(c.dataset.head)));
    }
  }

  function openThumb(target) {
    if (!target || target.tagName !== "CANVAS" || target.dataset.layer === undefined) return;
    state.layer = Number(target.dataset.layer);
    state.head = Number(target.dataset.head);
    state.focus = null;
    state.pinned = false;
    setView("matrix");
  }

  // ---------------------------------------------------------------- token importance

  function buildScores() {
    const list = payload.scores || [];
    const panel = $("scores-panel");
    if (!list.length) return;
    panel.hidden = false;
    const methods = [];
    for (const s of list) if (methods.indexOf(s.name) < 0) methods.push(s.name);
    const select = $("score-method");
    fillSelect(select, methods.map((m) => [m, m.replace(/_/g, " ")]));
    select.hidden = methods.length < 2;
    select.addEventListener("change", () => drawScores(select.value));
    drawScores(methods[0]);
  }

  function drawScores(method) {
    const bars = $("scores-bars");
    bars.replaceChildren();
    for (const s of payload.scores) {
      if (s.name !== method) continue;
      const toks = payload.tokens[s.side];
      let peak = 0;
      for (const v of s.values) peak = Math.max(peak, Math.abs(v));
      const row = document.createElement("div");
      row.className = "score-row";
      row.dataset.side = s.side;
      const label = document.createElement("span");
      label.className = "score-side";
      label.textContent = (payload.sideLabels || {})[s.side] || s.side;
      row.appendChild(label);
      s.values.forEach((v, t) => {
        const chip = document.createElement("span");
        chip.className = "chip";
        const a = peak > 0 ? Math.abs(v) / peak : 0;
        const rgb = v >= 0 ? "47, 111, 176" : "214, 39, 40";
        chip.style.backgroundColor = "rgba(" + rgb + ", " + (0.85 * a).toFixed(3) + ")";
        chip.style.borderBottomColor = "rgba(" + rgb + ", 1)";
        chip.style.borderBottomWidth = Math.max(1, Math.round(4 * a)) + "px";
        if (a > 0.55) chip.style.color = "#fff";
        chip.textContent = toks[t];
        chip.setAttribute("title", toks[t] + " (" + t + "): " + fmt(v));
        row.appendChild(chip);
      });
      bars.appendChild(row);
    }
  }

  // ---------------------------------------------------------------- dependency arcs

  function isBest(layer, head) {
    const rel = state.relation;
    return Boolean(rel && kind().name === "encoder" && rel.heads.some((b) => b.layer === layer && b.head === head));
  }

  function buildArcs() {
    if (!payload.arcs) return;
    $("arcs-panel").hidden = false;
    $("relation-box").hidden = false;
    qkvArcs.draw($("arcs-svg"), payload.tokens.source, payload.arcs);
    const items = payload.relations.map((r) => [r.name, r.name + " (" + r.count + ")"]);
    fillSelect($("relation"), [["", "all relations"]].concat(items));
  }

  // the relation's arcs highlighted and its best head shown (the encoder, its layer and head)
  function setRelation(name) {
    const rel = name ? (payload.relations || []).find((r) => r.name === name) : null;
    if (name && !rel) throw new Error("unknown relation " + JSON.stringify(name));
    state.relation = rel || null;
    $("relation").value = rel ? rel.name : "";
    qkvArcs.highlight($("arcs-svg"), rel ? rel.name : null);
    const box = $("best-heads");
    box.replaceChildren();
    if (!rel) box.textContent = "Gold dependency arcs, head \u2192 dependent. Pick a relation to highlight its arcs and open the head that finds them best.";
    else if (!rel.heads.length) box.textContent = "No head was measured for " + rel.name + ".";
    else box.textContent = "Best heads for " + rel.name + " (its gold pairs dashed in the head view):";
    for (const b of rel ? rel.heads : []) {
      const button = document.createElement("button");
      button.type = "button";
      const pct = b.accuracy === null ? "" : " " + (100 * b.accuracy).toFixed(0) + "%";
      button.textContent = "layer " + b.layer + ", head " + b.head + (b.direction ? " head\u2192dep" : " dep\u2192head") + pct;
      button.addEventListener("click", () => showHead(b.layer, b.head));
      box.appendChild(button);
      b.button = button;
    }
    return rel && rel.heads.length ? showHead(rel.heads[0].layer, rel.heads[0].head) : render();
  }

  function showHead(layer, head) {
    state.kind = kinds.findIndex((k) => k.name === "encoder");
    state.layer = layer;
    state.head = head;
    state.focus = null;
    state.pinned = false;
    syncControls();
    return render();
  }

  function markBestButtons() {
    for (const b of state.relation ? state.relation.heads : []) {
      const on = kind().name === "encoder" && b.layer === state.layer && b.head === state.head;
      b.button.setAttribute("aria-pressed", on ? "true" : "false");
    }
  }

  // ---------------------------------------------------------------- controls

  function syncControls() {
    const k = kind();
    qkvShared.fillLayersAndHeads($("layer"), $("head"), k.layers, k.heads);
    $("layer").value = String(state.layer);
    $("head").value = String(state.head);
    $("kind").value = k.name;
  }

  function updateHints() {
    const k = kind();
    const all = state.head === "all";
    $("head-hint").textContent =
      "Lines go from each query to the keys it attends to; opacity = weight (the largest is opaque), " +
      (all ? "colour = head, all heads overlaid (pick one in Head)" : "colour = head " + state.head) +
      ". Hover a token to isolate its lines and read its weights; click to pin it.";
    const legend = $("head-legend");
    legend.replaceChildren();
    for (const h of selectedHeads(k)) {
      const s = document.createElement("span");
      s.style.backgroundColor = headColour(h, k.heads);
      s.textContent = "head " + h;
      legend.appendChild(s);
    }
    $("matrix-hint").textContent =
      "Rows: " + k.queryLabel + ". Columns: " + k.keyLabel + ". " +
      (all ? "Mean over heads. " : "") +
      "Colour from 0 to the largest weight of this matrix; hover a cell to read it.";
  }

  function render() {
    const t = performance.now();
    updateHints();
    markBestButtons();
    if (state.view === "head") drawHead();
    else if (state.view === "matrix") drawMatrix();
    else buildModel();
    hook.draws += 1;
    hook.timings.lastDraw = performance.now() - t;
    return hook.timings.lastDraw;
  }

  function hideTip() {
    $("tooltip").hidden = true;
  }

  function showTip(text, clientX, clientY) {
    const tip = $("tooltip");
    tip.textContent = text;
    tip.hidden = false;
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    let x = clientX + 14;
    let y = clientY + 14;
    if (x + w > window.innerWidth - 4) x = clientX - w - 10;
    if (y + h > window.innerHeight - 4) y = clientY - h - 10;
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = Math.max(4, y) + "px";
  }

  function setKind(name) {
    const index = kinds.findIndex((k) => k.name === name);
    if (index < 0) throw new Error("unknown attention kind " + JSON.stringify(name));
    state.kind = index;
    const k = kind();
    state.layer = Math.min(state.layer, k.layers - 1);
    if (state.head !== "all") state.head = Math.min(state.head, k.heads - 1);
    state.focus = null;
    state.pinned = false;
    state.hover = null;
    hideTip();
    syncControls();
    return render();
  }

  function setLayer(layer) {
    const l = Number(layer);
    if (!Number.isInteger(l) || l < 0 || l >= kind().layers) throw new Error("layer out of range: " + layer);
    state.layer = l;
    $("layer").value = String(l);
    return render();
  }

  function setHead(head) {
    const h = head === "all" ? "all" : Number(head);
    if (h !== "all" && (!Number.isInteger(h) || h < 0 || h >= kind().heads)) {
      throw new Error("head out of range: " + head);
    }
    state.head = h;
    $("head").value = String(h);
    return render();
  }

  function setView(view) {
    if (["head", "model", "matrix"].indexOf(view) < 0) throw new Error("unknown view " + view);
    state.view = view;
    state.hover = null;
    hideTip();
    for (const v of ["head", "model", "matrix"]) $("view-" + v).hidden = v !== view;
    for (const b of document.querySelectorAll(".tabs button")) {
      b.setAttribute("aria-selected", b.dataset.view === view ? "true" : "false");
    }
    $("layer-box").hidden = view === "model";
    $("head-box").hidden = view === "model";
    return render();
  }

  function wire() {
    $("kind").addEventListener("change", (e) => setKind(e.target.value));
    $("layer").addEventListener("change", (e) => setLayer(e.target.value));
    $("head").addEventListener("change", (e) => setHead(e.target.value));
    $("relation").addEventListener("change", (e) => setRelation(e.target.value));
    for (const b of document.querySelectorAll(".tabs button")) {
      b.addEventListener("click", () => setView(b.dataset.view));
    }

    const head = $("head-canvas");
    head.addEventListener("mousemove", (e) => {
      const hit = headHit(e.clientX, e.clientY);
      if (!state.pinned && !sameFocus(hit, state.focus)) {
        state.focus = hit;
        render();
      }
      if (state.focus) {
        // beside the drawing, so the tooltip never hides the lines it describes
        const r = head.getBoundingClientRect();
        showTip(headTip(kind(), state.focus), r.left + layouts.head.width, e.clientY - 14);
      } else {
        hideTip();
      }
    });
    head.addEventListener("mouseleave", () => {
      hideTip();
      if (!state.pinned && state.focus) {
        state.focus = null;
        render();
      }
    });
    head.addEventListener("click", (e) => {
      const hit = headHit(e.clientX, e.clientY);
      // a click pins the token under the mouse; clicking it again (or empty space) unpins
      state.pinned = Boolean(hit) && !(state.pinned && sameFocus(hit, state.focus));
      state.focus = hit;
      render();
    });

    const matrix = $("matrix-canvas");
    matrix.addEventListener("mousemove", (e) => {
      const hit = matrixHit(e.clientX, e.clientY);
      const cell = hit ? { i: hit.i, j: hit.j } : null;
      const prev = state.hover;
      if (!(prev === cell || (prev && cell && prev.i === cell.i && prev.j === cell.j))) {
        state.hover = cell;
        render();
      }
      if (hit) showTip(matrixTip(hit), e.clientX, e.clientY);
      else hideTip();
    });
    matrix.addEventListener("mouseleave", () => {
      hideTip();
      if (state.hover) {
        state.hover = null;
        render();
      }
    });

    const grid = $("model-grid");
    grid.addEventListener("click", (e) => openThumb(e.target));
    grid.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        openThumb(e.target);
      }
    });

    document.addEventListener("keydown", (e) => {
      const tag = e.target && e.target.tagName;
      if (tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA" || e.altKey || e.ctrlKey || e.metaKey) return;
      const k = kind();
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        const cur = state.head === "all" ? (e.key === "ArrowRight" ? -1 : k.heads) : state.head;
        setHead(clamp(cur + (e.key === "ArrowRight" ? 1 : -1), 0, k.heads - 1));
      } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        setLayer(clamp(state.layer + (e.key === "ArrowDown" ? 1 : -1), 0, k.layers - 1));
      } else {
        return;
      }
      e.preventDefault();
    });

    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (state.view === "model") render();
      }, 150);
    });
  }

  // ---------------------------------------------------------------- test hook

  hook.state = () => ({
    kind: kind().name,
    layer: state.layer,
    head: state.head,
    view: state.view,
    focus: state.focus ? { side: state.focus.side, i: state.focus.i } : null,
  });
  hook.labels = () => ({
    queries: kind().queryLabel,
    keys: kind().keyLabel,
    sides: Object.assign({}, payload.sideLabels || {}),
  });
  hook.visible = (text) => visible(text);
  hook.kinds = () => kinds.map((k) => ({ name: k.name, layers: k.layers, heads: k.heads, tq: k.tq, tk: k.tk }));
  hook.setKind = (name) => setKind(name);
  hook.setLayer = (layer) => setLayer(layer);
  hook.setHead = (head) => setHead(head);
  hook.setView = (view) => setView(view);
  hook.setRelation = (name) => setRelation(name);
  // the dependency arcs as drawn: relation, head, dependent and whether highlighted
  hook.arcs = () =>
    Array.from(document.querySelectorAll("#arcs-svg g.arc")).map((g) => ({
      rel: g.dataset.rel,
      head: Number(g.dataset.head),
      dep: Number(g.dataset.dep),
      on: g.classList.contains("on"),
    }));
  hook.relation = () => ({
    name: state.relation ? state.relation.name : null,
    marked: Array.from(document.querySelectorAll("#model-grid canvas.best")).map((c) => [Number(c.dataset.layer), Number(c.dataset.head)]),
    pressed: Array.from(document.querySelectorAll("#best-heads button[aria-pressed=true]")).map((b) => b.textContent),
    gold: (hook.gold || []).slice(),
  });
  hook.weight = (name, layer, head, i, j) => {
    const k = kinds.find((x) => x.name === name);
    return k.values[((layer * k.heads + head) * k.tq + i) * k.tk + j];
  };
  hook.matrixWeightAt = (clientX, clientY) => matrixHit(clientX, clientY);
  hook.matrixCellCenter = (i, j) => {
    const L = layouts.matrix;
    const r = $("matrix-canvas").getBoundingClientRect();
    return { x: r.left + L.left + (j + 0.5) * L.cell, y: r.top + L.top + (i + 0.5) * L.cell };
  };
  hook.headTokenCenter = (side, i) => {
    const L = layouts.head;
    const r = $("head-canvas").getBoundingClientRect();
    return { x: r.left + (side === "q" ? L.xq - 12 : L.xk + 12), y: r.top + L.y(i) };
  };

  // ---------------------------------------------------------------- start

  function init() {
    payload = JSON.parse($("qkv-data").textContent);
    // everything shown is made visible once here; the weights are untouched
    payload.title = visible(payload.title);
    for (const side of Object.keys(payload.tokens)) payload.tokens[side] = payload.tokens[side].map(visible);
    $("qkv-title").textContent = payload.title;
    document.title = payload.title;
    kinds = payload.kinds.map((spec) => decodeKind(spec, payload.tokens));
    hook.timings.decode = performance.now() - started;
    // all heads at first (one colour each, overlaid); the Head selector or the arrow keys pick one
    state = { kind: 0, layer: 0, head: "all", view: payload.view, focus: null, pinned: false, hover: null, relation: null };
    fillSelect($("kind"), kinds.map((k) => [k.name, KIND_LABELS[k.name] || k.name]));
    $("kind-box").hidden = kinds.length < 2;
    wire();
    syncControls();
    buildScores();
    buildArcs();
    setView(state.view);
    if (payload.arcs) setRelation("");
    // script work only: the browser rasterizes the canvases when it paints the next frame
    hook.timings.firstDraw = performance.now() - started;
    hook.timings.ready = performance.now(); // since navigation start
    hook.ready = true;
    document.documentElement.dataset.qkvReady = "1";
  }

  qkvShared.start(init, $("qkv-error"));
})();

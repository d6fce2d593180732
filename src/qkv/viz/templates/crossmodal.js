/* qkv cross-modal viewer. Plain ES2017, no libraries, no network.
 *
 * Reads the JSON in <script id="qkv-data"> (image pixels, patch grid, the caption's words, each
 * word's attention over the patches per layer and head), decodes the 16-bit weights with
 * qkvShared (common.js, inlined before this file) and draws the image with its patch grid and
 * the attention of one word (hovered, else the pinned one) over it; a hovered or pinned patch
 * colours every word by the weight it gave that patch (viridis over 0 .. the largest of them).
 * Nothing is computed here beyond the mean over heads. Words reach the page only through
 * textContent.
 */
(function () {
  "use strict";

  const started = performance.now();
  const $ = (id) => document.getElementById(id);
  const LUT = qkvShared.LUT;

  const hook = { ready: false, mode: "crossmodal", draws: 0, timings: {} };
  window.qkvViewer = hook;

  let data = null;
  let state = null;
  let layout = null;
  let base = null; // the image, one canvas pixel per image pixel
  const heat = document.createElement("canvas"); // the overlay, one canvas pixel per patch
  const means = new Map(); // layer -> mean over heads (n * N)

  function fmt(v) {
    return Number.isFinite(v) ? v.toFixed(4) : String(v);
  }

  // ---------------------------------------------------------------- data

  function decode(payload) {
    const a = payload.attention;
    base = qkvShared.imageCanvas(payload.image);
    return {
      title: qkvShared.visible(payload.title),
      height: payload.image.height,
      width: payload.image.width,
      gh: payload.grid.h,
      gw: payload.grid.w,
      words: payload.words.map(qkvShared.visible),
      layers: a.layers,
      heads: a.heads,
      n: a.words,
      patches: a.patches,
      values: qkvShared.decode16(a.data, a.lo, a.hi, a.words * a.patches),
    };
  }

  // (n * N) weights of one head, or the mean over heads for head "all"
  function matrixOf(layer, head) {
    const per = data.n * data.patches;
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

  function shownWord() {
    return state.hoverWord !== null ? state.hoverWord : state.word;
  }

  // the patch index whose words are coloured: the hovered one, else the pinned one, else null
  function shownPatch() {
    return state.hoverPatch !== null ? state.hoverPatch : state.patch;
  }

  function shownMap() {
    const w = shownWord();
    return matrixOf(state.layer, state.head).subarray(w * data.patches, (w + 1) * data.patches);
  }

  function wordWeights() {
    const p = shownPatch();
    if (p === null) return null;
    const m = matrixOf(state.layer, state.head);
    const out = new Float32Array(data.n);
    for (let i = 0; i < data.n; i++) out[i] = m[i * data.patches + p];
    return out;
  }

  function patchName(p) {
    return "patch (" + Math.floor(p / data.gw) + ", " + (p % data.gw) + ")";
  }

  // ---------------------------------------------------------------- drawing

  function paintWords() {
    const weights = wordWeights();
    let top = 0;
    if (weights) for (const v of weights) top = Math.max(top, v);
    const spans = $("words").children;
    for (let i = 0; i < data.n; i++) {
      const span = spans[i];
      span.classList.toggle("current", i === shownWord());
      span.classList.toggle("pinned", i === state.word && state.hoverWord === null);
      if (weights) {
        const t = Math.round(255 * (top > 0 ? qkvShared.clamp(weights[i] / top, 0, 1) : 0));
        span.style.backgroundColor = "rgb(" + LUT[3 * t] + "," + LUT[3 * t + 1] + "," + LUT[3 * t + 2] + ")";
        span.style.color = t > 150 ? "#1d232a" : "#ffffff";
        span.title = data.words[i] + ": " + fmt(weights[i]) + " on " + patchName(shownPatch());
      } else {
        span.style.backgroundColor = "";
        span.style.color = "";
        span.title = "";
      }
    }
  }

  function draw() {
    const t = performance.now();
    const L = layout;
    const ctx = qkvShared.sizeImageCanvas($("image-canvas"), L.width, L.height);
    const m = shownMap();
    const range = qkvShared.rangeOf(m);
    qkvShared.paintHeat(heat, m, data.gh, data.gw, range);
    qkvShared.drawPicture(ctx, L, base, heat, state.opacity);
    const p = shownPatch();
    if (p !== null) qkvShared.outlinePatch(ctx, L, Math.floor(p / data.gw), p % data.gw, "#00e5ff", state.patch === p ? 3 : 1);
    qkvShared.drawColourBar($("colour-bar"), range, L.height - 2 * L.pad);
    paintWords();
    $("image-readout").textContent = readout(range);
    hook.draws += 1;
    hook.timings.lastDraw = performance.now() - t;
    return hook.timings.lastDraw;
  }

  function readout(range) {
    const lines = ["word " + shownWord() + ": " + data.words[shownWord()] + (state.hoverWord === null ? " (pinned)" : "")];
    lines.push("layer " + state.layer + ", " + (state.head === "all" ? "mean over heads" : "head " + state.head));
    lines.push("colour: " + range.lo.toFixed(3) + " to " + range.hi.toFixed(3));
    const p = shownPatch();
    if (p !== null) {
      const w = wordWeights();
      lines.push(patchName(p) + (state.patch === p ? " (pinned)" : "") + ", the words' weights:");
      for (let i = 0; i < data.n; i++) lines.push("  " + data.words[i] + ": " + fmt(w[i]));
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
    return row * data.gw + col;
  }

  function syncControls() {
    $("layer").value = String(state.layer);
    $("head").value = String(state.head);
    $("layer-box").hidden = data.layers === 1;
    $("head-box").hidden = data.heads === 1;
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

  function setWord(word) {
    const w = Number(word);
    if (!Number.isInteger(w) || w < 0 || w >= data.n) throw new Error("word out of range: " + word);
    state.word = w;
    return update();
  }

  function setPatch(row, col) {
    if (row === null) {
      state.patch = null;
      return update();
    }
    const r = Number(row);
    const c = Number(col);
    if (!Number.isInteger(r) || !Number.isInteger(c) || r < 0 || c < 0 || r >= data.gh || c >= data.gw) {
      throw new Error("patch out of range: (" + row + ", " + col + ")");
    }
    state.patch = r * data.gw + c;
    return update();
  }

  function setOpacity(value) {
    state.opacity = qkvShared.clamp(Number(value), 0, 1);
    $("opacity").value = String(Math.round(state.opacity * 100));
    return draw();
  }

  function buildWords() {
    const box = $("words");
    box.replaceChildren();
    data.words.forEach((word, i) => {
      const span = document.createElement("span");
      span.className = "word";
      span.setAttribute("role", "listitem");
      span.textContent = word;
      span.addEventListener("mouseenter", () => {
        state.hoverWord = i;
        draw();
      });
      span.addEventListener("mouseleave", () => {
        state.hoverWord = null;
        draw();
      });
      span.addEventListener("click", () => setWord(i));
      box.appendChild(span);
    });
  }

  function wire() {
    $("layer").addEventListener("change", (e) => setLayer(e.target.value));
    $("head").addEventListener("change", (e) => setHead(e.target.value));
    $("opacity").addEventListener("input", (e) => setOpacity(Number(e.target.value) / 100));
    const canvas = $("image-canvas");
    canvas.addEventListener("mousemove", (e) => {
      const at = hit(e.clientX, e.clientY);
      if (at !== state.hoverPatch) {
        state.hoverPatch = at;
        draw();
      }
      const tip = $("tooltip");
      if (at === null) {
        tip.hidden = true;
        return;
      }
      tip.textContent = patchName(at) + ": " + fmt(shownMap()[at]) + " from " + data.words[shownWord()];
      tip.hidden = false;
      tip.style.left = e.clientX + 14 + "px";
      tip.style.top = e.clientY + 14 + "px";
    });
    canvas.addEventListener("mouseleave", () => {
      $("tooltip").hidden = true;
      state.hoverPatch = null;
      draw();
    });
    canvas.addEventListener("click", (e) => {
      const at = hit(e.clientX, e.clientY);
      if (at === null) return;
      state.patch = state.patch === at ? null : at; // click again to unpin
      update();
    });
  }

  // ---------------------------------------------------------------- test hook

  hook.state = () => ({
    layer: state.layer,
    head: state.head,
    word: state.word,
    shownWord: shownWord(),
    patch: state.patch,
    shownPatch: shownPatch(),
    opacity: state.opacity,
  });
  hook.setLayer = (l) => setLayer(l);
  hook.setHead = (h) => setHead(h);
  hook.setWord = (w) => setWord(w);
  hook.setPatch = (row, col) => setPatch(row, col);
  hook.setOpacity = (v) => setOpacity(v);
  hook.shownMap = () => Array.from(shownMap());
  hook.wordWeights = () => {
    const w = wordWeights();
    return w === null ? null : Array.from(w);
  };
  hook.weight = (layer, head, i, p) => data.values[((layer * data.heads + head) * data.n + i) * data.patches + p];
  hook.patchCenter = (row, col) => {
    const r = $("image-canvas").getBoundingClientRect();
    return { x: r.left + layout.pad + (col + 0.5) * layout.pw, y: r.top + layout.pad + (row + 0.5) * layout.ph };
  };
  hook.wordCenter = (i) => {
    const r = $("words").children[i].getBoundingClientRect();
    return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
  };

  // ---------------------------------------------------------------- start

  function init() {
    const payload = JSON.parse($("qkv-data").textContent);
    data = decode(payload);
    hook.timings.decode = performance.now() - started;
    $("qkv-title").textContent = data.title;
    document.title = data.title;
    // the last layer, the mean of its heads, the first word: what a captioner reports as a word's attention
    state = { layer: data.layers - 1, head: "all", word: 0, hoverWord: null, patch: null, hoverPatch: null, opacity: 0.6 };
    qkvShared.fillLayersAndHeads($("layer"), $("head"), data.layers, data.heads);
    $("crossmodal-hint").textContent =
      "Hover a word to lay its attention over the patches (click to keep it); hover a patch to colour " +
      "the words by the weight each gave it (click to keep it, click again to let go).";
    layout = qkvShared.patchLayout(data.height, data.width, data.gh, data.gw);
    buildWords();
    wire();
    update();
    hook.timings.firstDraw = performance.now() - started;
    hook.ready = true;
    document.documentElement.dataset.qkvReady = "1";
  }

  qkvShared.start(init, $("qkv-error"));
})();

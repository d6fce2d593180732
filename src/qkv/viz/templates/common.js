/* qkv viewers: what the attention viewer and the image viewer share. Plain ES2017, no network.
 *
 * qkvShared.LUT: viridis as a 256-entry RGB table; qkvShared.visible(text): bidirectional
 * control characters shown as <U+XXXX>, never applied; qkvShared.decode16(b64, lo, hi, per):
 * the 16-bit codes of consecutive matrices of `per` values, each over its own [lo[m], hi[m]];
 * qkvShared.fillSelect(select, items): a <select>'s options replaced by `[value, label]` pairs;
 * qkvShared.fillLayersAndHeads(layerSelect, headSelect, layers, heads): 0..layers-1 and
 * 0..heads-1 then "all"; qkvShared.svgElement(tag, attrs, parent): a new element of
 * parent's namespace (SVG under an <svg>) with those attributes, appended to parent; qkvShared.start(init, errorBox): init(), any error
 * shown in the box.
 *
 * What the image pages share (image.js, crossmodal.js): qkvShared.imageCanvas(img): the
 * payload's base64 pixels on an offscreen canvas, one canvas pixel per image pixel;
 * qkvShared.patchLayout(height, width, gh, gw): the picture's scale, padding and patch size in
 * CSS pixels; qkvShared.sizeImageCanvas(canvas, width, height): a crisp canvas of that CSS size;
 * qkvShared.paintHeat(canvas, values, gh, gw, range): one viridis pixel per patch;
 * qkvShared.drawPicture(ctx, layout, base, heat, opacity): the image, the heat over it, the grid;
 * qkvShared.outlinePatch(ctx, layout, row, col, colour, width); qkvShared.rangeOf(values): {lo:
 * min(0, min), hi}; qkvShared.drawColourBar(canvas, range, height).
 */
const qkvShared = (function () {
  "use strict";

  // viridis at 17 evenly spaced points, interpolated into a 256-entry table
  const VIRIDIS = [
    [68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
    [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128], [63, 188, 115],
    [94, 201, 98], [132, 212, 75], [173, 220, 48], [216, 226, 25], [253, 231, 37],
  ];
  // Unicode bidi controls (ALM, LRM, RLM, LRE..RLO, LRI..PDI): shown as <U+XXXX>, never applied,
  // so no token can reverse or reorder the text around it.
  const BIDI = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

  function buildLut() {
    const lut = new Uint8Array(256 * 3);
    const last = VIRIDIS.length - 1;
    for (let t = 0; t < 256; t++) {
      const x = (t / 255) * last;
      const a = Math.min(Math.floor(x), last - 1);
      const f = x - a;
      for (let c = 0; c < 3; c++) {
        lut[3 * t + c] = Math.round(VIRIDIS[a][c] * (1 - f) + VIRIDIS[a + 1][c] * f);
      }
    }
    return lut;
  }

  function visible(text) {
    return String(text).replace(
      BIDI,
      (c) => "\u27E8U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27E9"
    );
  }

  function decode16(b64, lo, hi, per) {
    const bin = atob(b64);
    const count = lo.length;
    if (bin.length !== 2 * per * count) {
      throw new Error("weight data has " + bin.length + " bytes, expected " + 2 * per * count);
    }
    const values = new Float32Array(per * count);
    for (let m = 0; m < count; m++) {
      const step = (hi[m] - lo[m]) / 65535;
      const base = m * per;
      for (let p = 0; p < per; p++) {
        const b = 2 * (base + p);
        values[base + p] = lo[m] + (bin.charCodeAt(b) | (bin.charCodeAt(b + 1) << 8)) * step;
      }
    }
    return values;
  }

  function fillSelect(select, items) {
    select.replaceChildren();
    for (const [value, label] of items) {
      const o = document.createElement("option");
      o.value = String(value);
      o.textContent = label;
      select.appendChild(o);
    }
  }

  function fillLayersAndHeads(layerSelect, headSelect, layers, heads) {
    const numbered = (n) => Array.from({ length: n }, (_, i) => [i, String(i)]);
    fillSelect(layerSelect, numbered(layers));
    fillSelect(headSelect, numbered(heads).concat([["all", "all"]]));
  }

  function svgElement(tag, attrs, parent) {
    const e = document.createElementNS(parent.namespaceURI, tag); // the parent's: SVG inside an <svg>
    for (const name of Object.keys(attrs)) e.setAttribute(name, String(attrs[name]));
    parent.appendChild(e);
    return e;
  }

  function start(init, errorBox) {
    try {
      init();
    } catch (err) {
      errorBox.hidden = false;
      errorBox.textContent = "qkv viewer: " + (err && err.message ? err.message : String(err));
      console.error(err);
    }
  }

  // ---------------------------------------------------------------- image pages

  function clamp(v, lo, hi) {
    return v < lo ? lo : v > hi ? hi : v;
  }

  function imageCanvas(img) {
    const bin = atob(img.pixels);
    const n = img.height * img.width;
    if (bin.length !== n * img.channels) {
      throw new Error("image data has " + bin.length + " bytes, expected " + n * img.channels);
    }
    const base = document.createElement("canvas");
    base.width = img.width;
    base.height = img.height;
    const ctx = base.getContext("2d");
    const out = ctx.createImageData(img.width, img.height);
    for (let p = 0; p < n; p++) {
      for (let c = 0; c < 3; c++) out.data[4 * p + c] = bin.charCodeAt(p * img.channels + (img.channels === 1 ? 0 : c));
      out.data[4 * p + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
    return base;
  }

  function patchLayout(height, width, gh, gw) {
    const scale = clamp(Math.floor(480 / Math.max(height, width)), 1, 32);
    const pad = 8;
    return {
      scale: scale,
      pad: pad,
      imageWidth: width,
      imageHeight: height,
      gh: gh,
      gw: gw,
      width: width * scale + 2 * pad,
      height: height * scale + 2 * pad,
      ph: (height / gh) * scale, // one patch, in CSS pixels
      pw: (width / gw) * scale,
    };
  }

  function sizeImageCanvas(canvas, width, height) {
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

  function paintHeat(canvas, m, gh, gw, range) {
    canvas.width = gw;
    canvas.height = gh;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(gw, gh);
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

  function drawPicture(ctx, L, base, heat, opacity) {
    const w = L.imageWidth * L.scale;
    const h = L.imageHeight * L.scale;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(base, 0, 0, L.imageWidth, L.imageHeight, L.pad, L.pad, w, h);
    ctx.globalAlpha = opacity;
    ctx.drawImage(heat, 0, 0, L.gw, L.gh, L.pad, L.pad, w, h);
    ctx.globalAlpha = 1;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.35)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let r = 0; r <= L.gh; r++) {
      const y = Math.round(L.pad + r * L.ph) + 0.5;
      ctx.moveTo(L.pad, y);
      ctx.lineTo(L.pad + w, y);
    }
    for (let c = 0; c <= L.gw; c++) {
      const x = Math.round(L.pad + c * L.pw) + 0.5;
      ctx.moveTo(x, L.pad);
      ctx.lineTo(x, L.pad + h);
    }
    ctx.stroke();
  }

  function outlinePatch(ctx, L, row, col, colour, width) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.strokeRect(L.pad + col * L.pw + width / 2, L.pad + row * L.ph + width / 2, L.pw - width, L.ph - width);
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

  function drawColourBar(canvas, range, height) {
    const h = Math.max(120, height);
    const ctx = sizeImageCanvas(canvas, 90, h + 16);
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

  const LUT = buildLut();

  return {
    LUT: LUT,
    visible: visible,
    decode16: decode16,
    fillSelect: fillSelect,
    fillLayersAndHeads: fillLayersAndHeads,
    svgElement: svgElement,
    start: start,
    clamp: clamp,
    imageCanvas: imageCanvas,
    patchLayout: patchLayout,
    sizeImageCanvas: sizeImageCanvas,
    paintHeat: paintHeat,
    drawPicture: drawPicture,
    outlinePatch: outlinePatch,
    rangeOf: rangeOf,
    drawColourBar: drawColourBar,
  };
})();

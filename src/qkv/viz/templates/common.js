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

  return {
    LUT: buildLut(),
    visible: visible,
    decode16: decode16,
    fillSelect: fillSelect,
    fillLayersAndHeads: fillLayersAndHeads,
    svgElement: svgElement,
    start: start,
  };
})();

/* qkv viewer: a dependency tree drawn as arcs above a sentence, in SVG. Plain ES2017, no network.
 *
 * qkvArcs.draw(svg, words, arcs): the words in a row and, above them, one arc per
 * {head, dep, rel} from the head to the dependent (an arrow at the dependent), its relation
 * written at the top; the root (head -1) gets a vertical arrow. An arc is taller the farther
 * apart its words are, so nested arcs never cross their labels. Each arc is a <g class="arc">
 * with data-rel, data-head and data-dep. qkvArcs.highlight(svg, rel): the arcs of `rel` get
 * class "on", the others "off" (rel null: none); returns how many are "on".
 * Words and labels reach the page only through textContent.
 */
const qkvArcs = (function () {
  "use strict";

  const FONT = "13px ui-monospace, Menlo, Consolas, monospace";
  const STEP = 16; // extra height per distinct arc length
  const SLOT = 46; // narrowest room per word (a label such as "nsubj" fits)

  function widths(words) {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = FONT;
    return words.map((w) => Math.max(SLOT, Math.ceil(ctx.measureText(w).width)) + 14);
  }

  function draw(svg, words, arcs) {
    const el = qkvShared.svgElement;
    svg.replaceChildren();
    const xs = [];
    let x = 10;
    for (const w of widths(words)) {
      xs.push(x + w / 2);
      x += w;
    }
    const spans = Array.from(new Set(arcs.filter((a) => a.head >= 0).map((a) => Math.abs(a.head - a.dep))));
    spans.sort((a, b) => a - b);
    const height = (a) => (a.head < 0 ? STEP * (spans.length + 2) : STEP * (spans.indexOf(Math.abs(a.head - a.dep)) + 2));
    const foot = STEP * (spans.length + 2) + 18; // y where the arcs meet the words
    for (const a of arcs) {
      const g = el("g", { class: "arc", "data-rel": a.rel, "data-head": a.head, "data-dep": a.dep }, svg);
      const xd = xs[a.dep];
      const h = height(a);
      let d = "M" + xd + " " + (foot - h) + " L" + xd + " " + foot; // the root: straight down
      let mid = xd;
      if (a.head >= 0) {
        const xh = xs[a.head] + (a.dep > a.head ? 4 : -4);
        const c = foot - (4 / 3) * h; // a cubic with both controls at c peaks at foot - h
        d = "M" + xh + " " + foot + " C" + xh + " " + c + " " + xd + " " + c + " " + xd + " " + foot;
        mid = (xh + xd) / 2;
      }
      el("path", { class: "arc-line", d: d }, g);
      el("path", { class: "arc-arrow", d: "M" + (xd - 4) + " " + (foot - 7) + " L" + xd + " " + foot + " L" + (xd + 4) + " " + (foot - 7) + " Z" }, g);
      el("text", { class: "arc-label", x: mid, y: foot - h - 4, "text-anchor": "middle" }, g).textContent = a.rel;
    }
    words.forEach((w, i) => {
      el("text", { class: "arc-word", x: xs[i], y: foot + 16, "text-anchor": "middle" }, svg).textContent = w;
    });
    svg.setAttribute("width", x + 10);
    svg.setAttribute("height", foot + 24);
  }

  function highlight(svg, rel) {
    let on = 0;
    for (const g of svg.querySelectorAll("g.arc")) {
      const mine = rel !== null && g.dataset.rel === rel;
      g.classList.toggle("on", mine);
      g.classList.toggle("off", rel !== null && !mine);
      if (mine) on += 1;
    }
    return on;
  }

  return { draw: draw, highlight: highlight };
})();

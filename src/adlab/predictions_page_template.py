"""HTML, CSS and JavaScript of the predictions page (:mod:`adlab.predictions_page`).

One self-contained file: no server, no network, no external script. ``__TITLE__`` is replaced
by the escaped page title and ``__DATA__`` by the JSON the page reads (``<`` escaped). Images are
relative links to thumbnail files (loaded lazily) and, in the viewer, to the full-size files.
"""

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 0; background: #eef0f2; color: #222; }
header { position: sticky; top: 0; z-index: 2; background: #fff; padding: 8px 16px;
  border-bottom: 1px solid #bbb; }
h1 { font-size: 16px; margin: 0 0 2px; }
#summary { color: #555; font-size: 12px; margin-bottom: 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-end; }
.axis { position: relative; width: 520px; }
#histogram { display: block; width: 520px; height: 96px; }
#slider { display: block; width: 520px; margin: 0; }
.numbers div { margin-top: 4px; }
#flagged-count { font-size: 18px; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr));
  gap: 10px; padding: 12px 16px; }
.card { background: #fff; border: 3px solid #7aa7d8; border-radius: 4px; cursor: pointer; }
.card.flagged { border-color: #d8322f; }
.card.wrong { outline: 3px dashed #f0a000; outline-offset: 1px; }
.card.hidden { display: none; }
.card img { display: block; width: 100%; aspect-ratio: 1; object-fit: contain;
  background: #222; }
.card .meta { padding: 3px 6px; font-size: 12px; overflow-wrap: anywhere; }
.card .score { font-weight: bold; }
.card .tag { float: right; color: #666; }
#viewer { position: fixed; inset: 0; z-index: 5; display: none; overflow: auto; color: #eee;
  background: #111; padding: 12px 16px; }
#viewer.open { display: block; }
#viewer .panes { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
  gap: 10px; margin-top: 8px; }
#viewer figure { margin: 0; }
#viewer figure img { display: block; width: 100%; max-height: 80vh; object-fit: contain;
  background: #333; }
#viewer figcaption { font-size: 12px; color: #aaa; }
#viewer button { margin-right: 6px; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div id="summary"></div>
  <div class="controls">
    <div class="axis">
      <svg id="histogram" viewBox="0 0 520 96" preserveAspectRatio="none"
        aria-label="histogram of image scores"></svg>
      <input id="slider" type="range" min="0" max="1000" step="1"
        aria-label="image threshold">
      <div class="legend" id="legend"></div>
    </div>
    <div class="numbers">
      <div>threshold <input id="threshold-input" type="number" step="any" size="12">
        <button id="reset" type="button"></button></div>
      <div>flagged <b id="flagged-count"></b> of <span id="total"></span>
        <span id="threshold-value" data-threshold=""></span></div>
      <div id="confusion"></div>
    </div>
    <div class="numbers">
      <div>sort <select id="sort">
        <option value="desc">score, highest first</option>
        <option value="asc">score, lowest first</option>
        <option value="name">name</option></select></div>
      <div>show <select id="show">
        <option value="all">all images</option>
        <option value="flagged">flagged only</option>
        <option value="normal">not flagged only</option>
        <option value="wrong">disagreeing with the label</option></select></div>
      <div>thumbnails <select id="thumbs">
        <option value="overlay">heat-map overlay</option>
        <option value="image">image</option></select></div>
    </div>
  </div>
</header>
<main id="grid"></main>
<div id="viewer" role="dialog" aria-modal="true">
  <div><button id="prev" type="button">&larr; previous</button>
    <button id="next" type="button">next &rarr;</button>
    <button id="close" type="button">close (Esc)</button> <b id="viewer-title"></b></div>
  <div class="panes" id="panes"></div>
</div>
<script id="page-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("page-data").textContent);
const items = D.items;
const STEPS = 1000, W = 520, H = 96, BINS = 40;
const labelled = items.some(d => d.label !== null);
const finite = [...items.map(d => d.score), D.threshold].filter(Number.isFinite);
let lo = finite.reduce((a, b) => Math.min(a, b)), hi = finite.reduce((a, b) => Math.max(a, b));
if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
const stored = Number.isFinite(D.threshold) ? D.threshold : null;
let threshold = stored !== null ? stored : (lo + hi) / 2;
let order = items.map((d, i) => i);
let current = -1;
const $ = id => document.getElementById(id);
const fmt = v => Number(v).toPrecision(4);
const x = t => (t - lo) / (hi - lo) * W;
const flagged = d => d.score >= threshold;
const wrong = d => d.label !== null && flagged(d) !== (d.label === 1);

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function drawHistogram() {
  const groups = labelled ? [["normal", 0, "#4a86c5"], ["anomalous", 1, "#d8322f"],
    ["unlabelled", null, "#999"]] : [["images", null, "#777"]];
  const counts = groups.map(() => new Array(BINS).fill(0));
  for (const d of items) {
    const b = Math.min(BINS - 1, Math.floor((d.score - lo) / (hi - lo) * BINS));
    counts[labelled ? groups.findIndex(g => g[1] === d.label) : 0][b] += 1;
  }
  const top = Math.max(1, ...counts[0].map((_, b) => counts.reduce((s, c) => s + c[b], 0)));
  const hist = $("histogram"), legend = $("legend");
  const base = new Array(BINS).fill(0);
  groups.forEach((g, k) => {
    if (!counts[k].some(c => c)) return;
    counts[k].forEach((c, b) => {
      if (!c) return;
      const h = c / top * (H - 6);
      base[b] += h;
      hist.appendChild(svg("rect", {x: b * W / BINS, y: H - base[b], width: W / BINS - 1,
        height: h, fill: g[2]}));
    });
    const key = document.createElement("span");
    key.style.background = g[2];
    legend.append(key, g[0] + " (" + counts[k].reduce((s, c) => s + c, 0) + ")");
  });
  hist.appendChild(svg("line", {id: "current-line", y1: 0, y2: H, stroke: "#000",
    "stroke-width": 2}));
  if (stored !== null) {
    hist.appendChild(svg("line", {x1: x(stored), x2: x(stored), y1: 0, y2: H,
      stroke: "#1a9a3a", "stroke-width": 3, "stroke-dasharray": "6 4"}));
    const key = document.createElement("span");
    key.style.background = "#1a9a3a";
    legend.append(key, "F1-optimal threshold " + fmt(stored) + " (" + D.threshold_note + ")");
  }
}

function card(d, i) {
  const el = document.createElement("div");
  el.className = "card";
  el.dataset.index = i;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = d.name;
  img.src = d.overlay_thumbnail;
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = fmt(d.score);
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = d.label === null ? "" : (d.defect_type || (d.label ? "anomalous" : "good"));
  const name = document.createElement("div");
  name.textContent = d.name;
  meta.append(score, tag, name);
  el.append(img, meta);
  el.addEventListener("click", () => openViewer(i));
  return el;
}

const cards = items.map(card);

function relabel() {
  let n = 0, tp = 0, fp = 0, fn = 0;
  const show = $("show").value;
  items.forEach((d, i) => {
    const f = flagged(d), w = wrong(d);
    n += f;
    if (d.label !== null) { tp += f && d.label === 1; fp += f && d.label === 0;
      fn += !f && d.label === 1; }
    const c = cards[i];
    c.classList.toggle("flagged", f);
    c.classList.toggle("wrong", w);
    c.classList.toggle("hidden", (show === "flagged" && !f) || (show === "normal" && f) ||
      (show === "wrong" && !w));
  });
  $("flagged-count").textContent = n;
  const value = $("threshold-value");
  value.dataset.threshold = String(threshold);
  value.textContent = "(score \u2265 " + fmt(threshold) + ")";
  const line = $("current-line");
  line.setAttribute("x1", x(threshold));
  line.setAttribute("x2", x(threshold));
  if (labelled) {
    const f1 = tp ? 2 * tp / (2 * tp + fp + fn) : 0;
    $("confusion").textContent = "TP " + tp + "  FP " + fp + "  FN " + fn +
      "  F1 " + f1.toFixed(3);
  }
}

function setThreshold(t, fromSlider) {
  threshold = t;
  if (!fromSlider) $("slider").value = Math.round((t - lo) / (hi - lo) * STEPS);
  $("threshold-input").value = String(t);
  relabel();
}

function sortCards() {
  const how = $("sort").value;
  order = items.map((d, i) => i);
  if (how === "name") order.sort((a, b) => items[a].name.localeCompare(items[b].name));
  else order.sort((a, b) => how === "asc" ? items[a].score - items[b].score
    : items[b].score - items[a].score);
  $("grid").replaceChildren(...order.map(i => cards[i]));
}

function pane(caption, src) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

function openViewer(i) {
  current = i;
  const d = items[i];
  const truth = d.label === null ? "" : "; label " + (d.defect_type || d.label);
  $("viewer-title").textContent = d.name + ": score " + fmt(d.score) + ", " +
    (flagged(d) ? "flagged" : "not flagged") + truth;
  const panes = [pane("image", d.image), pane("heat map", d.overlay),
    pane("predicted mask", d.mask)];
  if (d.gt_mask) panes.push(pane("ground-truth mask", d.gt_mask));
  $("panes").replaceChildren(...panes);
  $("viewer").classList.add("open");
}

function step(delta) {
  const visible = order.filter(i => !cards[i].classList.contains("hidden"));
  const k = visible.indexOf(current);
  if (visible.length) openViewer(visible[(k + delta + visible.length) % visible.length]);
}

$("title").textContent = D.title;
$("summary").textContent = D.summary;
$("total").textContent = items.length;
$("reset").textContent = stored !== null ? "F1-optimal (" + fmt(stored) + ")" : "middle";
$("slider").addEventListener("input", e => setThreshold(lo + (hi - lo) * e.target.value / STEPS,
  true));
$("threshold-input").addEventListener("change", e => {
  const t = parseFloat(e.target.value);
  if (Number.isFinite(t)) setThreshold(t, false);
});
$("reset").addEventListener("click", () => setThreshold(stored !== null ? stored
  : (lo + hi) / 2, false));
$("sort").addEventListener("change", sortCards);
$("show").addEventListener("change", relabel);
$("thumbs").addEventListener("change", e => items.forEach((d, i) => {
  cards[i].firstChild.src = e.target.value === "image" ? d.thumbnail : d.overlay_thumbnail;
}));
$("close").addEventListener("click", () => $("viewer").classList.remove("open"));
$("prev").addEventListener("click", () => step(-1));
$("next").addEventListener("click", () => step(1));
document.addEventListener("keydown", e => {
  if (!$("viewer").classList.contains("open")) return;
  if (e.key === "Escape") $("viewer").classList.remove("open");
  if (e.key === "ArrowLeft") step(-1);
  if (e.key === "ArrowRight") step(1);
});
if (!labelled) $("show").querySelector("[value=wrong]").remove();
drawHistogram();
sortCards();
setThreshold(threshold, false);
</script>
</body>
</html>
"""

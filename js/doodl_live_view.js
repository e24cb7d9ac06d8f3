// DOODL live optimization view for ComfyUI's web frontend (served through WEB_DIRECTORY = "./js").
//
// On every "DOODL Optimize" node it adds a panel that follows the run while it happens:
//   * the loss curve (loss per iteration, best-so-far line, best iterate circled) and, when DOODL
//     Optimize has a held-out `monitor` scorer, its loss as a second curve on its own right-hand axis
//     (orange): the monitor is never optimized, so a monitor curve that rises while the loss falls is
//     reward hacking made visible,
//   * the current decoded iterate (ComfyUI's per-iteration JPEG preview of that node),
//   * a status line (iteration i/N, loss, best loss, scores) and, at the end, the summary
//     (best iterate, best loss and the scorer's scores at that iterate, status, warnings).
//
// Data sources, all sent by the Python side only while a ComfyUI server runs:
//   "doodl.iteration"          {iteration, iterations, loss, best_loss, grad_norm, scores, node,
//                               monitor?: {loss, scores}}
//   "doodl.done"               {losses, best_iteration, best_loss, final_loss, status, warnings, scores, node,
//                               monitor?: {name, losses, scores}}  (monitor: one entry per iterate, final included)
//   "b_preview_with_metadata"  the ProgressBar preview image, with the id of the node it belongs to
//   "executed"                 the node's ui output {doodl_losses, doodl_summary, doodl_monitor?} (also cached runs)
//
// Plain ES module, no dependencies: only the app/api objects the frontend provides.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "doodl.LiveView";
const NODE_TYPE = "DOODLOptimize";
const WIDGET = "doodl_live_view";
const VIEW_HEIGHT = 330;
const LOSS_COLOR = "#6f9cff";
const MONITOR_COLOR = "#ffb45e";

const STYLE = `
.doodl-live { box-sizing: border-box; display: flex; flex-direction: column; gap: 4px; padding: 4px 6px;
  font: 11px/1.35 ui-monospace, Menlo, Consolas, monospace; color: #ddd; background: #1b1b1f;
  border: 1px solid #3a3a44; border-radius: 6px; overflow: hidden; height: 100%; }
.doodl-live .doodl-status { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: #cfd8ff; }
.doodl-live .doodl-body { display: flex; gap: 6px; flex: 1 1 auto; min-height: 0; }
.doodl-live .doodl-curve-box { flex: 1 1 60%; min-width: 0; position: relative; }
.doodl-live canvas.doodl-curve { position: absolute; inset: 0; width: 100%; height: 100%;
  background: #111116; border-radius: 4px; }
.doodl-live .doodl-preview { flex: 0 0 40%; display: flex; align-items: center; justify-content: center;
  background: #111116; border-radius: 4px; min-width: 0; overflow: hidden; }
.doodl-live .doodl-preview img { max-width: 100%; max-height: 100%; object-fit: contain; image-rendering: auto; }
.doodl-live .doodl-preview span { color: #777; padding: 4px; text-align: center; }
.doodl-live .doodl-summary { white-space: pre-wrap; color: #bfe3bf; max-height: 7em; overflow: auto; }
.doodl-live .doodl-summary.doodl-warn { color: #f0d080; }
`;

function addStyle() {
  if (document.getElementById("doodl-live-style")) return;
  const el = document.createElement("style");
  el.id = "doodl-live-style";
  el.textContent = STYLE;
  document.head.appendChild(el);
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(3) : v.toFixed(4);
}

function fmtScores(scores) {
  if (!scores) return "";
  return Object.entries(scores).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
}

class LiveView {
  constructor(node) {
    this.node = node;
    this.root = document.createElement("div");
    this.root.className = "doodl-live";
    this.status = document.createElement("div");
    this.status.className = "doodl-status";
    const body = document.createElement("div");
    body.className = "doodl-body";
    const curveBox = document.createElement("div");
    curveBox.className = "doodl-curve-box";
    this.canvas = document.createElement("canvas");
    this.canvas.className = "doodl-curve";
    curveBox.append(this.canvas);
    this.previewBox = document.createElement("div");
    this.previewBox.className = "doodl-preview";
    this.img = document.createElement("img");
    this.img.alt = "current DOODL iterate";
    this.placeholder = document.createElement("span");
    this.placeholder.textContent = "preview of the current iterate";
    this.previewBox.append(this.placeholder);
    body.append(curveBox, this.previewBox);
    this.summary = document.createElement("div");
    this.summary.className = "doodl-summary";
    this.root.append(this.status, body, this.summary);
    this.previewUrl = null;
    this.previews = 0;
    this.reset();
    if (typeof ResizeObserver !== "undefined") {
      // the canvas is absolutely positioned, so redrawing it never changes the observed layout
      this.resizer = new ResizeObserver(() => {
        if (this.drawPending) return;
        this.drawPending = true;
        requestAnimationFrame(() => { this.drawPending = false; this.draw(); });
      });
      this.resizer.observe(curveBox);
    }
  }

  reset(iterations = null) {
    this.losses = [];       // loss per iteration, in arrival order (index = iteration)
    this.scores = [];       // scores per iteration
    this.monitorLosses = []; // the held-out monitor's loss per iterate (the final iterate last), if any
    this.monitorScores = [];
    this.monitorName = null;
    this.iterations = iterations;
    this.best = null;       // {iteration, loss}
    this.finalLoss = null;
    this.state = "idle";
    this.setStatus("DOODL live view: waiting for a run");
    this.summary.textContent = "";
    this.summary.classList.remove("doodl-warn");
    this.sync();
    this.draw();
  }

  setStatus(text) {
    this.status.textContent = text;
    this.status.title = text;
  }

  sync() { // state for tests and styling, on the element itself
    const d = this.root.dataset;
    d.node = String(this.node.id);
    d.state = this.state;
    d.points = String(this.losses.length);
    d.monitorPoints = String(this.monitorLosses.filter((v) => v !== undefined && v !== null).length);
    d.previews = String(this.previews);
    d.bestIteration = this.best ? String(this.best.iteration) : "";
  }

  start() {
    this.reset();
    this.state = "running";
    this.setStatus("DOODL: starting (first iteration = forward + backward through the whole chain)");
    this.sync();
  }

  onIteration(d) {
    if (this.state !== "running" || d.iteration === 0 && this.losses.length > 0) this.start();
    this.iterations = d.iterations;
    this.losses[d.iteration] = d.loss;
    this.scores[d.iteration] = d.scores || {};
    if (this.best === null || (Number.isFinite(d.loss) && d.loss < this.best.loss)) {
      this.best = { iteration: d.iteration, loss: d.loss };
    }
    if (d.monitor) {
      this.monitorLosses[d.iteration] = d.monitor.loss;
      this.monitorScores[d.iteration] = d.monitor.scores || {};
    }
    const s = fmtScores(d.scores);
    const m = d.monitor ? `  monitor ${fmt(d.monitor.loss)}` : "";
    this.setStatus(`iteration ${d.iteration + 1}/${d.iterations}  loss ${fmt(d.loss)}  best ${fmt(d.best_loss)}` +
                   `  |grad| ${fmt(d.grad_norm)}${m}${s ? "  " + s : ""}`);
    this.sync();
    this.draw();
  }

  onPreview(blob) {
    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = URL.createObjectURL(blob);
    this.img.src = this.previewUrl;
    if (!this.img.isConnected) this.previewBox.replaceChildren(this.img);
    this.previews += 1;
    this.sync();
  }

  finish(losses, summary, monitorLosses) {
    if (Array.isArray(losses) && losses.length >= this.losses.filter((v) => v !== undefined).length) {
      this.losses = losses.slice();
    }
    const s = summary || {};
    // the monitor: the full history from "doodl.done", or its losses from the "executed" ui output
    const mon = s.monitor;
    if (mon && Array.isArray(mon.losses)) {
      this.monitorLosses = mon.losses.slice();
      if (Array.isArray(mon.scores)) this.monitorScores = mon.scores.slice();
    } else if (Array.isArray(monitorLosses)) {
      this.monitorLosses = monitorLosses.slice();
    }
    if (mon && mon.name) this.monitorName = mon.name;
    if (s.final_loss !== undefined) this.finalLoss = s.final_loss; // "executed" carries no final loss
    const bi = s.best_iteration;
    if (bi !== undefined && bi !== null) {
      const loss = s.best_loss ?? (bi < this.losses.length ? this.losses[bi] : this.finalLoss);
      this.best = { iteration: bi, loss };
    }
    this.state = "done";
    const n = this.losses.length;
    const where = this.best === null ? "n/a"
      : this.best.iteration === 0 ? "0 (the start)"
      : this.best.iteration >= n ? `${this.best.iteration} (the final iterate)` : String(this.best.iteration);
    const lines = [`${s.status || "done"}: best iterate ${where} of 0..${n}, loss ${fmt(this.best ? this.best.loss : null)}`];
    const monitorLine = this.monitorSummary(s.monitor);  // second: where reward hacking shows
    if (monitorLine) lines.push(monitorLine);
    const bestScores = this.best && this.scores[this.best.iteration];
    if (bestScores && Object.keys(bestScores).length) lines.push(`scores there: ${fmtScores(bestScores)}`);
    else if (s.scores && Object.keys(s.scores).length) lines.push(`last scores: ${fmtScores(s.scores)}`);
    const warnings = s.warnings || [];
    for (const w of warnings) lines.push(`warning: ${w}`);
    this.summary.textContent = lines.join("\n");
    this.summary.classList.toggle("doodl-warn", warnings.length > 0 || (s.status && s.status !== "completed"));
    this.setStatus(`DOODL ${s.status || "done"}: ${n} iteration${n === 1 ? "" : "s"}`);
    this.sync();
    this.draw();
  }

  monitorSummary(mon) {
    // "monitor NAME: loss start -> at best -> last"; the scores at the best iterate when known
    const ml = this.monitorLosses;
    if (!ml.length) return "";
    const name = this.monitorName || mon?.name || "held-out scorer";
    const bi = this.best ? this.best.iteration : null;
    const atBest = mon?.best?.loss ?? (bi !== null && bi < ml.length ? ml[bi] : null);
    const last = mon?.last?.loss ?? ml[ml.length - 1];
    const scores = mon?.best?.scores ?? (bi !== null ? this.monitorScores[bi] : null);
    const worse = Number.isFinite(atBest) && Number.isFinite(ml[0]) && atBest > ml[0] ? "  (worse than at the start)" : "";
    return `monitor ${name}: loss ${fmt(ml[0])} at the start, ${fmt(atBest)} at the best iterate, ${fmt(last)} last${worse}` +
           (scores && Object.keys(scores).length ? `; scores there: ${fmtScores(scores)}` : "");
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(40, Math.floor(c.clientWidth || 240));
    const h = Math.max(40, Math.floor(c.clientHeight || 160));
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "10px ui-monospace, monospace";
    ctx.fillStyle = "#8a8aa0";
    const pts = [];
    this.losses.forEach((v, i) => { if (Number.isFinite(v)) pts.push([i, v]); });
    if (this.finalLoss !== null && Number.isFinite(this.finalLoss)) pts.push([this.losses.length, this.finalLoss]);
    const mpts = [];
    this.monitorLosses.forEach((v, i) => { if (Number.isFinite(v)) mpts.push([i, v]); });
    if (!pts.length) {
      ctx.fillText("loss per iteration", 8, 14);
      return;
    }
    let lo = Math.min(...pts.map((p) => p[1]));
    let hi = Math.max(...pts.map((p) => p[1]));
    if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
    const L = 44, R = w - (mpts.length ? 44 : 8), T = 14, B = h - 16;
    const nmax = Math.max(1, (this.iterations ?? 0), pts[pts.length - 1][0], mpts.length ? mpts[mpts.length - 1][0] : 0);
    const X = (i) => L + (R - L) * i / nmax;
    const Y = (v) => B - (B - T) * (v - lo) / (hi - lo);
    ctx.strokeStyle = "#3a3a48";
    ctx.strokeRect(L, T, R - L, B - T);
    ctx.fillText(fmt(hi), 2, T + 4);
    ctx.fillText(fmt(lo), 2, B);
    ctx.fillText("0", L, h - 4);
    ctx.fillText(String(nmax), R - 16, h - 4);
    ctx.fillStyle = LOSS_COLOR;
    ctx.fillText("loss", L + 4, T - 3);
    ctx.fillStyle = "#8a8aa0";
    // best-so-far (dashed)
    ctx.setLineDash([3, 3]);
    ctx.strokeStyle = "#5fbf7f";
    ctx.beginPath();
    let run = Infinity;
    pts.forEach(([i, v], k) => { run = Math.min(run, v); if (k) ctx.lineTo(X(i), Y(run)); else ctx.moveTo(X(i), Y(run)); });
    ctx.stroke();
    ctx.setLineDash([]);
    // the held-out monitor: its own scale on the right-hand axis, drawn under the loss
    if (mpts.length) this.drawMonitor(ctx, mpts, X, R, T, B);
    // loss
    ctx.strokeStyle = LOSS_COLOR;
    ctx.fillStyle = LOSS_COLOR;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    pts.forEach(([i, v], k) => (k ? ctx.lineTo(X(i), Y(v)) : ctx.moveTo(X(i), Y(v))));
    ctx.stroke();
    for (const [i, v] of pts) { ctx.beginPath(); ctx.arc(X(i), Y(v), 2, 0, 2 * Math.PI); ctx.fill(); }
    if (this.best && Number.isFinite(this.best.loss)) {
      ctx.strokeStyle = "#ff6b6b";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(X(this.best.iteration), Y(this.best.loss), 5, 0, 2 * Math.PI);
      ctx.stroke();
    }
    ctx.lineWidth = 1;
  }

  drawMonitor(ctx, mpts, X, R, T, B) {
    let lo = Math.min(...mpts.map((p) => p[1]));
    let hi = Math.max(...mpts.map((p) => p[1]));
    if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
    const Y = (v) => B - (B - T) * (v - lo) / (hi - lo);
    ctx.fillStyle = MONITOR_COLOR;
    ctx.fillText(fmt(hi), R + 3, T + 4);
    ctx.fillText(fmt(lo), R + 3, B);
    // the label, right-aligned over the monitor's axis, cut to the room the "loss" label leaves
    let label = `monitor${this.monitorName ? ": " + this.monitorName : ""}`;
    const room = R + 40 - (X(0) + 40);
    while (label.length > 8 && ctx.measureText(label).width > room) label = label.slice(0, -2) + "…";
    ctx.textAlign = "right";
    ctx.fillText(label, R + 40, T - 3);
    ctx.textAlign = "left";
    ctx.strokeStyle = MONITOR_COLOR;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([5, 3]);
    ctx.beginPath();
    mpts.forEach(([i, v], k) => (k ? ctx.lineTo(X(i), Y(v)) : ctx.moveTo(X(i), Y(v))));
    ctx.stroke();
    ctx.setLineDash([]);
    for (const [i, v] of mpts) { ctx.fillRect(X(i) - 2, Y(v) - 2, 4, 4); }
    ctx.lineWidth = 1;
  }

  dispose() {
    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.resizer?.disconnect();
  }
}

function viewFor(id) {
  // Execution ids are node ids; nodes inside subgraphs report "outer:inner" paths.
  if (id === null || id === undefined) return undefined;
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById?.(part) ?? graph?.getNodeById?.(Number(part));
    if (!node) return undefined;
    graph = node.subgraph ?? graph;
  }
  return node?.doodlLiveView;
}

let executingNode = null;

app.registerExtension({
  name: EXTENSION,

  async setup() {
    addStyle();
    api.addEventListener("doodl.iteration", ({ detail }) => viewFor(detail?.node)?.onIteration(detail));
    api.addEventListener("doodl.done", ({ detail }) => viewFor(detail?.node)?.finish(detail.losses, detail));
    api.addEventListener("executing", ({ detail }) => {
      executingNode = detail ?? null;
      viewFor(detail)?.start();
    });
    let withMetadata = false;
    api.addEventListener("b_preview_with_metadata", ({ detail }) => {
      withMetadata = true;
      viewFor(detail?.displayNodeId ?? detail?.nodeId)?.onPreview(detail.blob);
    });
    api.addEventListener("b_preview", ({ detail }) => { // servers without preview metadata
      if (!withMetadata && detail instanceof Blob) viewFor(executingNode)?.onPreview(detail);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const view = new LiveView(this);
      const widget = this.addDOMWidget(WIDGET, "doodl_live_view", view.root, {
        serialize: false, // not a setting: never in the workflow file nor in the prompt
        hideOnZoom: false,
        getValue: () => "",
        setValue: () => {},
        getMinHeight: () => VIEW_HEIGHT,
        getMaxHeight: () => VIEW_HEIGHT,
      });
      widget.serialize = false;
      this.doodlLiveView = view;
      const [w, h] = this.size;
      this.setSize?.([Math.max(w, 420), h]);
      return r;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.doodlLiveView?.dispose();
      return onRemoved?.apply(this, arguments);
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      const summary = output?.doodl_summary?.[0];
      if (summary) this.doodlLiveView?.finish(output.doodl_losses, summary, output.doodl_monitor);
      return r;
    };
  },
});

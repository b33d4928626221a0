// The "cache-dit" bottom panel: per-step cache decisions, live while a job runs and for finished jobs.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { cellTitle, counts, grid, sparkline } from "./trace_view.js";

const live = new Map(); // prompt_id -> {steps, records} of jobs seen over the websocket
let root = null;
let selected = null;

const style = `
.cdp { font: 12px sans-serif; color: var(--fg-color, #ddd); padding: 6px; overflow: auto; height: 100%; }
.cdp select { margin-right: 8px; }
.cdp table { border-collapse: collapse; margin-top: 6px; }
.cdp td { padding: 0; }
.cdp .label { padding-right: 8px; white-space: nowrap; }
.cdp .cell { width: 12px; height: 16px; border: 1px solid #222; }
.cdp .compute { background: #3465a4; }
.cdp .cache { background: #f57900; }
.cdp .disagree { outline: 2px solid red; }
.cdp .legend span { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; }
.cdp svg { display: block; }
`;

async function fetchJson(path) {
  const response = await api.fetchApi(path);
  return response.ok ? response.json() : null;
}

async function jobs() {
  const finished = (await fetchJson("/cachedit/traces")) || [];
  const ids = finished.map((j) => j.prompt_id);
  for (const id of live.keys()) if (!ids.includes(id)) ids.unshift(id);
  return ids;
}

async function traceOf(id) {
  if (live.has(id) && !live.get(id).done) return live.get(id);
  const record = await fetchJson(`/cachedit/traces/${encodeURIComponent(id)}`);
  return record ? { steps: record.trace.steps, records: record.trace.records, done: true } : live.get(id);
}

function renderGrid(container, trace) {
  const table = document.createElement("table");
  for (const { row, cells } of grid(trace.records, trace.steps)) {
    const tr = table.insertRow();
    const label = tr.insertCell();
    label.className = "label";
    label.textContent = row;
    for (const record of cells) {
      const td = tr.insertCell();
      td.className = "cell" + (record ? ` ${record.decision}` : "") + (record && record.ranks_agreed === false ? " disagree" : "");
      if (record) td.title = cellTitle(record);
    }
    const spark = tr.insertCell();
    const { points, threshold } = sparkline(cells, 160, 16);
    spark.innerHTML = `<svg width="160" height="16"><polyline fill="none" stroke="#8ae234" points="${points}"/>` +
      (threshold === null ? "" : `<line x1="0" x2="160" y1="${threshold}" y2="${threshold}" stroke="#ef2929"/>`) + "</svg>";
    spark.title = "residual diff per step (green) against the threshold (red)";
  }
  container.appendChild(table);
}

function renderSummary(container, trace) {
  const c = counts(trace.records);
  const parts = Object.entries(c.rows).map(([row, n]) => `${row}: ${n.compute} compute, ${n.cache} cache`);
  const summary = document.createElement("div");
  summary.className = "summary";
  summary.textContent = `${parts.join(" | ")} — ${c.computed} of ${c.forwards} forwards computed` +
    (c.speedup ? `, ${c.speedup.toFixed(2)}x fewer full forwards` : "") +
    (trace.done ? "" : ` (running: step ${Math.max(-1, ...trace.records.map((r) => r.step)) + 1} of ${trace.steps})`) +
    (c.agreed ? "" : " — RANKS DISAGREED");
  container.appendChild(summary);
}

async function render() {
  if (!root) return;
  const ids = await jobs();
  if (!selected || !ids.includes(selected)) selected = ids[0] || null;
  root.innerHTML = "";
  const bar = document.createElement("div");
  const select = document.createElement("select");
  for (const id of ids) select.add(new Option(id, id, false, id === selected));
  select.onchange = () => { selected = select.value; render(); };
  bar.appendChild(select);
  bar.insertAdjacentHTML("beforeend", '<span class="legend"><span class="compute"></span>compute<span class="cache"></span>cache</span>');
  root.appendChild(bar);
  if (!selected) {
    root.insertAdjacentHTML("beforeend", "<p>No cache-dit job yet: run a workflow with the Ulysses Parallel Sampler.</p>");
    return;
  }
  const trace = await traceOf(selected);
  if (!trace) return;
  renderSummary(root, trace);
  renderGrid(root, trace);
}

api.addEventListener("cachedit.step", ({ detail }) => {
  const job = live.get(detail.prompt_id) || { steps: detail.steps, records: [], done: false };
  job.records.push(...detail.records);
  live.set(detail.prompt_id, job);
  selected = detail.prompt_id;
  render();
});

api.addEventListener("cachedit.done", ({ detail }) => {
  const job = live.get(detail.prompt_id);
  if (job) job.done = true;
  render();
});

app.registerExtension({
  name: "cachedit.parallel.panel",
  bottomPanelTabs: [{
    id: "cachedit-decisions",
    title: "cache-dit",
    type: "custom",
    render: (element) => {
      element.innerHTML = `<style>${style}</style>`;
      root = document.createElement("div");
      root.className = "cdp";
      element.appendChild(root);
      render();
    },
    destroy: () => { root = null; },
  }],
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "SCMMask") return;
    // Show the mask string and its counts in the node once it has run.
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text?.[0];
      if (!text) return;
      let widget = this.widgets?.find((w) => w.name === "mask_view");
      if (!widget) {
        widget = this.addWidget("text", "mask_view", "", () => {}, { serialize: false });
      }
      widget.value = text.replace("\n", "  ");
      this.setDirtySize?.(true);
      app.graph.setDirtyCanvas(true, true);
    };
  },
});

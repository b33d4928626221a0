// The "cache-dit" bottom panel: per-step cache decisions, live while a job runs and for finished jobs.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";
import { cellTitle, counts, grid, sparkline } from "./trace_view.js";

const live = new Map(); // prompt_id -> {steps, records} of jobs seen over the websocket
let root = null;
let selected = null;
let generation = 0; // renders overlap (one per step event); only the latest one draws
let finished = null; // ids of finished jobs on the server; fetched when the panel opens and after each job

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
.cdp-tip { position: fixed; z-index: 10000; display: none; pointer-events: none; white-space: nowrap;
  font: 12px sans-serif; background: #111; color: #eee; border: 1px solid #666; padding: 3px 6px; }
`;

async function fetchJson(path) {
  const response = await api.fetchApi(path);
  return response.ok ? response.json() : null;
}

async function jobs(refresh) {
  if (refresh || finished === null) finished = ((await fetchJson("/cachedit/traces")) || []).map((j) => j.prompt_id);
  const ids = [...finished];
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
      if (record) td.dataset.tip = cellTitle(record);
    }
    const spark = tr.insertCell();
    const { points, threshold } = sparkline(cells, 160, 16);
    spark.innerHTML = `<svg width="160" height="16"><polyline fill="none" stroke="#8ae234" points="${points}"/>` +
      (threshold === null ? "" : `<line x1="0" x2="160" y1="${threshold}" y2="${threshold}" stroke="#ef2929"/>`) + "</svg>";
    spark.dataset.tip = "residual diff per step (green) against the threshold (red)";
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

// refresh: fetch the finished jobs again (not on each step of a running job: its records come live)
async function render(refresh = true) {
  if (!root) return;
  const mine = ++generation;
  const ids = await jobs(refresh);
  if (!selected || !ids.includes(selected)) selected = ids[0] || null;
  const trace = selected ? await traceOf(selected) : null;
  if (mine !== generation || !root) return;
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
  if (!trace) return;
  renderSummary(root, trace);
  renderGrid(root, trace);
}

api.addEventListener("cachedit.step", ({ detail }) => {
  const job = live.get(detail.prompt_id) || { steps: detail.steps, records: [], done: false };
  job.records.push(...detail.records);
  live.set(detail.prompt_id, job);
  selected = detail.prompt_id;
  render(false);
});

// A cached SCM Mask node does not run again, so no "executed" message brings its text; the
// prompt's history still has it.
api.addEventListener("execution_success", async ({ detail }) => {
  const history = await fetchJson(`/history/${encodeURIComponent(detail.prompt_id)}`);
  for (const [id, output] of Object.entries(history?.[detail.prompt_id]?.outputs || {})) {
    const node = app.graph?.getNodeById(id);
    if (node?.type === "CacheDiT_SCMMask" && output.text) node.onExecuted(output);
  }
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
      const tip = document.createElement("div"); // a tooltip of our own: quicker than title, and in screenshots
      tip.className = "cdp-tip";
      element.appendChild(tip);
      root.onmousemove = (event) => {
        const text = event.target.closest?.("[data-tip]")?.dataset.tip;
        tip.style.display = text ? "block" : "none";
        if (!text) return;
        tip.textContent = text;
        const x = Math.min(event.clientX + 12, window.innerWidth - tip.offsetWidth - 4);
        tip.style.left = `${x}px`;
        tip.style.top = `${event.clientY - tip.offsetHeight - 8}px`;
      };
      root.onmouseleave = () => { tip.style.display = "none"; };
      render();
    },
    destroy: () => { root = null; },
  }],
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "CacheDiT_SCMMask") return;
    // Show the mask string and its counts in the node once it has run.
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text?.[0];
      if (!text) return;
      let widget = this.widgets?.find((w) => w.name === "mask_view");
      if (!widget) {
        widget = ComfyWidgets.STRING(this, "mask_view", ["STRING", { multiline: true }], app).widget;
        widget.element.readOnly = true;
        widget.options.serialize = false; // not an input of the prompt
        widget.serialize = false; // nor in the saved workflow
      }
      widget.value = text;
      this.setSize([Math.max(this.size[0], 360), Math.max(this.size[1], this.computeSize()[1] + 50)]);
      app.graph.setDirtyCanvas(true, true);
    };
  },
});

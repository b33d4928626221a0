// The cache-dit panel in a real browser: load smoke_api.json into ComfyUI's page, queue it from the UI,
// open the "cache-dit" bottom panel tab and check its rows, cells and summary, and that the SCM Mask
// node shows its mask. With a folder as 3rd argument it also writes panel.png and workflow.png there.
//
//   NODE_PATH=/path/to/node_modules node tests/integration/panel_screenshot.mjs http://127.0.0.1:8188 [seed] [dir]
//
// Exit status 77 (skip) when playwright-core or Chromium is not installed (CHROMIUM names the browser).
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";

const [url = "http://127.0.0.1:8188", seed = String(Date.now() % 100000), shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
let chromium;
try {
  ({ chromium } = createRequire(import.meta.url)("playwright-core"));
} catch {
  console.log("SKIP: playwright-core not found (set NODE_PATH to a node_modules that has it)");
  process.exit(77);
}
if (!existsSync(executablePath)) {
  console.log(`SKIP: no Chromium at ${executablePath}`);
  process.exit(77);
}

const workflow = JSON.parse(readFileSync(new URL("../../examples/workflows/smoke_api.json", import.meta.url)));
workflow["7"].inputs.seed = Number(seed); // a new seed, so that ComfyUI runs the sampler instead of its cache

const browser = await chromium.launch({
  executablePath, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  await page.goto(url, { waitUntil: "networkidle" });
  await page.waitForFunction(() => window.app?.graph && window.app.extensionManager, null, { timeout: 60000 });
  await page.keyboard.press("Escape");
  const outcome = await page.evaluate(async (wf) => {
    const { app } = window;
    const settings = { "LiteGraph.Canvas.MinFontSizeForLOD": 1, "Comfy.Graph.CanvasInfo": false, "Comfy.Minimap.Visible": false };
    for (const [id, value] of Object.entries(settings)) await app.extensionManager.setting.set(id, value).catch(() => {});
    await app.loadApiJson(wf, "smoke");
    for (const node of app.graph.nodes) for (const w of node.widgets || []) if (w.name === "control_after_generate") w.value = "fixed";
    app.graph.arrange(60);
    await app.extensionManager.command.execute("Workspace.ToggleBottomPanelTab.cachedit-decisions"); // live, while it runs
    const done = new Promise((resolve) => {
      for (const kind of ["execution_success", "execution_error", "execution_interrupted"])
        app.api.addEventListener(kind, () => resolve(kind));
    });
    await app.queuePrompt(0);
    return done;
  }, workflow);
  if (outcome !== "execution_success") throw new Error(`the prompt ended with ${outcome}`);
  await page.waitForFunction(() => /of 40 forwards computed/.test(document.querySelector(".cdp .summary")?.textContent)
    && !/running/.test(document.querySelector(".cdp .summary").textContent), null, { timeout: 20000 });
  const panel = await page.evaluate(() => ({
    rows: [...document.querySelectorAll(".cdp table tr")].map((tr) => tr.cells[0].textContent),
    compute: document.querySelectorAll(".cdp td.cell.compute").length,
    cache: document.querySelectorAll(".cdp td.cell.cache").length,
    summary: document.querySelector(".cdp .summary").textContent,
  }));
  console.log(JSON.stringify(panel));
  const failures = [];
  if (panel.rows.join() !== "high/cond,high/uncond,low/cond,low/uncond") failures.push(`rows ${panel.rows}`);
  if (panel.compute + panel.cache !== 40 || !panel.cache) failures.push(`${panel.compute} compute + ${panel.cache} cache cells`);
  if (!/high\/cond: \d+ compute, \d+ cache .* \d+ of 40 forwards computed/.test(panel.summary)) failures.push("summary");
  await page.locator(".cdp td.cell.cache").first().hover();
  const tip = await page.locator(".cdp-tip").textContent({ timeout: 5000 });
  if (!/: cache, SCM bit/.test(tip)) failures.push(`tooltip ${tip}`);
  if (shots) await page.screenshot({ path: `${shots}/panel.png` });

  // The SCM Mask node's text (from its run, or from the prompt's history when ComfyUI had it cached).
  const mask = await page.waitForFunction(() => window.app.graph.nodes.find((n) => n.type === "CacheDiT_SCMMask")
    ?.widgets.find((w) => w.name === "mask_view")?.value, null, { timeout: 30000 }).then((h) => h.jsonValue());
  if (!/^[01]{20}\n\d+ compute \/ \d+ cache of 20 steps/.test(mask)) failures.push(`mask text ${mask}`);
  if (shots) {
    await page.evaluate(() => window.app.extensionManager.command.execute("Workspace.ToggleBottomPanelTab.cachedit-decisions"));
    await page.setViewportSize({ width: 1600, height: 1200 });
    await page.evaluate(() => { // the whole graph in view
      const { app } = window;
      const xs = app.graph.nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
      const ys = app.graph.nodes.flatMap((n) => [n.pos[1] - 40, n.pos[1] + n.size[1]]);
      const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      const box = app.canvas.canvas.getBoundingClientRect();
      const scale = Math.min(box.width / (x1 - x0 + 80), box.height / (y1 - y0 + 80));
      app.canvas.ds.scale = scale;
      app.canvas.ds.offset = [box.width / scale / 2 - (x0 + x1) / 2, box.height / scale / 2 - (y0 + y1) / 2];
      app.canvas.setDirty(true, true);
    });
    await page.waitForTimeout(500);
    await page.screenshot({ path: `${shots}/workflow.png` });
  }
  if (failures.length) throw new Error(failures.join("; "));
  console.log("panel OK");
} finally {
  await browser.close();
}

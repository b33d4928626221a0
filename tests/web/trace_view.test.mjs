// node --test tests/web: the panel's pure logic.
import assert from "node:assert/strict";
import { test } from "node:test";
import { cellTitle, counts, grid, sparkline } from "../../web/trace_view.js";

const rec = (step, expert, branch, decision, diff = null) => ({
  step, expert, branch, decision, residual_diff: diff, threshold: 0.24, scm: decision === "cache" ? 0 : 1,
  taylorseer: decision === "cache", wall_ms: 10, ranks: 2, ranks_agreed: true,
});
const records = [rec(0, "high", "cond", "compute"), rec(0, "high", "uncond", "compute"),
  rec(1, "high", "cond", "cache", 0.05), rec(1, "high", "uncond", "compute", 0.3), rec(2, "low", "cond", "compute")];

test("grid has one row per expert/branch and one cell per step", () => {
  const rows = grid(records, 3);
  assert.deepEqual(rows.map((r) => r.row), ["high/cond", "high/uncond", "low/cond"]);
  assert.equal(rows[0].cells.length, 3);
  assert.equal(rows[0].cells[1].decision, "cache");
  assert.equal(rows[2].cells[0], null);
});

test("counts and speedup", () => {
  const c = counts(records);
  assert.deepEqual(c.rows["high/cond"], { compute: 1, cache: 1 });
  assert.equal(c.computed, 4);
  assert.equal(c.speedup, 5 / 4);
  assert.equal(c.agreed, true);
  assert.equal(counts([{ ...records[0], ranks_agreed: false }]).agreed, false);
});

test("hover text shows the diff against the threshold", () => {
  assert.match(cellTitle(records[2]), /cache, SCM bit 0, residual diff 0\.0500 < threshold 0\.24, TaylorSeer, 2 ranks agreed/);
  assert.match(cellTitle(records[3]), /0\.3000 >= threshold/);
});

test("sparkline scales diffs and the threshold into the box", () => {
  const { points, threshold } = sparkline(grid(records, 3)[0].cells, 30, 10);
  assert.equal(points.split(" ").length, 1);
  assert.ok(threshold > 0 && threshold < 10);
});

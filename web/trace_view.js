// Pure functions behind the panel: records in, rows, cells and counts out (tested with node --test).

export const ROWS = ["high/cond", "high/uncond", "low/cond", "low/uncond"];

export function rowKey(record) {
  return `${record.expert}/${record.branch}`;
}

// One entry per expert/branch present, each with one cell per step (null where it did not run).
export function grid(records, steps) {
  const present = ROWS.filter((row) => records.some((r) => rowKey(r) === row));
  return present.map((row) => {
    const cells = new Array(steps).fill(null);
    for (const record of records) {
      if (rowKey(record) === row) cells[record.step] = record;
    }
    return { row, cells };
  });
}

export function cellTitle(record) {
  let text = `step ${record.step} ${rowKey(record)}: ${record.decision}`;
  if (record.scm !== null && record.scm !== undefined) text += `, SCM bit ${record.scm}`;
  if (record.residual_diff !== null && record.residual_diff !== undefined) {
    const relation = record.residual_diff < record.threshold ? "<" : ">=";
    text += `, residual diff ${record.residual_diff.toFixed(4)} ${relation} threshold ${record.threshold}`;
  }
  if (record.taylorseer) text += ", TaylorSeer";
  if (record.ranks > 1) text += record.ranks_agreed ? `, ${record.ranks} ranks agreed` : `, RANKS DISAGREED`;
  return text + `, ${record.wall_ms.toFixed(1)} ms`;
}

export function counts(records) {
  const rows = {};
  for (const record of records) {
    const key = rowKey(record);
    rows[key] ??= { compute: 0, cache: 0 };
    rows[key][record.decision] += 1;
  }
  const computed = records.filter((r) => r.decision === "compute").length;
  return {
    rows,
    forwards: records.length,
    computed,
    speedup: computed ? records.length / computed : null,
    agreed: records.every((r) => r.ranks_agreed !== false),
  };
}

// Points of a sparkline: residual diffs scaled to a box of width x height (threshold included).
export function sparkline(cells, width, height) {
  const values = cells.filter((c) => c && c.residual_diff !== null && c.residual_diff !== undefined);
  const top = Math.max(1e-6, ...values.map((c) => c.residual_diff), ...cells.filter(Boolean).map((c) => c.threshold || 0)) * 1.1;
  const x = (step) => ((step + 0.5) / cells.length) * width;
  const y = (value) => height - (value / top) * height;
  const threshold = cells.find((c) => c && c.threshold)?.threshold;
  return {
    points: values.map((c) => `${x(c.step).toFixed(1)},${y(c.residual_diff).toFixed(1)}`).join(" "),
    threshold: threshold === undefined ? null : y(threshold),
  };
}

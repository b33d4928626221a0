"""Host-safe: a trace as a text table (the sampler's decisions output) and a PNG chart."""

from __future__ import annotations

from pathlib import Path

from ..job.settings import BRANCHES, EXPERTS
from .trace import StepRecord, Trace, row_key


def ordered_rows(trace: Trace) -> list[str]:
    present = {row_key(r) for r in trace.records}
    return [f"{e}/{b}" for e in EXPERTS for b in BRANCHES if f"{e}/{b}" in present]


def format_table(trace: Trace) -> str:
    """One line per step: each expert/branch's decision and residual diff, plus rank agreement."""
    rows = ordered_rows(trace)
    by_step: dict[int, dict[str, StepRecord]] = {}
    for record in trace.records:
        by_step.setdefault(record.step, {})[row_key(record)] = record
    parallel = "layout" in trace.info  # from a worker group
    header = f"{'step':>4} {'t':>6} {'scm':>3}  " + "  ".join(f"{row:<21}" for row in rows)
    if parallel:
        header += "  ranks agreed"
    lines = [f"note: {note}" for note in trace.info.get("notes", ())] + [header, "-" * len(header)]
    for step in sorted(by_step):
        cells = by_step[step]
        any_record = next(iter(cells.values()))
        scm = "-" if any_record.scm is None else str(any_record.scm)
        parts = []
        for row in rows:
            record = cells.get(row)
            if record is None:
                parts.append(f"{'':<21}")
                continue
            diff = "" if record.residual_diff is None else f"d={record.residual_diff:.3f}"
            mark = "+TS" if record.taylorseer else ""
            parts.append(f"{record.decision + mark:<11}{diff:<10}")
        line = f"{step:>4} {any_record.timestep:>6.1f} {scm:>3}  " + "  ".join(parts)
        if parallel:
            agreed = all(r.ranks_agreed for r in cells.values())
            line += f"  {'yes' if agreed else 'NO'} ({max(r.ranks for r in cells.values())} ranks)"
        lines.append(line)
    summary = trace.summary()
    lines.append("")
    switch = trace.info.get("switch")
    if switch:
        at = "never" if switch["step"] is None else f"from step {switch['step']}"
        lines.append(f"low-noise expert {at} ({switch['rule']})")
    for row in rows:
        counts = summary["rows"][row]
        lines.append(f"{row:<12} compute {counts['compute']:>3}  cache {counts['cache']:>3}")
    speedup = summary["compute_speedup"]
    lines.append(
        f"forwards {summary['forwards']}, computed {summary['computed']}, cached {summary['cached']}"
        + (f", {speedup:.2f}x fewer full forwards" if speedup else "")
    )
    timing = [f"{label} {trace.info[key]:.2f} s" for key, label in (("denoise_s", "denoising"), ("compile_s", "compiling"))
              if trace.info.get(key)]
    memory = [m for m in trace.info.get("peak_mem_gb_per_rank") or [trace.info.get("peak_mem_gb")] if m is not None]
    if memory:
        timing.append("peak GPU memory per rank " + ", ".join(f"{m:.1f}" for m in memory) + " GB")
    if timing:
        lines.append("; ".join(timing))
    return "\n".join(lines)


def write_chart(trace: Trace, path: Path) -> None:
    """PNG: one row per expert/branch, one cell per step (compute blue, cache orange),
    the residual diff of each step as a dot against its threshold as a line."""
    from PIL import Image, ImageDraw

    rows = ordered_rows(trace)
    steps = max(trace.steps, 1)
    cell, left, top, plot_h, gap = 16, 110, 30, 90, 20
    width = left + steps * cell + 20
    height = top + len(rows) * (cell + 4) + gap + plot_h + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), f"cache decisions per step ({trace.summary()['computed']} computed of "
                         f"{len(trace.records)} forwards)", fill="black")
    colours = {"compute": (52, 101, 164), "cache": (245, 121, 0)}
    index = {row: i for i, row in enumerate(rows)}
    for record in trace.records:
        y = top + index[row_key(record)] * (cell + 4)
        x = left + record.step * cell
        draw.rectangle([x, y, x + cell - 2, y + cell - 1], fill=colours[record.decision])
    for row, i in index.items():
        draw.text((6, top + i * (cell + 4) + 2), row, fill="black")
    plot_top = top + len(rows) * (cell + 4) + gap
    draw.rectangle([left, plot_top, left + steps * cell, plot_top + plot_h], outline=(180, 180, 180))
    diffs = [r for r in trace.records if r.residual_diff is not None]
    scale = max([r.residual_diff for r in diffs] + [r.threshold or 0 for r in trace.records] + [1e-6]) * 1.1

    def y_of(value: float) -> float:
        return plot_top + plot_h - value / scale * plot_h

    thresholds = {r.threshold for r in trace.records if r.threshold}
    for threshold in thresholds:
        draw.line([left, y_of(threshold), left + steps * cell, y_of(threshold)], fill=(204, 0, 0))
        draw.text((6, y_of(threshold) - 6), f"threshold {threshold:g}", fill=(204, 0, 0))
    for record in diffs:
        x = left + record.step * cell + cell / 2
        y = y_of(record.residual_diff)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours[record.decision])
    draw.text((6, plot_top + plot_h - 10), "residual diff", fill="black")
    draw.text((left, plot_top + plot_h + 8), "step 0", fill="black")
    draw.text((left + steps * cell - 40, plot_top + plot_h + 8), f"step {steps - 1}", fill="black")
    image.save(path)

"""The study's figures and files: ``study.json`` (every number), ``report.md`` (tables, figures beside it
as PNG) and ``report.html`` (the same tables with the figures embedded as base64 PNG: one file, no
external assets). Everything is drawn from the dict ``analyse`` returns, so the notebook and the paper
figures can redraw it from ``study.json`` alone.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402

from prefopt.io import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402

CURVE_PANELS = ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")
FILES = ("study.json", "report.md", "report.html")
# The per-run figures the report's table shows (study.json holds every one the runs logged).
TABLE_SCALARS = ("train/rewards/accuracies", "train/rewards/margins", "eval/rewards/accuracies",
                 "eval/rewards/margins", "compute/flops_estimate", "compute/wall_s/train")


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("estimate") is None:
        return "–"
    return f"{_fmt(entry['estimate'])} [{_fmt(entry.get('ci_low'))}, {_fmt(entry.get('ci_high'))}]"


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 7,
                 colors: list | None = None, **kwargs) -> list:
    """Annotate each point with its text at the first of a ring of offsets whose box overlaps no label
    placed before it and no point: a greedy placement, enough for the tens of labels a frontier has."""
    fig = ax.figure
    ax.autoscale_view()
    fig.canvas.draw()
    scale = fig.dpi / 72.0
    taken = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        taken.append((px - 3 * scale, py - 3 * scale, px + 3 * scale, py + 3 * scale))
    offsets = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (-5, 14), (5, -21), (-5, -21), (12, 24),
               (-12, 24), (12, -31), (-12, -31), (18, 34), (-18, 34), (18, -41), (-18, -41)]
    placed = []
    for n, ((x, y), text) in enumerate(zip(points, texts, strict=True)):
        px, py = ax.transData.transform((x, y))
        w, h = len(text) * fontsize * 0.6 * scale, fontsize * 1.25 * scale
        choice = offsets[-1]
        for dx, dy in offsets:
            left = px + dx * scale - (w if dx < 0 else 0)
            box = (left, py + dy * scale, left + w, py + dy * scale + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                choice = (dx, dy)
                taken.append(box)
                break
        if colors is not None:
            kwargs["color"] = colors[n]
        placed.append(ax.annotate(text, (x, y), textcoords="offset points", xytext=choice, fontsize=fontsize,
                                  ha="right" if choice[0] < 0 else "left", va="bottom", **kwargs))
    return placed


def plot_frontiers(result: dict, ax=None, label_betas: bool = True):
    """One reward–KL frontier per loss (points joined in β order), both 95% CIs as error bars, β beside
    each point."""
    fig, ax = plt.subplots(figsize=(6.2, 4.4)) if ax is None else (ax.figure, ax)
    points, texts, colors = [], [], []
    for k, f in enumerate(result["frontiers"]):
        pts = [p for p in f["points"] if p["kl"] is not None and math.isfinite(p["kl"])]
        if not pts:
            continue
        x = [p["kl"] for p in pts]
        y = [p["reward"] for p in pts]
        xerr = [[p["kl"] - (p["kl_ci"][0] if p["kl_ci"][0] is not None else p["kl"]) for p in pts],
                [(p["kl_ci"][1] if p["kl_ci"][1] is not None else p["kl"]) - p["kl"] for p in pts]]
        yerr = [[p["reward"] - (p["reward_ci"][0] if p["reward_ci"][0] is not None else p["reward"]) for p in pts],
                [(p["reward_ci"][1] if p["reward_ci"][1] is not None else p["reward"]) - p["reward"] for p in pts]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="-o", ms=4, capsize=2, lw=1.4, elinewidth=0.8,
                    color=f"C{k}", label=f["frontier"])
        points += list(zip(x, y, strict=True))
        texts += [f"β={p['beta']:g}" if isinstance(p["beta"], int | float) else f"β={p['beta']}" for p in pts]
        colors += [f"C{k}"] * len(pts)
    ax.set_xlabel("KL(π‖π_ref), sampled (nats per completion)")
    ax.set_ylabel(f"gold reward ({result['benchmark']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if label_betas and points:
        place_labels(ax, points, texts, colors=colors)
    return fig


def plot_equal_kl(result: dict, ax=None):
    """Each loss's reward interpolated at the common KL grid with its 95% CI (not-covered points absent)."""
    fig, ax = plt.subplots(figsize=(6.2, 4.0)) if ax is None else (ax.figure, ax)
    grid = result["kl_grid"]
    width = (max(grid) - min(grid)) / 60 if len(grid) > 1 else 0.01
    n = len(result["frontiers"])
    for k, f in enumerate(result["frontiers"]):
        rows = [r for r in f["at_kl"] if r["covered"]]
        if not rows:
            continue
        x = [r["kl"] + (k - (n - 1) / 2) * width for r in rows]
        y = [r["estimate"] for r in rows]
        err = [[r["estimate"] - r["ci_low"] for r in rows], [r["ci_high"] - r["estimate"] for r in rows]]
        ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=f"C{k}", label=f["frontier"])
    ax.set_xlabel("KL(π‖π_ref) (common grid)")
    ax.set_ylabel("gold reward at equal KL (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_curves(result: dict, split: str = "train"):
    """Training curves: the mean over seeds per condition, shaded between the seeds' min and max."""
    rows = [r for r in result["curves"] if r["split"] == split]
    panels = [p for p in CURVE_PANELS if any(r.get(p) for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    conditions = sorted({r["condition"] for r in rows})
    for ax, panel in zip(axes[0], panels, strict=True):
        for k, cond in enumerate(conditions):
            sub = sorted((r for r in rows if r["condition"] == cond and r.get(panel)), key=lambda r: r["step"])
            if not sub:
                continue
            steps = [r["step"] for r in sub]
            ax.plot(steps, [r[panel]["mean"] for r in sub], color=f"C{k % 10}", lw=1.2, label=cond)
            ax.fill_between(steps, [r[panel]["min"] for r in sub], [r[panel]["max"] for r in sub],
                            color=f"C{k % 10}", alpha=0.2, lw=0)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{split}: mean over seeds, band = seeds' min–max", fontsize=9)
    fig.tight_layout()
    return fig


def figures(result: dict) -> dict:
    out = {}
    if any(p["kl"] is not None and math.isfinite(p["kl"]) for f in result["frontiers"] for p in f["points"]):
        out["frontier"] = plot_frontiers(result)
        out["frontier"].tight_layout()
        if result["kl_grid"]:
            out["equal_kl"] = plot_equal_kl(result)
            out["equal_kl"].tight_layout()
    for split in ("train", "eval"):
        fig = plot_curves(result, split)
        if fig is not None:
            out[f"curves_{split}"] = fig
    return out


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report; report.md and report.html both render these."""
    out = []
    d = result["design"]
    out.append(("Design", ["benchmark", "seeds", "prompts", "samples per prompt", "conditions", "runs (completed)"],
                [[result["benchmark"], ", ".join(map(str, d["seeds"])), str(d["prompts"]),
                  str(d["samples_per_prompt"]), str(d["conditions"]), f"{d['runs']} ({d['completed']})"]]))
    scalars = [m for m in result["metrics"] if m in TABLE_SCALARS or m.startswith("eval/monitor/")]
    header = ["condition", "seeds", "prompts", "reward", "delta vs reference", "KL"] + scalars
    rows = [[c["condition"], str(len(c["seeds"])), str(c["prompts"])] + [_ci(c["metrics"].get(m)) for m in
            ["reward", "delta", "kl"] + scalars] for c in result["conditions"]]
    out.append(("Per condition (95% CI; items: seeds × prompts bootstrap; per-run metrics: seeds bootstrap)",
                header, rows))
    if result["kl_grid"]:
        header = ["frontier"] + [f"KL={_fmt(k, 3)}" for k in result["kl_grid"]]
        rows = [[f["frontier"]] + [_ci(r) if r["covered"] else "not covered" for r in f["at_kl"]]
                for f in result["frontiers"]]
        out.append(("Reward at equal KL (linear along each frontier in β order; never extrapolated)", header, rows))
    header = ["kind", "a", "b", "at", "a − b [95% CI]", "df", "p", "p (Holm)", "resolved", "MDE", "MDE (Holm)"]
    rows = [[p["kind"], p["a"], p["b"], ", ".join(f"{k}={_fmt(v)}" for k, v in p["at"].items()),
             f"{_fmt(p['difference'])} [{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}]", _fmt(p["df"], 3), _fmt(p["p"]),
             _fmt(p["p_holm"]), "resolved" if p["resolved"] else "not resolved", _fmt(p.get("mde")),
             _fmt(p.get("mde_holm"))] for p in result["pairs"]]
    out.append((f"Pairwise comparisons (paired over seeds and prompts; t intervals with seeds and prompts "
                f"random; Holm over all {len(rows)} pairs, α={result['method']['alpha']})", header, rows))
    header = ["a", "b", "at", "σ²seed", "σ²prompt", "σ²cell", "MDE (components)"]
    rows, plans = [], []
    for p in result["pairs"]:
        if p["kind"] != "equal_beta":
            continue
        vc = p["variance_components"]
        at = ", ".join(f"{k}={_fmt(v)}" for k, v in p["at"].items())
        rows.append([p["a"], p["b"], at, _fmt(vc["seed"]), _fmt(vc["prompt"]), _fmt(vc["cell"]),
                     _fmt(p.get("mde_from_components"))])
        if p.get("plan"):
            fewest = p["plan"].get("fewest_seeds")
            plans.append([p["a"], p["b"], at, _fmt(fewest) if p["plan"]["seed_variance_estimated"] else "–"] + [
                f"{o['seeds']} seeds: {o['prompts'] if o['prompts'] is not None else 'unreachable'}"
                for o in p["plan"]["options"]])
    if rows:
        out.append(("Variance components of the paired difference (method of moments, crossed seeds × prompts)",
                    header, rows))
    if plans:
        width = max(len(r) for r in plans)
        plans = [r + [""] * (width - len(r)) for r in plans]
        out.append((f"Prompts needed to resolve a difference of {result['method']['target_difference']} at 80% "
                    f"power (two-sided α={result['method']['alpha']})", ["a", "b", "at", "fewest seeds"] +
                    [f"option {i + 1}" for i in range(width - 4)], plans))
    rows = [[_fmt(m.get("run")), _fmt(m.get("condition")), _fmt(m.get("seed")), m["status"], _fmt(m.get("error"))]
            for m in result["missing"]]
    out.append(("Failed or missing runs (left out of every figure above)", ["run", "condition", "seed", "status",
                                                                            "error"], rows or [["none"] + [""] * 4]))
    return out


def _md_table(header, rows) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header] + rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def render_md(result: dict, names: list[str]) -> str:
    parts = [f"# Study: {result['benchmark']}", "",
             "Sweep directories: " + ", ".join(f"`{d}`" for d in result["sweep_dirs"]), "",
             f"Method: {result['method']['bootstrap']}, {result['method']['replicates']} replicates "
             f"(seed {result['method']['seed']}); pairs: {result['method']['pairwise']}, Holm across all pairs; "
             f"MDE at 80% power, two-sided α={result['method']['alpha']}.", ""]
    parts += [f"> warning: {w}" for w in result["warnings"]] + ([""] if result["warnings"] else [])
    for title, header, rows in tables(result):
        parts += [f"## {title}", "", _md_table(header, rows), ""]
    if names:
        parts += ["## Figures", ""] + [f"![{n}]({n}.png)" for n in names] + [""]
    return "\n".join(parts)


def render_html(result: dict, pngs: dict[str, bytes]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>Study: {e(result['benchmark'])}"
             "</title>", "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse;font-size:12px;margin-bottom:1.5em}td,th{border:1px solid #ccc;"
             "padding:3px 6px;text-align:left}th{background:#f3f3f3}.warn{color:#a40}</style></head><body>",
             f"<h1>Study: {e(result['benchmark'])}</h1>",
             "<p>Sweep directories: " + ", ".join(f"<code>{e(d)}</code>" for d in result["sweep_dirs"]) + "</p>",
             f"<p>Method: {e(result['method']['bootstrap'])}, {result['method']['replicates']} replicates; pairs: "
             f"{e(result['method']['pairwise'])}, Holm across all pairs; MDE at 80% power, two-sided "
             f"α={result['method']['alpha']}.</p>"]
    parts += [f"<p class='warn'>warning: {e(w)}</p>" for w in result["warnings"]]
    for title, header, rows in tables(result):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    for name, data in pngs.items():
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(data).decode('ascii')}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """study.json, report.md (+ one PNG per figure beside it) and report.html into ``out_dir``, each
    written atomically; returns their paths."""
    out_dir = Path(out_dir)
    pngs = {}
    for name, fig in figures(result).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        pngs[name] = buf.getvalue()
    written = {}
    for name, data in pngs.items():
        atomic_write_bytes(out_dir / f"{name}.png", data)
        written[f"{name}.png"] = out_dir / f"{name}.png"
    atomic_write_json(out_dir / "study.json", result)
    atomic_write_text(out_dir / "report.md", render_md(result, list(pngs)))
    atomic_write_text(out_dir / "report.html", render_html(result, pngs))
    written.update({name: out_dir / name for name in FILES})
    return written

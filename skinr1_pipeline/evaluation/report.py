"""The evaluation report: figures and one Markdown + one self-contained HTML file a clinician-researcher can read.

Why self-contained HTML (figures as base64 PNG, inline CSS): the report is attached to MLflow runs and mailed around;
a file that needs a sibling folder or a network breaks. Figures are drawn on `matplotlib.figure.Figure` with the Agg
canvas, never through pyplot, so no global backend is switched and nothing leaks between calls. Given the same inputs
the output is byte-identical except the "generated" timestamp (pass `generated_at` to pin it).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from skinr1_pipeline.evaluation.comparison import (
    MALIGNANCY_SUITE,
    NOT_EVALUATED,
    VARIANT_LABELS,
    format_accuracy,
    likelihood_table,
    paper_shape,
    table_suites,
    variant_order,
    versus_guessing,
)
from skinr1_pipeline.evaluation.metrics import NO_ANSWER, confusion_matrix, grouped_accuracy

LOSS_KEYS = ("loss", "train_loss", "train/loss")
REWARD_PREFIXES = ("rewards/", "reward")
OOD_SUITES = ("ood", "ood_omnimedvqa")
SUITE_DESCRIPTIONS = {
    "in_domain": "4-option questions on in-distribution test images; gold = deepest correct option shown "
                 "(an ancestor of the label counts as wrong).",
    "malignancy": "benign / malignant / precancerous in situ, 3 options.",
    "hierarchical": "every node of the label's taxonomy path plus one distractor; gold = the finest node.",
    "ddx": "the label against its look-alikes from the differential-diagnosis graph only.",
    "ood": "4-option questions on held-out sources / modalities (out of distribution).",
    "open_ended": "free-text diagnosis mapped onto the taxonomy; credit = shared depth with the label.",
    "ood_omnimedvqa": "OmniMedVQA skin questions with their own options (out of distribution).",
}
_PNG_META = {"Software": None}  # no version string in the PNG, so bytes depend on the data only
_CSS = ("body{font-family:system-ui,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #bbb;padding:.3em .6em;"
        "text-align:left}th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
        ".note{color:#555;font-size:.9em}")


# ---- training curves from MLflow ------------------------------------------------------------------------------


@dataclass
class Curves:
    """label -> metric key -> frame(step, value); `missing` says in words what was looked for and not found."""

    series: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _is_reward(key: str) -> bool:
    return any(key.startswith(p) for p in REWARD_PREFIXES)


def read_curves(tracking_uri: str, run_ids: Mapping[str, str]) -> Curves:
    """Loss ("loss", "train_loss", "train/loss") and reward ("reward*", "rewards/*") histories per run.

    `run_ids` maps a label (e.g. "sft", "grpo") to an MLflow run id. A run without such keys, or one that cannot be
    read, is reported in `missing` instead of failing the report.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    curves = Curves()
    for label, run_id in run_ids.items():
        try:
            keys = sorted(client.get_run(run_id).data.metrics)
        except Exception as exc:  # noqa: BLE001 - a missing run must not sink the whole report
            curves.missing.append(f"{label}: run {run_id} could not be read ({type(exc).__name__}: {exc})")
            continue
        losses = [k for k in keys if k in LOSS_KEYS]
        rewards = [k for k in keys if _is_reward(k)]
        if not losses:
            curves.missing.append(f"{label}: no loss metric in run {run_id} (looked for {', '.join(LOSS_KEYS)})")
        if not rewards:
            curves.missing.append(f"{label}: no reward metric in run {run_id} (looked for keys starting with "
                                  f"{' or '.join(repr(p) for p in REWARD_PREFIXES)})")
        series = {}
        for key in losses + rewards:
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            series[key] = pd.DataFrame({"step": [m.step for m in history], "value": [m.value for m in history]})
        if series:
            curves.series[label] = series
    return curves


# ---- figures ----------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=_PNG_META, bbox_inches="tight")
    return buf.getvalue()


def confusion_figure(scored: pd.DataFrame, variant: str, *, max_classes: int = 20) -> Figure:
    """True label node (rows) against the chosen option's node (columns), row-normalised colour, counts written.

    Only the `max_classes` most frequent labels keep their own row/column; the rest are pooled as "(other)".
    """
    cm = confusion_matrix(scored)
    keep = list(cm.sum(axis=1).sort_values(ascending=False, kind="stable").index[:max_classes])
    rows = cm.groupby(lambda n: n if n in keep else "(other)").sum()
    cols = rows.T.groupby(lambda n: n if n in keep or n == NO_ANSWER else "(other)").sum().T
    row_order = sorted(rows.index, key=lambda n: (n == "(other)", n))
    col_order = [c for c in row_order if c in cols.columns] + sorted(
        c for c in cols.columns if c not in row_order and c != NO_ANSWER) + (
        [NO_ANSWER] if NO_ANSWER in cols.columns else [])
    mat = cols.reindex(index=row_order, columns=col_order, fill_value=0)
    counts = mat.to_numpy(dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(1.5 + 0.45 * len(col_order), 1.2 + 0.4 * len(row_order))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(col_order)), col_order, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_order)), row_order, fontsize=7)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted (chosen option's node)")
    ax.set_ylabel("true (sample's label)")
    ax.set_title(f"{variant}: confusion matrix (n={int(counts.sum())})", fontsize=9)
    return fig


def depth_accuracy_figure(scored_by_variant: Mapping[str, pd.DataFrame], *, suite: str) -> Figure:
    """Accuracy (95% CI) by taxonomy depth of the label, one line per variant."""
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    variants = variant_order(list(scored_by_variant))
    for k, variant in enumerate(variants):
        frame = scored_by_variant[variant]
        if len(frame) == 0:
            continue
        g = grouped_accuracy(frame.dropna(subset=["taxonomy_depth"]), "taxonomy_depth")
        x = g["taxonomy_depth"].astype(float).to_numpy() + (k - (len(variants) - 1) / 2) * 0.06
        err = np.vstack([g["accuracy"] - g["ci_low"], g["ci_high"] - g["accuracy"]])
        ax.errorbar(x, g["accuracy"], yerr=err, marker="o", capsize=3, label=variant)
    depths = sorted({int(d) for f in scored_by_variant.values() if len(f) for d in f["taxonomy_depth"].dropna()})
    ax.set_xticks(depths)
    ax.set_xlabel("taxonomy depth of the label (root = 0)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Accuracy by taxonomy depth ({suite})", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def suite_accuracy_figure(table: pd.DataFrame) -> Figure:
    """Grouped bars: accuracy per suite (x) per variant (bars), 95% bootstrap CI as error bars."""
    suites = table_suites(table)
    variants = list(table.index)
    fig = _figure(max(6, 1.3 * len(suites)), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(len(variants), 1)
    for k, variant in enumerate(variants):
        acc = np.array([float(table.at[variant, f"{s}_acc"]) for s in suites])
        lo = np.array([float(table.at[variant, f"{s}_ci_low"]) for s in suites])
        hi = np.array([float(table.at[variant, f"{s}_ci_high"]) for s in suites])
        x = np.arange(len(suites)) + (k - (len(variants) - 1) / 2) * width
        err = np.nan_to_num(np.vstack([acc - lo, hi - acc]))
        ax.bar(x, np.nan_to_num(acc), width, yerr=err, capsize=2, label=variant)
    ax.set_xticks(range(len(suites)), suites, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy per suite and variant (95% bootstrap CI)", fontsize=9)
    ax.legend(fontsize=7, ncols=min(len(variants), 4), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig


def curves_figure(curves: Curves) -> Figure | None:
    """One row per run: loss on the left, rewards on the right; None when no curve was found."""
    labels = list(curves.series)
    if not labels:
        return None
    fig = _figure(10, 2.8 * len(labels))
    for r, label in enumerate(labels):
        for c, (title, pick) in enumerate((("loss", lambda k: not _is_reward(k)), ("reward", _is_reward))):
            ax = fig.add_subplot(len(labels), 2, 2 * r + c + 1)
            keys = [k for k in curves.series[label] if pick(k)]
            for key in keys:
                frame = curves.series[label][key]
                ax.plot(frame["step"], frame["value"], marker="." if len(frame) < 30 else None, label=key)
            if keys:
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, f"no {title} metric logged", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{label}: {title}", fontsize=9)
            ax.set_xlabel("step")
    fig.tight_layout()
    return fig


# ---- text ----------------------------------------------------------------------------------------------------


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: dict[str, Path]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


def _md_text(text: str) -> str:
    """Markdown-safe free text: `<` outside `code spans` is escaped, so tags in captions are shown, not parsed."""
    parts = text.split("`")
    return "`".join(p if k % 2 else p.replace("<", "\\<") for k, p in enumerate(parts))


def _html_text(text: str) -> str:
    """Escaped HTML with `code spans` rendered as <code>."""
    parts = html.escape(text, quote=False).split("`")
    return "".join(f"<code>{p}</code>" if k % 2 else p for k, p in enumerate(parts))


class _Doc:
    """Builds Markdown and HTML side by side from the same blocks, so the two never disagree."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {_md_text(text)}\n")
        self.html.append(f"<h{level}>{_html_text(text)}</h{level}>")

    def para(self, text: str, note: bool = False) -> None:
        self.md.append(f"{'_' + _md_text(text) + '_' if note else _md_text(text)}\n")
        attrs = ' class="note"' if note else ""
        self.html.append(f"<p{attrs}>{_html_text(text)}</p>")

    def bullets(self, items: Sequence[str]) -> None:
        if not items:
            return
        self.md.append("\n".join(f"- {_md_text(i)}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_fmt(v) for v in row] for row in rows]
        esc = [[c.replace("|", "\\|") for c in row] for row in cells]
        self.md.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(r) + " |" for r in esc]) + "\n")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, rel_path: str, png: bytes, caption: str) -> None:
        self.md.append(f"![{caption}]({rel_path})\n\n_{caption}_\n")
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption class=\"note\">{html.escape(caption)}</figcaption></figure>")


def _contamination_rows(contamination: Any) -> list[list[Any]]:
    if contamination is None:
        return []
    frame = getattr(contamination, "summary", contamination)
    if isinstance(frame, Mapping):
        return [[suite, "", count, "", "", ""] for suite, count in sorted(frame.items())]
    cols = ("suite", "n_items", "contaminated", "by_hash", "by_sample_id", "fraction")
    return [[row.get(c, "") for c in cols] for row in frame.to_dict("records")]


def _evaluated_section(doc: _Doc, variants: list[str], summaries: Mapping[str, Mapping[str, Any]],
                       suites: list[str], description: str | None) -> None:
    doc.heading("What was evaluated")
    if description:
        doc.para(description)
    doc.bullets([f"{v}: {VARIANT_LABELS.get(v, 'variant supplied by the caller')}" for v in variants])
    rows = []
    for suite in suites:
        ns = [summaries[v].get(suite, {}).get("n", 0) for v in variants]
        rows.append([suite, "/".join(str(n) for n in sorted(set(ns))), SUITE_DESCRIPTIONS.get(suite, "")])
    doc.table(["suite", "items scored", "what it asks"], rows)
    doc.para("Every answer is read by the same strict parser that pays the training rewards: a completion that is "
             "not in the required `<thinking>`/`<diagnosis>` format, or that names no single offered option, counts "
             "as wrong. Intervals are 95% percentile bootstrap intervals over items.", note=True)


def _suite_details(doc: _Doc, variants: list[str], summaries: Mapping[str, Mapping[str, Any]],
                   suites: list[str]) -> None:
    doc.heading("Per-suite details")
    for suite in suites:
        doc.heading(suite, 3)
        rows = []
        for v in variants:
            s = summaries[v].get(suite)
            if not s:
                continue
            errors = ", ".join(f"{k}: {n}" for k, n in sorted(s.get("format_errors", {}).items(),
                                                             key=lambda kv: (-kv[1], kv[0]))[:3]) or "none"
            rows.append([v, s["n"], format_accuracy(s["accuracy"], s["ci_low"], s["ci_high"]), s["mean_credit"],
                         s["format_ok_rate"], s["parsed_rate"], s.get("excluded", 0), errors])
        doc.table(["variant", "n", "accuracy [95% CI]", "mean credit", "format ok", "answer read",
                   "excluded (contaminated)", "most frequent format errors"], rows)


def _likelihood_section(doc: _Doc, variants: list[str], summaries: Mapping[str, Mapping[str, Any]]) -> None:
    likelihood = likelihood_table({v: summaries[v] for v in variants})
    if likelihood.empty or not len(likelihood.columns):
        return
    doc.heading("Answer likelihood")
    doc.para("Accuracy [95% CI] when the answer is the offered option whose whole answer text (\"B. benign "
             "neoplasm\") the model finds most probable after its own reasoning, instead of the option it wrote. "
             "Read it next to the ablation table: far above the generated-answer accuracy means the model knows the "
             "answer but does not write it down in the required form. It never replaces the generated answer; biases "
             "of an untrained model (short or frequent option texts) show in the base row.")
    doc.table(["variant", *likelihood.columns], [[v, *likelihood.loc[v]] for v in likelihood.index])


def _guessing_section(doc: _Doc, summaries: Mapping[str, Mapping[str, Any]], baselines: pd.DataFrame | None,
                      suites: list[str]) -> None:
    doc.heading("Against image-blind guessing")
    if baselines is None or baselines.empty:
        doc.para("No image-blind baselines were supplied; accuracies cannot be read against guessing.", note=True)
        return
    doc.para("What a guesser that never looks at the image scores on the same items (expected accuracy): a uniformly "
             "random option; the option that is gold most often in the suite (its frequencies come from the suite "
             "itself, so it is optimistic); and, for multiple choice, the option with the most offered taxonomy "
             "ancestors, which finds the gold answer whenever the label's path contributes an ancestor chain. A "
             "variant is above guessing on a suite only when its 95% interval lies above the best of the three.")
    rows = [[r.suite, r.n, r.uniform, r.answer_prior, r.taxonomy_structure, r.best, r.best_guesser]
            for r in baselines.itertuples(index=False) if r.suite in suites]
    doc.table(["suite", "n", "uniform", "answer prior", "taxonomy structure", "best guess", "best guesser"], rows)
    for title, likelihood in (("Generated answer", False), ("Answer likelihood", True)):
        verdicts = versus_guessing(summaries, baselines, likelihood=likelihood)
        verdicts = verdicts[[c for c in verdicts.columns if c in suites and
                             (verdicts[c] != NOT_EVALUATED).any()]]
        if len(verdicts.columns):
            doc.para(f"{title} against the best guess:")
            doc.table(["variant", *verdicts.columns], [[v, *verdicts.loc[v]] for v in verdicts.index])


def _malignancy_section(doc: _Doc, variants: list[str], summaries: Mapping[str, Mapping[str, Any]]) -> None:
    doc.heading("Malignancy safety")
    rows = []
    for v in variants:
        mal = summaries[v].get(MALIGNANCY_SUITE, {}).get("malignancy")
        if mal:
            rows.append([v, mal["n_positive"], mal["n_benign"],
                         format_accuracy(mal["malignant_miss_rate"], mal["miss_rate_ci_low"],
                                         mal["miss_rate_ci_high"]),
                         mal["sensitivity"], mal["specificity"], mal["bucket_accuracy"]])
    if not rows:
        doc.para("The malignancy suite was not evaluated.", note=True)
        return
    doc.para("The malignant-miss rate is the share of malignant or precancerous lesions the model did not call "
             "malignant or precancerous. It is the number that matters most clinically: lower is safer. An "
             "unreadable answer counts as a miss.")
    doc.table(["variant", "malignant + precancerous", "benign", "miss rate [95% CI]", "sensitivity",
               "specificity", "3-way agreement"], rows)


def _ood_section(doc: _Doc, table: pd.DataFrame, variants: list[str]) -> None:
    doc.heading("Out-of-distribution generalisation")
    ood = [s for s in OOD_SUITES if f"{s}_acc" in table.columns]
    if not ood:
        doc.para("No out-of-distribution suite was evaluated.", note=True)
        return
    has_in = "in_domain_acc" in table.columns
    rows = []
    for v in variants:
        row = [v, table.at[v, "in_domain"] if has_in else "n/a"]
        for s in ood:
            gap = float(table.at[v, f"{s}_acc"]) - float(table.at[v, "in_domain_acc"]) if has_in else float("nan")
            row += [table.at[v, s], gap]
        rows.append(row)
    doc.table(["variant", "in_domain"] + [h for s in ood for h in (s, f"{s} minus in_domain")], rows)


def _shape_section(doc: _Doc, table: pd.DataFrame) -> None:
    shape = paper_shape(table)
    doc.heading("Does the paper's ablation shape hold?")
    doc.para(f"Paper claim: SFT+GRPO > SFT > base and RL-only < SFT+GRPO. On the primary suite "
             f"({shape['primary_suite']}): {shape['verdict']}. Rule: {shape['rule']}.")
    rows = [[suite, c["claim"], c["verdict"], c["detail"]]
            for suite, block in shape["suites"].items() for c in block["claims"]]
    doc.table(["suite", "claim", "verdict", "numbers"], rows)


def _auto_caveats(table: pd.DataFrame, summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = []
    small = sorted({f"{s} (n={d['n']})" for v in summaries.values() for s, d in v.items() if 0 < d["n"] < 30})
    if small:
        out.append("Suites with fewer than 30 items give wide intervals: " + ", ".join(small) + ".")
    empty = sorted({s for v in summaries.values() for s, d in v.items() if d["n"] == 0})
    if empty:
        out.append("No items were scored for: " + ", ".join(empty) + ".")
    return out


def write_report(out_dir: str | Path, *, table: pd.DataFrame, summaries: Mapping[str, Mapping[str, Any]],
                 scored: Mapping[str, Mapping[str, pd.DataFrame]], curves: Curves | None = None,
                 contamination: Any = None, baselines: pd.DataFrame | None = None,
                 title: str = "Skin-R1 evaluation report",
                 caveats: Sequence[str] = (), description: str | None = None, depth_suite: str = "in_domain",
                 confusion_suite: str = "in_domain", generated_at: str | None = None) -> ReportFiles:
    """Write report.md, report.html (self-contained) and figures/*.png under `out_dir`.

    `table` from `comparison.ablation_table`, `summaries` variant -> `variant_summary`, `scored` variant -> suite ->
    scored frame, `curves` from `read_curves`, `contamination` a `ContaminationReport` (or its summary frame, or
    suite -> excluded count), `baselines` from `baselines.blind_baselines`, `caveats` free text (e.g. "tiny
    random demo model: numbers are meaningless").
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    variants = [v for v in table.index if v in summaries]
    suites = table_suites(table)
    stamp = generated_at or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = _Doc()
    doc.heading(title, 1)
    doc.para(f"Generated {stamp}.", note=True)
    _evaluated_section(doc, variants, summaries, suites, description)

    doc.heading("Ablation table")
    doc.para("Accuracy [95% CI] per suite; rows follow the paper's ablation (base, SFT only, RL only, SFT+GRPO).")
    doc.table(["variant", *suites], [[v, *[table.at[v, s] for s in suites]] for v in variants])
    _likelihood_section(doc, variants, summaries)
    _guessing_section(doc, {v: summaries[v] for v in variants}, baselines, suites)
    _shape_section(doc, table)
    _malignancy_section(doc, variants, summaries)
    _ood_section(doc, table, variants)
    _suite_details(doc, variants, summaries, suites)

    figures: dict[str, Path] = {}
    doc.heading("Figures")
    pictures: list[tuple[str, Figure | None, str]] = [
        ("suite_accuracy", suite_accuracy_figure(table) if variants else None, "Accuracy per suite and variant.")]
    depth_frames = {v: scored[v][depth_suite] for v in variants if depth_suite in scored.get(v, {})}
    if depth_frames:
        pictures.append(("depth_accuracy", depth_accuracy_figure(depth_frames, suite=depth_suite),
                         f"Accuracy by taxonomy depth of the label ({depth_suite} suite)."))
    for v in variants:
        frame = scored.get(v, {}).get(confusion_suite)
        if frame is not None and len(frame):
            pictures.append((f"confusion_{v}", confusion_figure(frame, v),
                             f"{v}: true label node vs chosen option node ({confusion_suite} suite)."))
    pictures.append(("training_curves", curves_figure(curves) if curves else None,
                     "Training loss and reward curves read back from MLflow."))
    for name, fig, caption in pictures:
        if fig is None:
            continue
        png = figure_png(fig)
        path = out / "figures" / f"{name}.png"
        path.write_bytes(png)
        figures[name] = path
        doc.image(f"figures/{name}.png", png, caption)
    if curves is None:
        doc.para("Training curves: no MLflow runs were given.", note=True)
    elif curves.missing:
        doc.para("Training curves not found:", note=True)
        doc.bullets(curves.missing)

    doc.heading("Contamination")
    rows = _contamination_rows(contamination)
    if rows:
        doc.para("Evaluation items whose image (SHA-256) or sample id also occurs in training data were removed "
                 "before scoring.")
        doc.table(["suite", "items checked", "excluded", "by image hash", "by sample id", "fraction"], rows)
    else:
        doc.para("No contamination check was supplied; overlap between training and evaluation data is unknown.",
                 note=True)

    doc.heading("Caveats")
    doc.bullets([*caveats, *_auto_caveats(table, summaries)] or ["none stated"])

    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(doc.md), encoding="utf-8")
    html_path.write_text(
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n", encoding="utf-8")
    return ReportFiles(md_path, html_path, figures)

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
from datetime import UTC, datetime
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
from skinr1_pipeline.evaluation.suites import PAPER_SUFFIX
from skinr1_pipeline.storage.atomic import write_bytes, write_text

LOSS_KEYS = ("loss", "train_loss", "train/loss")
REWARD_PREFIXES = ("rewards/", "reward")
OOD_SUITES = ("ood", "ood_omnimedvqa")
SUITE_DESCRIPTIONS = {
    "in_domain": "set-first: 4 of the dataset's classes (none an ancestor of another) fixed before the gold is drawn "
    "uniformly among them, then an in-distribution test image of the gold; blind guessing scores 1/4.",
    "hierarchical": "set-first at each taxonomy level with at least 4 classes (options all at that level); credit = "
    "depth of the lowest common ancestor with the gold over the gold's depth.",
    "ddx": "set-first: a cluster of mutual look-alikes from the differential-diagnosis graph, then the gold.",
    "ood": "set-first, as in_domain, on held-out sources / modalities (out of distribution).",
    "malignancy": "benign / malignant / precancerous in situ, 3 options.",
    "open_ended": "free-text diagnosis mapped onto the taxonomy; credit = shared depth with the label.",
    "ood_omnimedvqa": "OmniMedVQA skin questions with their own options (out of distribution, never trained on).",
    "in_domain_paper": "paper-comparable (leaks): 1-3 nodes of the label's own path + same-dataset distractors; gold "
    "= the deepest path node offered.",
    "hierarchical_paper": "paper-comparable (leaks): every node of the label's path plus one distractor; gold = the "
    'finest node ("pick the deepest option" answers it).',
    "ddx_paper": "paper-comparable (leaks): the label against its DDx look-alikes (the most central option is gold).",
    "ood_paper": "paper-comparable (leaks): as in_domain_paper on held-out sources / modalities.",
}
_PNG_META = {"Software": None}  # no version string in the PNG, so bytes depend on the data only
_CSS = (
    "body{font-family:system-ui,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #bbb;padding:.3em .6em;"
    "text-align:left}th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
    ".note{color:#555;font-size:.9em}"
)


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
            curves.missing.append(
                f"{label}: no reward metric in run {run_id} (looked for keys starting with "
                f"{' or '.join(repr(p) for p in REWARD_PREFIXES)})"
            )
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
    col_order = (
        [c for c in row_order if c in cols.columns]
        + sorted(c for c in cols.columns if c not in row_order and c != NO_ANSWER)
        + ([NO_ANSWER] if NO_ANSWER in cols.columns else [])
    )
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
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black",
                )
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
        self.md.append(
            "\n".join(
                ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                + ["| " + " | ".join(r) + " |" for r in esc]
            )
            + "\n"
        )
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, rel_path: str, png: bytes, caption: str) -> None:
        self.md.append(f"![{caption}]({rel_path})\n\n_{caption}_\n")
        data = base64.b64encode(png).decode("ascii")
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="note">{html.escape(caption)}</figcaption></figure>'
        )


def _contamination_rows(contamination: Any) -> list[list[Any]]:
    if contamination is None:
        return []
    frame = getattr(contamination, "summary", contamination)
    if isinstance(frame, Mapping):
        return [[suite, "", count, "", "", ""] for suite, count in sorted(frame.items())]
    if "item_id" in frame and "contaminated" in frame:  # per-item flags: summarise per suite
        frame = (
            frame.groupby("suite", sort=True)
            .agg(
                n_items=("item_id", "size"),
                contaminated=("contaminated", "sum"),
                by_hash=("by_hash", "sum"),
                by_sample_id=("by_sample_id", "sum"),
                **({"by_near_duplicate": ("by_near_duplicate", "sum")} if "by_near_duplicate" in frame else {}),
            )
            .reset_index()
        )
        frame["fraction"] = frame["contaminated"] / frame["n_items"]
    cols = ("suite", "n_items", "contaminated", "by_hash", "by_sample_id", "by_near_duplicate", "fraction")
    return [[row.get(c, "") for c in cols] for row in frame.to_dict("records")]


def _evaluated_section(
    doc: _Doc,
    variants: list[str],
    summaries: Mapping[str, Mapping[str, Any]],
    suites: list[str],
    description: str | None,
) -> None:
    doc.heading("What was evaluated")
    if description:
        doc.para(description)
    doc.bullets([f"{v}: {VARIANT_LABELS.get(v, 'variant supplied by the caller')}" for v in variants])
    rows = []
    for suite in suites:
        ns = [summaries[v].get(suite, {}).get("n", 0) for v in variants]
        rows.append([suite, "/".join(str(n) for n in sorted(set(ns))), SUITE_DESCRIPTIONS.get(suite, "")])
    doc.table(["suite", "items scored", "what it asks"], rows)
    doc.para(
        "Every answer is read by the same strict parser that pays the training rewards: a completion that is "
        "not in the required `<thinking>`/`<diagnosis>` format, or that names no single offered option, counts "
        "as wrong. Intervals of single accuracies are 95% Wilson intervals; differences between variants are "
        "tested on paired items (exact McNemar, bootstrap intervals resampling images). Suites named "
        "`<suite>_paper` keep the paper's item construction, whose option lists give the answer away to a "
        "guesser that never sees the image; read them only beside their blind ceiling.",
        note=True,
    )


def _suite_details(
    doc: _Doc, variants: list[str], summaries: Mapping[str, Mapping[str, Any]], suites: list[str]
) -> None:
    doc.heading("Per-suite details")
    for suite in suites:
        doc.heading(suite, 3)
        rows = []
        for v in variants:
            s = summaries[v].get(suite)
            if not s:
                continue
            errors = (
                ", ".join(
                    f"{k}: {n}"
                    for k, n in sorted(s.get("format_errors", {}).items(), key=lambda kv: (-kv[1], kv[0]))[:3]
                )
                or "none"
            )
            rows.append(
                [
                    v,
                    s["n"],
                    format_accuracy(s["accuracy"], s["ci_low"], s["ci_high"]),
                    s["mean_credit"],
                    s["format_ok_rate"],
                    s["parsed_rate"],
                    s.get("excluded", 0),
                    errors,
                ]
            )
        doc.table(
            [
                "variant",
                "n",
                "accuracy [95% CI]",
                "mean credit",
                "format ok",
                "answer read",
                "excluded (contaminated)",
                "most frequent format errors",
            ],
            rows,
        )


def _likelihood_section(doc: _Doc, variants: list[str], summaries: Mapping[str, Mapping[str, Any]]) -> None:
    likelihood = likelihood_table({v: summaries[v] for v in variants})
    if likelihood.empty or not len(likelihood.columns):
        return
    doc.heading("Answer likelihood")
    doc.para(
        'Accuracy [95% CI] when the answer is the offered option whose whole answer text ("B. benign '
        'neoplasm") the model finds most probable after its own reasoning, instead of the option it wrote. '
        "Read it next to the ablation table: far above the generated-answer accuracy means the model knows the "
        "answer but does not write it down in the required form. It never replaces the generated answer; biases "
        "of an untrained model (short or frequent option texts) show in the base row."
    )
    doc.table(["variant", *likelihood.columns], [[v, *likelihood.loc[v]] for v in likelihood.index])


def _guessing_section(
    doc: _Doc,
    summaries: Mapping[str, Mapping[str, Any]],
    baselines: pd.DataFrame | None,
    suites: list[str],
    blind: pd.DataFrame | None = None,
) -> None:
    doc.heading("Against image-blind guessing")
    _paired_blind_table(doc, blind, suites)
    if baselines is None or baselines.empty:
        doc.para("No image-blind baselines were supplied; accuracies cannot be read against guessing.", note=True)
        return
    doc.para(
        "What a guesser that never looks at the image scores on the same items (expected accuracy; it sees only "
        "the option texts, the public taxonomy and DDx graph): a uniformly random option; the option gold most "
        "often in the other folds (cross-fitted); the option with the most offered taxonomy ancestors; the "
        "deepest; the longest text; the most lexically central; the most DDx-central; and a cross-fitted model "
        "on all of these. The paired table above is the verdict for generated answers; answer-likelihood "
        "accuracy is read against the best guess by its 95% interval."
    )
    columns = list(baselines.columns)
    guessers = columns[columns.index("n") + 1 : columns.index("best")]  # whichever guessers the table was built with
    rows = [
        [r["suite"], r["n"], *(r[g] for g in guessers), r["best"], r["best_guesser"]]
        for r in baselines.to_dict("records")
        if r["suite"] in suites
    ]
    doc.table(["suite", "n", *(g.replace("_", " ") for g in guessers), "best guess", "best guesser"], rows)
    for title, likelihood in (("Generated answer", False), ("Answer likelihood", True)):
        if not likelihood and blind is not None and len(blind):
            continue  # the paired table above replaces the interval-against-a-bar verdicts
        verdicts = versus_guessing(summaries, baselines, likelihood=likelihood)
        verdicts = verdicts[[c for c in verdicts.columns if c in suites and (verdicts[c] != NOT_EVALUATED).any()]]
        if len(verdicts.columns):
            doc.para(f"{title} against the best guess:")
            doc.table(["variant", *verdicts.columns], [[v, *verdicts.loc[v]] for v in verdicts.index])


def _malignancy_section(doc: _Doc, variants: list[str], summaries: Mapping[str, Mapping[str, Any]]) -> None:
    doc.heading("Malignancy safety")
    rows = []
    for v in variants:
        mal = summaries[v].get(MALIGNANCY_SUITE, {}).get("malignancy")
        if mal:
            rows.append(
                [
                    v,
                    mal["n_positive"],
                    mal["n_benign"],
                    format_accuracy(mal["malignant_miss_rate"], mal["miss_rate_ci_low"], mal["miss_rate_ci_high"]),
                    mal["sensitivity"],
                    mal["specificity"],
                    mal["bucket_accuracy"],
                ]
            )
    if not rows:
        doc.para("The malignancy suite was not evaluated.", note=True)
        return
    doc.para(
        "The malignant-miss rate is the share of malignant or precancerous lesions the model did not call "
        "malignant or precancerous. It is the number that matters most clinically: lower is safer. An "
        "unreadable answer counts as a miss."
    )
    doc.table(
        [
            "variant",
            "malignant + precancerous",
            "benign",
            "miss rate [95% CI]",
            "sensitivity",
            "specificity",
            "3-way agreement",
        ],
        rows,
    )


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


def _paired_blind_table(doc: _Doc, blind: pd.DataFrame | None, suites: list[str]) -> None:
    if blind is None or blind.empty or "best_guesser" not in blind:
        return
    doc.para(
        "Generated answers against the suite's best blind guesser on the same items (difference with a "
        'bootstrap 95% interval resampling images; "above guessing" needs the whole interval above 0):'
    )
    shown = blind[blind["suite"].isin(suites) & blind["best_guesser"].notna()]
    doc.table(
        ["variant", "suite", "n", "accuracy", "best guesser", "its accuracy", "difference [95% CI]", "verdict"],
        [
            [
                r["variant"],
                r["suite"],
                r["n"],
                r["accuracy"],
                r["best_guesser"],
                r["best_blind"],
                f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                r["verdict"],
            ]
            for r in shown.to_dict("records")
        ],
    )


def _p(value: Any) -> str:
    """A p-value that stays readable when tiny (0.0000 would claim an impossible certainty)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{v:.1e}" if v < 1e-3 else f"{v:.3f}"


def _blind_ceiling(baselines: pd.DataFrame | None) -> dict[str, str]:
    if baselines is None or baselines.empty or "best" not in baselines:
        return {}
    return {r["suite"]: f"{r['best']:.2f} ({r['best_guesser']})" for r in baselines.to_dict("records")}


def _image_use_section(doc: _Doc, image_use: pd.DataFrame | None) -> None:
    doc.heading("Does each variant read the image?")
    if image_use is None or image_use.empty:
        doc.para("No image controls were evaluated; whether a variant reads the image is unknown.", note=True)
        return
    doc.para(
        "The same items answered again with the image replaced by another item's image of the suite "
        "(shuffled) and by a blank grey image. A model that reads the lesion loses accuracy when the image no "
        'longer belongs to the question; one that answers from the option list does not. "uses the image" '
        "needs real minus shuffled above 0 with its whole 95% interval (bootstrap resampling images); McNemar p "
        "is the exact paired test of the same difference."
    )
    doc.table(
        [
            "variant",
            "suite",
            "n",
            "real",
            "shuffled",
            "blank",
            "real - shuffled [95% CI]",
            "McNemar p",
            "real - blank",
            "verdict",
        ],
        [
            [
                r["variant"],
                r["suite"],
                r["n"],
                r["real"],
                r["shuffled"],
                r["blank"],
                f"{r['real_minus_shuffled']:+.3f} [{r['shuffled_ci_low']:+.3f}, {r['shuffled_ci_high']:+.3f}]",
                _p(r["shuffled_mcnemar_p"]),
                f"{r['real_minus_blank']:+.3f}",
                r["verdict"],
            ]
            for r in image_use.to_dict("records")
        ],
    )


def _shape_section(doc: _Doc, claims: pd.DataFrame | None) -> None:
    doc.heading("Does the paper's ablation shape hold?")
    if claims is None or claims.empty:
        doc.para("No paired comparison of the variants was supplied.", note=True)
        return
    shape = paper_shape(claims)
    doc.para(
        f"Paper claim: SFT+GRPO > SFT > base and RL-only < SFT+GRPO. On the primary suite "
        f"({shape['primary_suite']}): {shape['verdict']}. Rule: {shape['rule']}. Claims on `_paper` suites can "
        "be won by reading the option list; the set-first suites are the evidence."
    )
    rows = []
    for suite, block in shape["suites"].items():
        for c in block["claims"]:
            numbers = c.get("detail", "")
            if isinstance(c.get("ci_low"), float) and c["ci_low"] == c["ci_low"]:
                numbers += (
                    f"; difference {c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], "
                    f"{c['a_only']} vs {c['b_only']} discordant, McNemar p {_p(c['mcnemar_p'])}, "
                    f"Holm {_p(c['holm_p'])}"
                )
            rows.append([suite, c["claim"], c["verdict"], numbers])
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


def write_report(
    out_dir: str | Path,
    *,
    table: pd.DataFrame,
    summaries: Mapping[str, Mapping[str, Any]],
    scored: Mapping[str, Mapping[str, pd.DataFrame]],
    curves: Curves | None = None,
    contamination: Any = None,
    baselines: pd.DataFrame | None = None,
    versus_blind: pd.DataFrame | None = None,
    claims: pd.DataFrame | None = None,
    image_use: pd.DataFrame | None = None,
    title: str = "Skin-R1 evaluation report",
    caveats: Sequence[str] = (),
    description: str | None = None,
    depth_suite: str = "in_domain",
    confusion_suite: str = "in_domain",
    generated_at: str | None = None,
) -> ReportFiles:
    """Write report.md, report.html (self-contained) and figures/*.png under `out_dir`.

    `table` from `comparison.ablation_table`, `summaries` variant -> `variant_summary`, `scored` variant -> suite ->
    scored frame, `curves` from `read_curves`, `contamination` a `ContaminationReport` (or its summary frame, or
    suite -> excluded count), `baselines` from `baselines.blind_baselines`, `versus_blind`, `claims` (paired_claims)
    and `image_use` from `comparison`, `caveats` free text (e.g. "tiny random demo model: numbers are meaningless").
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    variants = [v for v in table.index if v in summaries]
    suites = table_suites(table)
    stamp = generated_at or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = _Doc()
    doc.heading(title, 1)
    doc.para(f"Generated {stamp}.", note=True)
    _evaluated_section(doc, variants, summaries, suites, description)

    doc.heading("Ablation table")
    headline = [s for s in suites if not s.endswith(PAPER_SUFFIX)]
    paper = [s for s in suites if s.endswith(PAPER_SUFFIX)]
    doc.para(
        "Accuracy [95% CI] per suite; rows follow the paper's ablation (base, SFT only, RL only, SFT+GRPO). "
        "The multiple-choice suites here are set-first: no image-blind guesser beats chance on them."
    )
    doc.table(["variant", *headline], [[v, *[table.at[v, s] for s in headline]] for v in variants])
    if paper:
        ceiling = _blind_ceiling(baselines)
        doc.para(
            "Paper-comparable suites (the authors' item construction), each beside the best image-blind "
            "guesser's accuracy on the same items: a number at or below that ceiling says nothing about the "
            "image."
        )
        doc.table(
            ["variant", *paper],
            [[v, *[table.at[v, s] for s in paper]] for v in variants]
            + [["best blind guesser", *[ceiling.get(s, "n/a") for s in paper]]],
        )
    _likelihood_section(doc, variants, summaries)
    _guessing_section(doc, {v: summaries[v] for v in variants}, baselines, suites, versus_blind)
    _image_use_section(doc, image_use)
    _shape_section(doc, claims)
    _malignancy_section(doc, variants, summaries)
    _ood_section(doc, table, variants)
    _suite_details(doc, variants, summaries, suites)

    figures: dict[str, Path] = {}
    doc.heading("Figures")
    pictures: list[tuple[str, Figure | None, str]] = [
        ("suite_accuracy", suite_accuracy_figure(table) if variants else None, "Accuracy per suite and variant.")
    ]
    depth_frames = {v: scored[v][depth_suite] for v in variants if depth_suite in scored.get(v, {})}
    if depth_frames:
        pictures.append(
            (
                "depth_accuracy",
                depth_accuracy_figure(depth_frames, suite=depth_suite),
                f"Accuracy by taxonomy depth of the label ({depth_suite} suite).",
            )
        )
    for v in variants:
        frame = scored.get(v, {}).get(confusion_suite)
        if frame is not None and len(frame):
            pictures.append(
                (
                    f"confusion_{v}",
                    confusion_figure(frame, v),
                    f"{v}: true label node vs chosen option node ({confusion_suite} suite).",
                )
            )
    pictures.append(
        (
            "training_curves",
            curves_figure(curves) if curves else None,
            "Training loss and reward curves read back from MLflow.",
        )
    )
    for name, fig, caption in pictures:
        if fig is None:
            continue
        png = figure_png(fig)
        path = out / "figures" / f"{name}.png"
        write_bytes(path, png)
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
        doc.para(
            "Evaluation items whose image (SHA-256), a near-duplicate of it (perceptual hash within the "
            "calibrated distance) or whose sample id also occurs in training data were removed before scoring."
        )
        doc.table(
            ["suite", "items checked", "excluded", "by image hash", "by sample id", "by near-duplicate", "fraction"],
            rows,
        )
    else:
        doc.para(
            "No contamination check was supplied; overlap between training and evaluation data is unknown.", note=True
        )

    doc.heading("Caveats")
    doc.bullets([*caveats, *_auto_caveats(table, summaries)] or ["none stated"])

    md_path, html_path = out / "report.md", out / "report.html"
    write_text(md_path, "\n".join(doc.md))
    write_text(
        html_path,
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{_CSS}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n",
    )
    return ReportFiles(md_path, html_path, figures)

"""The offline A/B report: markdown and one self-contained HTML file (plots inline as base64 PNG).

Written atomically into a folder under the workspace's reports directory; `log_report` puts the
same files, the figures and the headline numbers into the active MLflow run.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recsys.evaluation.ab import ABResult
from recsys.evaluation.bootstrap import Delta
from recsys.io import write_bytes, write_json


def _f(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _count(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def _delta_rows(deltas: list[Delta]) -> list[list[str]]:
    return [
        [
            d.metric,
            _f(d.control),
            _f(d.treatment),
            f"{d.delta:+.4f}",
            f"[{d.low:+.4f}, {d.high:+.4f}]",
            _pct(d.lift),
            f"[{_pct(d.lift_low)}, {_pct(d.lift_high)}]",
            f"{d.p_value:.3g}",
            f"{d.n:,}",
        ]
        for d in deltas
    ]


DELTA_HEAD = ["metric", "control", "treatment", "delta", "CI", "lift", "lift CI", "p", "n"]


def tables(result: ABResult) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) of every table, shared by the markdown and HTML renderers."""
    out = []
    conf = f"{1 - result.config.get('alpha', 0.05):.0%}"
    reps = result.config.get("bootstrap", "?")
    for seg, deltas in result.ranking.items():
        note = f"Paired bootstrap over users ({reps} replicates, {conf} intervals)."
        out.append((f"Ranking metrics — {seg}", DELTA_HEAD, _delta_rows(deltas), note))
    if result.offline:
        primary = result.primary.estimator if result.primary else None
        rows = []
        for o in result.offline:
            rows.append(
                [
                    o.estimator,
                    "yes" if o.estimator == primary else "",
                    _f(o.control.estimate),
                    f"[{_f(o.control.low)}, {_f(o.control.high)}]",
                    _f(o.treatment.estimate),
                    f"[{_f(o.treatment.low)}, {_f(o.treatment.high)}]",
                    _pct(o.delta.lift),
                    f"[{_pct(o.delta.lift_low)}, {_pct(o.delta.lift_high)}]",
                    f"{o.delta.p_value:.3g}",
                    _count(o.ess_control),
                    _count(o.ess_treatment),
                ]
            )
        choice = f"Primary: {result.primary.reason}. " if result.primary else ""
        note = (
            "CTR per shown slot under the position-based click model. ips, snips, dr, sndr reweight a "
            "logged item in its own slot; the item-level pbm_* estimators wherever the target puts it "
            "(they need the log's slot_propensities), so their weights are smaller. ESS: effective "
            "sample size of each estimator's importance weights (n/a: no weights). "
            + choice
            + " ".join(f"{arm}: {rep.describe()}." for arm, rep in result.support.items())
        )
        out.append(
            (
                "Off-policy CTR estimates",
                [
                    "estimator",
                    "primary",
                    "control",
                    "CI",
                    "treatment",
                    "CI",
                    "lift",
                    "lift CI",
                    "p",
                    "ESS control",
                    "ESS treatment",
                ],
                rows,
                note,
            )
        )
    if result.truth:
        rows = [
            [
                t.policy,
                t.estimator,
                _f(t.estimate),
                f"[{_f(t.low)}, {_f(t.high)}]",
                _f(t.truth),
                "yes" if t.covered else "NO",
            ]
            for t in result.truth
        ]
        lift = result.true_lift()
        out.append(
            (
                "Truth check: estimate vs the simulator's online A/B",
                ["arm", "estimator", "estimate", "CI", "true CTR", "covered"],
                rows,
                f"The simulator serves the held-out window's requests with each policy. True online "
                f"lift (treatment vs control): {_pct(lift)}.",
            )
        )
    return out


def render_markdown(result: ABResult, figures: dict[str, bytes] | None = None) -> str:
    lines = [
        f"# Offline A/B: {result.treatment} vs {result.control}",
        "",
        f"**{result.verdict.line()}**",
        "",
        f"- control: `{result.control}`",
        f"- treatment: `{result.treatment}`",
        f"- window: {result.window}",
        f"- users evaluated: {result.n_users:,}; K = {result.k}",
        f"- rule: primary `{result.verdict.primary}`, min lift {result.config.get('min_lift', 0):+.1%}, "
        f"guardrails {result.config.get('guardrails', [])}",
    ]
    lines += [f"- {c}" for c in result.verdict.checks]
    if result.ope_note:
        lines += ["", f"> Off-policy part skipped: {result.ope_note}"]
    if result.truth_note:
        lines += ["", f"> Truth check skipped: {result.truth_note}"]
    for note in result.notes:
        lines += ["", f"> {note}"]
    for title, head, rows, note in tables(result):
        lines += ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if note:
            lines += ["", note]
    for name in figures or {}:
        lines += ["", f"![{name}]({name}.png)"]
    return "\n".join(lines) + "\n"


def render_html(result: ABResult, figures: dict[str, bytes] | None = None) -> str:
    """One file, no external resources: tables and base64-embedded PNG plots."""
    e = html.escape
    colour = {"ship": "#1a7f37", "don't ship": "#cf222e"}.get(result.verdict.decision, "#9a6700")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Offline A/B: {e(result.treatment)} vs {e(result.control)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
        "td:first-child{text-align:left}.note{color:#555}</style></head><body>",
        f"<h1>Offline A/B: {e(result.treatment)} vs {e(result.control)}</h1>",
        f"<p style='font-size:1.3em;color:{colour}'><b>{e(result.verdict.line())}</b></p><ul>",
        f"<li>control: <code>{e(result.control)}</code></li>",
        f"<li>treatment: <code>{e(result.treatment)}</code></li>",
        f"<li>window: {e(result.window)}</li><li>users evaluated: {result.n_users:,}; K = {result.k}</li>",
    ]
    parts += [f"<li>{e(c)}</li>" for c in result.verdict.checks]
    parts.append("</ul>")
    for label, note in (
        ("Off-policy part skipped", result.ope_note),
        ("Truth check skipped", result.truth_note),
    ):
        if note:
            parts.append(f"<p class='note'><b>{label}:</b> {e(note)}</p>")
    parts += [f"<p class='note'>{e(n)}</p>" for n in result.notes]
    for title, head, rows, note in tables(result):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append(f"</table><p class='note'>{e(note)}</p>")
    for name, png in (figures or {}).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{e(name.replace('_', ' '))}</h2><img alt='{e(name)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def figures(result: ABResult) -> dict[str, bytes]:
    """Relative lifts with intervals (ranking + off-policy) and estimator-vs-truth plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    deltas = [d for d in result.deltas().values() if math.isfinite(d.lift)]
    if deltas:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(deltas) + 1.2))
        y = np.arange(len(deltas))
        lift = np.array([d.lift for d in deltas])
        err = np.array([[d.lift - d.lift_low, d.lift_high - d.lift] for d in deltas]).T
        # a percentile interval need not contain the point estimate (skewed ratios): clip the bars
        ax.errorbar(lift, y, xerr=np.clip(np.nan_to_num(err), 0, None), fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, [d.metric for d in deltas])
        ax.set_xlabel("relative lift, treatment vs control (interval)")
        ax.invert_yaxis()
        out["metric_lifts"] = _png(fig)
    if result.truth:
        rows = result.truth
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
        y = np.arange(len(rows))
        est = np.array([r.estimate for r in rows])
        err = np.array([[r.estimate - r.low, r.high - r.estimate] for r in rows]).T
        ax.errorbar(est, y, xerr=np.clip(np.nan_to_num(err), 0, None), fmt="o", capsize=3, label="estimate")
        ax.scatter([r.truth for r in rows], y, marker="x", color="red", zorder=3, label="online truth")
        ax.set_yticks(y, [f"{r.policy} · {r.estimator}" for r in rows])
        ax.set_xlabel("CTR per slot")
        ax.legend(loc="best")
        ax.invert_yaxis()
        out["estimators_vs_truth"] = _png(fig)
    return out


def _ess(result: ABResult) -> dict[str, float | None] | None:
    """{"control": n, "treatment": n}: ESS of the primary estimator (or of the best-supported one
    when none qualified); None without off-policy estimates. JSON has no NaN: NaN becomes None."""
    if not result.primary or not result.primary.ess:
        return None
    return {arm: (v if math.isfinite(v) else None) for arm, v in result.primary.ess.items()}


def summary_dict(result: ABResult) -> dict:
    """JSON-able summary (verdict, deltas, truth) written beside the report."""
    return {
        "control": result.control,
        "treatment": result.treatment,
        "verdict": result.verdict.decision,
        "reason": result.verdict.reason,
        "window": result.window,
        "n_users": result.n_users,
        "ranking": {seg: [asdict(d) for d in ds] for seg, ds in result.ranking.items()},
        "offline": [
            {
                "estimator": o.estimator,
                "control": asdict(o.control),
                "treatment": asdict(o.treatment),
                "delta": asdict(o.delta),
                "ess": {arm: (v if math.isfinite(v) else None)
                        for arm, v in (("control", o.ess_control), ("treatment", o.ess_treatment))},
            }
            for o in result.offline or []
        ],
        "offline_primary": result.primary.estimator if result.primary else None,
        "offline_primary_reason": result.primary.reason if result.primary else None,
        "ess": _ess(result),
        "support": {arm: asdict(s) for arm, s in result.support.items()},
        "truth": [{**asdict(t), "covered": t.covered} for t in result.truth or []],
        "truth_ctr": result.truth_ctr,
        "ope_note": result.ope_note,
        "truth_note": result.truth_note,
        "notes": result.notes,
        "config": result.config,
    }


def write_report(result: ABResult, folder: Path) -> dict[str, Path]:
    """Write report.md (+ PNGs beside it), report.html (self-contained) and summary.json atomically."""
    figs = figures(result)
    paths = {}
    for name, png in figs.items():
        paths[name] = write_bytes(png, folder / f"{name}.png")
    paths["markdown"] = write_bytes(render_markdown(result, figs).encode(), folder / "report.md")
    paths["html"] = write_bytes(render_html(result, figs).encode(), folder / "report.html")
    paths["summary"] = write_json(summary_dict(result), folder / "summary.json")
    return paths


def log_report(result: ABResult, paths: dict[str, Path]) -> None:
    """Log the report files, headline metrics and the verdict to the active MLflow run."""
    import mlflow

    mlflow.set_tags(
        {
            "ab.control": result.control,
            "ab.treatment": result.treatment,
            "ab.verdict": result.verdict.decision,
            "ab.offline_primary": (result.primary.estimator if result.primary else None) or "none",
        }
    )
    for d in result.deltas().values():
        key = d.metric.replace("@", "_at_").replace(":", "_")
        for suffix, value in (
            ("control", d.control),
            ("treatment", d.treatment),
            ("lift", d.lift),
            ("lift_low", d.lift_low),
            ("lift_high", d.lift_high),
            ("p", d.p_value),
        ):
            if math.isfinite(value):
                mlflow.log_metric(f"{key}.{suffix}", value)
    for t in result.truth or []:
        mlflow.log_metric(f"truth.{t.estimator}.{t.policy}.covered", float(t.covered))
    for path in paths.values():
        mlflow.log_artifact(str(path), artifact_path="report")

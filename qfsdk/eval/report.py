"""Evaluation reports: one JSON document, a Markdown summary and PNG plots, written atomically.

The report is a plain dict: ``results`` (set -> model -> metrics), and for fidelity runs
``fidelity``, ``sensitivity`` and ``recommendation``; ``notes`` collects what was skipped.
Plots need matplotlib (the ``dev`` extra); without it they are skipped with a note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qfsdk.runtime.files import atomic_output

REPORT_JSON = "eval.json"
REPORT_MD = "eval.md"
RECOMMENDED_CONFIG = "recommended_config.json"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _cell(metrics: dict[str, Any] | None) -> str:
    """Accuracy mean ± std for a .bin set, TAR at FAR=1e-4 for an IJB set."""
    if metrics is None:
        return "-"
    if "accuracy" in metrics:
        return f"{_percent(metrics['accuracy'])} ± {_percent(metrics['accuracy_std'])}"
    return _percent(metrics["tar_at_far"].get("0.0001"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]


def verification_markdown(results: dict[str, dict[str, dict[str, Any]]], models: list[str]) -> list[str]:
    """The comparison table (accuracy % on .bin sets, TAR@FAR=1e-4 % on IJB) and a TAR@FAR table."""
    sets = list(results)
    lines = ["## Verification", "", "Accuracy % (10-fold mean ± std) on .bin sets; TAR % at FAR=1e-4 on IJB sets.", ""]
    lines += _table(["Model", *sets], [[m, *(_cell(results[s].get(m)) for s in sets)] for m in models])
    tar_rows = [
        [model, name, far, _percent(tar)]
        for name in sets
        for model, metrics in results[name].items()
        for far, tar in metrics["tar_at_far"].items()
    ]
    return lines + ["", *_table(["Model", "Set", "FAR", "TAR %"], tar_rows)]


def fidelity_markdown(report: dict[str, Any]) -> list[str]:
    """Fidelity summary, per-layer sensitivity and the mixed-precision recommendation."""
    fidelity = report["fidelity"]
    flips = "-" if fidelity["decision_flips"] is None else f"{fidelity['decision_flips']} of {fidelity['pairs']}"
    lines = ["## Fidelity", "", *_table(
        ["Float", "Quantized", "Images", "Min cosine", "Mean cosine", f"Flips ({fidelity['distance']} {fidelity['threshold']})"],
        [[fidelity["float"], fidelity["quantized"], str(fidelity["images"]), f"{fidelity['min_cosine']:.5f}",
          f"{fidelity['mean_cosine']:.5f}", flips]],
    )]  # fmt: skip
    if report.get("sensitivity"):
        lines += ["", "## Per-layer sensitivity", "", *_table(
            ["Layer", "Module", "W/A bits", "SQNR dB in network", "SQNR dB layer alone", "Embedding SQNR dB, only it quantized"],
            [[s["name"], s["module"], f"{s['weight_bits']}/{s['act_bits']}", f"{s['sqnr_db']:.1f}", f"{s['local_sqnr_db']:.1f}",
              f"{s['output_sqnr_db']:.1f}"] for s in report["sensitivity"]],
        )]  # fmt: skip
    recommendation = report.get("recommendation")
    if recommendation:
        verdict = "met" if recommendation["met"] else "NOT met (even with every candidate layer at 8 bit)"
        lines += ["", "## Mixed precision", "",
                  f"Budget min cosine {recommendation['budget']}: {verdict}. Keep at W8A8: "
                  f"{', '.join(f'`{n}`' for n in recommendation['keep_8bit']) or 'none'}. Min cosine "
                  f"{recommendation['min_cosine_before']:.5f} -> {recommendation['min_cosine_after']:.5f}.",
                  f"Apply with `qfsdk calibrate --config {RECOMMENDED_CONFIG} ...`."]  # fmt: skip
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    lines = ["# qfsdk eval", ""]
    if report.get("results"):
        lines += verification_markdown(report["results"], [m["label"] for m in report["models"]]) + [""]
    if report.get("fidelity"):
        lines += fidelity_markdown(report) + [""]
    if report.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in report["notes"]), ""]
    return "\n".join(lines)


def _plot_roc(results: dict[str, dict[str, dict[str, Any]]], path: Path, plt: Any) -> None:
    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for axis, (name, per_model) in zip(axes[0], results.items()):
        for model, metrics in per_model.items():
            points = [(f, t) for f, t in zip(metrics["roc"]["far"], metrics["roc"]["tar"]) if f > 0]
            axis.plot([f for f, _ in points], [t for _, t in points], label=model)
        axis.set(xscale="log", xlabel="FAR", ylabel="TAR", title=name)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    _save(figure, path, plt)


def _plot_sensitivity(sensitivity: list[dict[str, Any]], path: Path, plt: Any) -> None:
    figure, axis = plt.subplots(figsize=(max(6, 0.25 * len(sensitivity)), 4))
    positions = range(len(sensitivity))
    series = {"in network": "sqnr_db", "layer alone": "local_sqnr_db", "embedding, only it quantized": "output_sqnr_db"}
    for offset, (label, key) in zip((-0.27, 0.0, 0.27), series.items()):
        axis.bar([p + offset for p in positions], [s[key] for s in sensitivity], width=0.27, label=label)
    axis.set_xticks(list(positions), [s["name"] for s in sensitivity], rotation=90, fontsize="x-small")
    axis.set(ylabel="SQNR (dB)", title="Per-layer sensitivity (lower = more sensitive)")
    axis.legend()
    _save(figure, path, plt)


def _save(figure: Any, path: Path, plt: Any) -> None:
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# file name -> (report key it plots, plotting function)
PLOTS = {"roc.png": ("results", _plot_roc), "sensitivity.png": ("sensitivity", _plot_sensitivity)}


def write_report(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write ``eval.json``, ``eval.md``, the plots and (fidelity) the recommended config into ``directory``."""
    directory = Path(directory)
    plots = {name: (plot, report[key]) for name, (key, plot) in PLOTS.items() if report.get(key)}
    plt = _pyplot() if plots else None
    if plots and plt is None:
        report.setdefault("notes", []).append("plots skipped: matplotlib is not installed (pip install matplotlib)")
    written = []
    if plt is not None:
        for name, (plot, data) in plots.items():
            plot(data, directory / name, plt)
            written.append(directory / name)
    texts = {REPORT_JSON: json.dumps(report, indent=2), REPORT_MD: to_markdown(report)}
    if report.get("recommendation"):
        texts[RECOMMENDED_CONFIG] = json.dumps(report["recommendation"]["config"], indent=2)
    for name, text in texts.items():
        with atomic_output(directory / name) as tmp:
            tmp.write_text(text + "\n")
        written.append(directory / name)
    return written

"""``qfsdk eval``: verification benchmarks for one or more models, or a float-vs-quantized fidelity report."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qfsdk.cli.common import InputPath


@click.command("eval")
@click.argument("models", nargs=-1, metavar="[MODEL]...")
@click.option("--bin", "bins", multiple=True, type=InputPath(dir_okay=False, path_type=Path),
              help="insightface .bin verification set (lfw.bin, cfp_fp.bin, ...); repeatable.")
@click.option("--ijb", "ijbs", multiple=True, type=InputPath(file_okay=False, path_type=Path),
              help="IJB-B/IJB-C folder (meta/ and loose_crop/, insightface layout); repeatable.")
@click.option("--fidelity", nargs=2, metavar="FLOAT QUANT", help="Compare a quantized model with its float model on --images.")
@click.option("--images", type=InputPath(file_okay=False, path_type=Path),
              help="Folder of aligned face crops for --fidelity (a few dozen: every candidate config runs on all).")
@click.option("--budget", type=click.FloatRange(-1.0, 1.0), default=0.99, show_default=True,
              help="Minimum cosine the mixed-precision recommendation must reach.")
@click.option("--threshold", type=float, help="Decision threshold for flips (default: the model's; cosine models have none).")
@click.option("--calib-data", "calib_dir", type=InputPath(file_okay=False, path_type=Path),
              help="The data QUANT was calibrated on (folder or `qfsdk synth` dataset): each candidate config is "
                   "recalibrated on it, as `qfsdk calibrate --config` would.")
@click.option("--sensitivity-batches", type=click.IntRange(1), default=2, show_default=True,
              help="Batches of --images used for per-layer SQNR.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write eval.json, eval.md and PNG plots (and recommended_config.json) here.")
def eval_command(models, bins, ijbs, fidelity, images, budget, threshold, calib_dir, sensitivity_batches, batch_size,
                 as_json, report_dir) -> None:
    """Evaluate MODELs (zoo name, NAME=float-checkpoint, quantized .safetensors, .onnx, TensorRT engine)
    on verification sets, or with --fidelity FLOAT QUANT --images DIR report how far QUANT is from FLOAT."""
    from qfsdk.eval import evaluate, load_model, to_markdown, write_report

    if fidelity:
        if models or bins or ijbs or images is None:
            raise click.UsageError("--fidelity FLOAT QUANT needs --images DIR and takes no MODEL, --bin or --ijb")
        report = _fidelity(fidelity, images, budget, threshold, calib_dir, sensitivity_batches, batch_size)
    else:
        if not models or not (bins or ijbs) or calib_dir is not None:
            raise click.UsageError("give MODEL... with --bin FILE or --ijb DIR, or --fidelity FLOAT QUANT --images DIR")
        report = evaluate([load_model(spec, batch_size) for spec in models], bins, ijbs, batch_size, progress=True)
    if report_dir is not None:
        for path in write_report(report, report_dir):
            click.echo(f"wrote {path}", err=True)
    click.echo(json.dumps(report, indent=2) if as_json else to_markdown(report))


def _fidelity(specs: tuple[str, str], images: Path, budget: float, threshold: float | None, calib_dir: Path | None,
              sensitivity_batches: int, batch_size: int) -> dict:
    """The fidelity report, with the calibration folder (if any) read for the float model's contract."""
    from qfsdk.eval import fidelity_report, load_model

    float_model, quant_model = (load_model(spec, batch_size) for spec in specs)
    calibration = None
    if calib_dir is not None and float_model.module is not None:
        from qfsdk.calib.sources import open_source

        calibration = open_source(calib_dir, float_model.module, batch_size=batch_size).data
    return fidelity_report(float_model, quant_model, images, budget, threshold, sensitivity_batches, calibration)

"""``qfsdk calibrate``: post-training quantization on synthetic (or your own) images."""

from __future__ import annotations

import copy
from pathlib import Path

import click

from qfsdk.calib.synth import DEFAULT_SOURCE, sources_help
from qfsdk.quant.algorithms import ALGORITHMS, BEST_RECIPES, LOW_BIT_RECIPE

from .common import InputPath, build_config, check_output, method_option, model_options, quant_options


@click.command()
@model_options
@quant_options
@click.option("--synthetic", is_flag=True, help="Generate synthetic calibration images for the model (see --source).")
@click.option("--source", "synth_source", help="Where --synthetic images come from (default: "
              f"{DEFAULT_SOURCE}). {sources_help()}.")
@click.option("--data", "data_dir", type=InputPath(file_okay=False, path_type=Path),
              help="Folder of aligned face images, or a dataset written by `qfsdk synth`.")
@click.option("--num-images", type=click.IntRange(1), default=64, show_default=True, help="Synthetic images to generate.")
@click.option("--iterations", type=click.IntRange(1),
              help="Inversion steps per synthetic image batch (inversion and hybrid sources; default: the source's).")
@method_option
@click.option("--recipe",
              help="PTQ steps in order, comma-separated, each STEP or STEP:KEY=VALUE[:KEY=VALUE] "
                   "(e.g. ranges,reconstruct:iterations=150); default: the PTQ benchmark's best for the weight bits ("
                   + "; ".join(f"{b}-bit: {','.join(r)}" for b, r in BEST_RECIPES.items())
                   + f"; fewer bits: {','.join(LOW_BIT_RECIPE)}). Steps: "
                   + "; ".join(f"{a.name}: {a.description}" for a in ALGORITHMS.values()) + ".")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Images per synthesis and calibration batch.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Quantized checkpoint to write (.safetensors).")
def calibrate(model_name, weights, bits, scheme, asymmetric_acts, keep_8bit, config_file, synthetic, synth_source, data_dir, num_images, iterations, method,
              recipe, batch_size, seed, output) -> None:
    """Quantize MODEL and calibrate its activation ranges (PTQ), without real face data."""
    import torch

    import qfsdk
    from qfsdk.calib.sources import open_source
    from qfsdk.loading import load_model
    from qfsdk.models.card import card_of
    from qfsdk.quant.api import check_config
    from qfsdk.quant.end_layers import raised_text
    from qfsdk.quant.float_fallback import float_layers, float_share
    from qfsdk.quant.recipe import Recipe

    source = _data_source(data_dir, synthetic, synth_source)
    check_output(output, weights, config_file)
    config = build_config(bits, scheme, keep_8bit, config_file, asymmetric_acts=asymmetric_acts)
    ptq = Recipe.create(config, method, recipe)  # validates the method and the steps before any work
    model = load_model(model_name, weights, seed=seed, quantized=False)
    check_config(model, ptq.config)
    data, description = open_source(source, model, num_images=num_images, seed=seed, batch_size=batch_size,
                                    iterations=iterations, progress=True, synth_source=synth_source or DEFAULT_SOURCE)
    quantized = qfsdk.quantize(copy.deepcopy(model), ptq, data, progress=True)

    with torch.no_grad():
        batch = next(iter(data))
        cosine = torch.nn.functional.cosine_similarity(quantized(batch), model(batch)).min().item()
    qfsdk.save_quantized(quantized, output, extra={"data": description})
    click.echo(f"calibrated {model_name}, {card_of(model).weights} ({ptq}) on {description}")
    click.echo(f"quantized vs float on a calibration batch: min cosine {cosine:.5f}")
    kept = float_layers(quantized)
    if kept:
        click.echo(f"kept in float: {', '.join(kept)} ({100 * float_share(quantized, batch[:1]):.2f}% of the "
                   "multiply-accumulates; the rest runs int8)")
    raised = raised_text(quantized)
    if raised:
        click.echo(f"above {config.weight_bits}/{config.act_bits}-bit: {raised} (int8 kernels run every width at the same speed)")
    click.echo(f"wrote {output}")


def _data_source(data_dir: Path | None, synthetic: bool, synth_source: str | None) -> Path | str:
    """What ``open_source`` reads: the ``--data`` folder, else the ``synthetic`` keyword."""
    from qfsdk.calib.sources import SYNTHETIC
    from qfsdk.calib.synth import get_source

    if data_dir is not None and synthetic:
        raise click.UsageError("--synthetic and --data DIR exclude each other: choose one source of calibration images")
    if synth_source is not None:
        if not synthetic:
            raise click.UsageError("--source picks where --synthetic images come from: add --synthetic")
        get_source(synth_source)  # an unknown name fails before any work
    if data_dir is not None:
        return data_dir
    if synthetic:
        return SYNTHETIC
    raise click.UsageError("choose the calibration data: --synthetic or --data DIR")

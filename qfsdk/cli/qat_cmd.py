"""``qfsdk qat``: quantization-aware training with distillation from the float model."""

from __future__ import annotations

import copy
from pathlib import Path

import click

from qfsdk.calib.synth import DEFAULT_SOURCE, sources_help
from qfsdk.quant.config import KD_LOSS_CHOICES
from qfsdk.quant.recipe import QAT_START_STEPS

from .common import build_config, check_output, method_option, model_options, quant_options


STREAMED_SOURCE = "generator"  # cheap to remake, so streamed instead of written to the .synth folder
START_IMAGES = 256  # the PTQ starting point calibrates on the first of the training images at most


def state_path_for(output: Path) -> Path:
    """Where the resumable training state of ``output`` lives."""
    return output.with_name(output.stem + ".qat-state.safetensors")


def synthetic_dir_for(output: Path) -> Path:
    """Where ``--data synthetic`` keeps its generated dataset (reused by ``--resume``)."""
    return output.with_name(output.stem + ".synth")


def prepare_data_dir(data: str, output: Path, model_name: str, weights: Path | None, num_images: int, seed: int,
                     iterations: int | None, source: str) -> Path:
    """The training image folder; ``synthetic`` is generated once, by rank 0, and resumes if interrupted."""
    from qfsdk.calib.synth import synthesize
    from qfsdk.quant.qat import barrier, distributed_context

    if data != "synthetic":
        folder = Path(data)
        if not folder.is_dir():
            raise click.BadParameter(f"{folder} is not a folder", param_hint="--data")
        return folder
    folder = synthetic_dir_for(output)
    if distributed_context()[0] == 0:
        synthesize(model_name, folder, num_images, seed=seed, weights=weights, iterations=iterations, source=source)
    barrier()
    return folder


def training_images(teacher, data: str, source: str, output: Path, model_name: str, weights: Path | None,
                    num_images: int, seed: int, iterations: int | None, batch_size: int):  # fmt: skip
    """(training images, their description): the generator's faces streamed, else a folder's images in memory."""
    import torch

    from qfsdk.calib.sources import open_source

    if data == "synthetic" and source == STREAMED_SOURCE:
        from qfsdk.calib.face_stream import FaceStream

        if iterations is not None:
            raise click.UsageError(f"--iterations counts inversion steps; the {source} source runs none: drop it")
        stream = FaceStream(teacher.contract, num_images, seed=seed)
        return stream, f"{num_images} generator faces made on demand (seed {seed})"
    folder = prepare_data_dir(data, output, model_name, weights, num_images, seed, iterations, source)
    images, description = open_source(folder, teacher, batch_size=batch_size)
    return torch.cat(list(images)), description


def check_resumable(state: Path) -> None:
    """Refuse ``--resume`` from a state file that is damaged or not a QAT state (a missing one is ``train_qat``'s to report)."""
    from qfsdk.errors import CheckpointError
    from qfsdk.file_kinds import identify

    kind = identify(state)
    if kind.name not in ("qat-state", "missing"):
        raise CheckpointError(f"{state} is {kind.description}, not a QAT state to resume: delete it and run "
                                   "without --resume to start over")


@click.command()
@model_options
@quant_options
@click.option("--data", "data", default="synthetic", show_default=True,
              help="'synthetic' (generated from the model, kept in OUTPUT's .synth folder) or a folder of aligned "
                   "face images / `qfsdk synth` dataset.")
@click.option("--source", "synth_source", default=DEFAULT_SOURCE, show_default=True,
              help=f"Where --data synthetic images come from. {sources_help()}. The generator's faces are made on demand "
                   "while training (nothing written; any --num-images), the others written once to the .synth folder.")
@click.option("--num-images", type=click.IntRange(1), default=64, show_default=True, help="Synthetic images to generate.")
@click.option("--iterations", type=click.IntRange(1),
              help="Inversion steps per synthetic image batch (inversion and hybrid sources; default: the source's).")
@click.option("--steps", type=click.IntRange(1), required=True, help="Training steps.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Batch size per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate (default: 0.1 x global batch / 512).")
@click.option("--freeze-bn", is_flag=True, help="Keep the student's BatchNorm on running statistics.")
@click.option("--kd-loss", type=click.Choice(KD_LOSS_CHOICES), default="auto", show_default=True,
              help="normalized: MSE of L2-normalised embeddings (the paper); raw: also keeps norms (Euclidean models "
                   "such as dlib); auto: raw for models compared by Euclidean distance, else normalized.")
@click.option("--range-warmup", type=click.IntRange(0),
              help="Steps of running min/max range updates (QuantFace: 299) instead of PTQ-calibrated ranges.")
@method_option
@click.option("--recipe", default=",".join(QAT_START_STEPS), show_default=True,
              help="PTQ steps that make the starting point, as `qfsdk calibrate --recipe` (e.g. ranges,bias_correction).")
@click.option("--validation-images", type=click.IntRange(0), default=0, show_default=True,
              help="Hold out the last N images; score the student on them every --validate-every steps and keep the best "
                   "(long runs on a few hundred synthetic images drift).")
@click.option("--validate-every", type=click.IntRange(1), default=100, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(1), default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUTPUT's .qat-state.safetensors.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Quantized checkpoint to write (.safetensors).")
def qat(model_name, weights, bits, scheme, asymmetric_acts, keep_8bit, config_file, data, synth_source, num_images, iterations, steps, batch_size, lr, freeze_bn, kd_loss,
        range_warmup, method, recipe, validation_images, validate_every, checkpoint_every, seed, resume, output) -> None:
    """Distil the float MODEL into its quantized copy on synthetic (or your own) images."""
    import torch

    import qfsdk
    from qfsdk.loading import load_model
    from qfsdk.quant.api import check_config
    from qfsdk.quant.qat import QATSettings, init_distributed, train_qat
    from qfsdk.quant.recipe import Recipe

    check_output(output, weights, config_file, data)
    if resume:
        check_resumable(state_path_for(output))
    init_distributed()
    start = Recipe.create(build_config(bits, scheme, keep_8bit, config_file, asymmetric_acts=asymmetric_acts), method,
                          recipe)  # validates the method and the steps before any work
    config = start.config
    settings = QATSettings(steps=steps, batch_size=batch_size, lr=lr, freeze_bn=freeze_bn, kd_loss=kd_loss, range_warmup_steps=range_warmup,
                           validation_images=validation_images, validate_every=validate_every, checkpoint_every=checkpoint_every, seed=seed)
    teacher = load_model(model_name, weights, seed=seed, quantized=False)
    check_config(teacher, config)

    images, description = training_images(teacher, data, synth_source, output, model_name, weights, num_images, seed,
                                          iterations, batch_size)  # fmt: skip
    if range_warmup is None:  # on --resume too: steps such as ends_8bit and keep_float shape the model the state fills
        start_images = images[:min(len(images), START_IMAGES)][torch.arange(min(len(images), START_IMAGES))]
        student = qfsdk.quantize(copy.deepcopy(teacher), start, start_images, batch_size=batch_size)
    else:
        student = qfsdk.quantize(copy.deepcopy(teacher), config)
    run = train_qat(student, teacher, images, settings, state_path_for(output), resume=resume)
    if run.rank == 0:
        kept = {k: v for k, v in (run.best or {}).items() if k != "state"}
        extra = {"data": description, "qat": {"steps": run.step, "final": run.history[-1] if run.history else None, "kept": kept or None}}
        qfsdk.save_quantized(run.student, output, extra=extra)
        last = run.history[-1]
        click.echo(f"QAT {model_name} {config.weight_bits}/{config.act_bits}-bit on {description}: "
                   f"step {run.step}, loss {last['loss']:.3e}, cosine {last['cosine']:.5f}")
        if kept:
            click.echo(f"kept step {kept['step']}: min cosine {kept['score']:.5f} on {validation_images} held-out images")
        click.echo(f"wrote {output} (resumable state: {state_path_for(output)})")

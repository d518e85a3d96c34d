"""``qfsdk convert``: a quantized (or float) model to a deployable ONNX Q/DQ file."""

from __future__ import annotations

from pathlib import Path

import click

from qfsdk.converters.convert import RECALIBRATIONS, ConvertOptions
from qfsdk.converters.convert import convert as run_convert
from qfsdk.converters.qdq_export import TARGETS

from .common import InputPath, check_output


@click.command()
@click.argument("source")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="ONNX file to write.")
@click.option("--target", type=click.Choice(list(TARGETS)),
              help="Backend the graph is made for: " + "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())
                   + ". Default: onnxruntime for a checkpoint calibrated with --scheme onnxruntime, else tensorrt.")
@click.option("--fp32", "precision", flag_value="fp32", help="Float export of a zoo model or float checkpoint.")
@click.option("--fp16", "precision", flag_value="fp16", help="Float16 export of a zoo model or float checkpoint.")
@click.option("--model", "model_name", help="Architecture of a float checkpoint (see `qfsdk models`).")
@click.option("--recalibrate", type=click.Choice(list(RECALIBRATIONS)),
              help="Re-fit the symmetric ranges on synthetic images (QuantFace checkpoints for TensorRT).")
@click.option("--num-images", type=click.IntRange(1), default=32, show_default=True, help="Synthetic images for --recalibrate.")
@click.option("--iterations", type=click.IntRange(1), help="Synthesis steps per batch for --recalibrate (default: the method's).")
@click.option("--probe-images", type=InputPath(file_okay=False, path_type=Path),
              help="Aligned face images for the fidelity numbers (default: seeded noise).")
@click.option("--opset", type=click.IntRange(17, 20), default=17, show_default=True, help="ONNX opset (TensorRT 10 parses up to 20).")
@click.option("--simplify", is_flag=True, help="Float exports: simplify the graph with onnx-simplifier (pip install 'qfsdk[simplify]').")
@click.option("--allow-nonconforming", is_flag=True, help="Write the file even if `qfsdk check` finds TensorRT violations.")
@click.option("--int6-plugin", is_flag=True,
              help="Sub-8-bit activations as one qfsdk::FakeQuantize custom node each (exact k-bit simulation, with an "
                   "ONNX function so ONNX Runtime runs it) instead of Clip + int8 Q/DQ. TensorRT needs the qfsdk plugin "
                   "(`qfsdk build --plugins`) and cannot fuse these nodes: for accuracy studies, not speed.")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path),
              help="Also write a Triton model repository (config.pbtxt + 1/model.onnx) here.")
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True, help="Triton max_batch_size.")
def convert(source, output, target, precision, model_name, recalibrate, num_images, iterations, probe_images, opset,
            simplify, allow_nonconforming, int6_plugin, triton_repo, max_batch) -> None:
    """Export SOURCE to ONNX: a qfsdk quantized checkpoint, a QuantFace quantized checkpoint, or (with --fp32/--fp16) a zoo model name or float checkpoint."""
    check_output(output, source)
    options = ConvertOptions(target=target, precision=precision, model_name=model_name, recalibrate=recalibrate,
                             num_images=num_images, iterations=iterations, probe_images=probe_images, opset=opset,
                             allow_nonconforming=allow_nonconforming, int6_plugin=int6_plugin, simplify=simplify)
    report = run_convert(source, output, options)
    click.echo(report.summary())
    for violation in report.violations or []:
        click.echo(f"  {violation}")
    if triton_repo is not None:
        from qfsdk.converters.triton import write_triton_repo
        from qfsdk.runtime.metadata import read_onnx_contract

        folder = write_triton_repo(triton_repo, output, read_onnx_contract(output), max_batch_size=max_batch,
                                   dtype="float16" if precision == "fp16" else "float32")
        click.echo(f"triton:       {folder}")

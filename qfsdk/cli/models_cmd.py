"""``qfsdk models``: the zoo, with contracts and weights sources."""

from __future__ import annotations

import json

import click


def zoo_table() -> list[dict]:
    """One row per registered model."""
    from qfsdk.models import get_spec, names

    rows = []
    for name in names():
        spec = get_spec(name)
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "embedding_size": spec.contract.embedding_size,
                "input_size": list(spec.contract.input_size),
                "parameters": spec.num_parameters(),
                "weights": spec.weights_source,
                "pretrained_installed": _installed(spec),
                "contract": spec.contract.to_dict(),
            }
        )
    return rows


def _installed(spec) -> bool | None:
    from qfsdk.errors import QfsdkError

    if spec.default_weights is None:
        return None
    try:
        return spec.default_weights().is_file()
    except QfsdkError:
        return False


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def models(as_json: bool) -> None:
    """List the model zoo: embedding size, input size, parameters, weights source."""
    rows = zoo_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<14} {'emb':>4} {'input':>8} {'params':>8}  weights")
    for row in rows:
        size = "x".join(str(s) for s in row["input_size"])
        params = f"{row['parameters'] / 1e6:.1f}M"
        weights = row["weights"]
        if row["pretrained_installed"] is False:
            weights += "  [not installed]"
        click.echo(f"{row['name']:<14} {row['embedding_size']:>4} {size:>8} {params:>8}  {weights}")

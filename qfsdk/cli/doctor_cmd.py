"""``qfsdk doctor``: what this machine can run."""

from __future__ import annotations

import json

import click

from qfsdk._version import __version__


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def doctor(as_json: bool) -> None:
    """Report Python, frameworks, runtimes, GPU and CPU int8 features, with install hints."""
    from qfsdk.doctor import collect

    checks = collect()
    if as_json:
        click.echo(json.dumps({"qfsdk": __version__, "checks": [c.to_dict() for c in checks]}, indent=2))
        return
    for check in checks:
        mark = "ok     " if check.found else "missing"
        line = f"{mark}  {check.name:<24} {check.version:<14} {check.detail}"
        click.echo(line.rstrip())
        if check.hint:
            click.echo(f"{'':9}{'':24} -> {check.hint}")

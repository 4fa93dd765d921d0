"""Command line: thin typer commands, each parsing options and calling one library function.

User mistakes surface as one line ``error: <file>: <problem>`` on stderr with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cryojoint.errors import UserInputError

app = typer.Typer(
    name="cryojoint",
    help="Joint self-supervised denoising and particle picking for cryo-EM micrographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _config(config_path: Path | None, preset: str = "default"):
    from cryojoint.config import CryojointConfig, default_config

    return CryojointConfig.load_yaml(config_path) if config_path else default_config(preset)


def _version(value: bool) -> None:
    if value:
        from cryojoint import __version__

        typer.echo(f"cryojoint {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Joint self-supervised denoising and particle picking for cryo-EM micrographs.

    Example: cryojoint demo runs/demo
    """


@app.command()
def convert(
    inputs: Annotated[list[Path], typer.Argument(help="Coordinate file(s) or a folder of them.")],
    output: Annotated[Path, typer.Argument(help="Output file, or folder for one file per micrograph.")],
    in_fmt: Annotated[str | None, typer.Option("--from", help="star|box|csv|topaz|imod (default: by suffix)")] = None,
    out_fmt: Annotated[str | None, typer.Option("--to", help="star|box|csv|topaz (default: by suffix)")] = None,
    box_size: Annotated[float | None, typer.Option(help="Box size in pixels (needed to write .box).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
) -> None:
    """Convert particle coordinates between RELION STAR, EMAN BOX, CSV, Topaz and IMOD point files.

    Example: cryojoint convert picks.star boxes/ --to box --box-size 64
    """
    from cryojoint.io.coords import convert_coordinates

    written = convert_coordinates(inputs, output, in_fmt, out_fmt, box_size, overwrite)
    typer.echo(f"wrote {len(written)} file(s): {written[0]}{' ...' if len(written) > 1 else ''}")


def main() -> None:
    """Console entry point: user mistakes become one line and exit code 2, never a traceback."""
    try:
        app()
    except UserInputError as err:
        typer.echo(f"error: {err.one_line()}", err=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()

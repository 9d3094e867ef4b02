"""``tunnelscope profile install``: put a shipped Snakemake profile where ``snakemake --profile NAME`` finds it."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

# The Snakemake profiles shipped in the package; profiles/ at the repository root links here.
PROFILES = resources.files("tunnelscope").joinpath("profiles")

HELP = "install a shipped Snakemake profile (local, slurm) where snakemake --profile NAME finds it"
DESCRIPTION = None  # its one action, install, has one
INSTALL_HELP = "copy profiles/NAME/config.yaml to DEST/NAME/config.yaml"
INSTALL_DESCRIPTION = (
    "Copy the shipped profile NAME to DEST/NAME/config.yaml, by default Snakemake's user profile "
    "directory ($XDG_CONFIG_HOME/snakemake, else ~/.config/snakemake), so that `snakemake --profile NAME` uses it. "
    "An existing different file is left alone unless --force is given."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    install = actions.add_parser("install", help=INSTALL_HELP, description=INSTALL_DESCRIPTION)
    install.add_argument("name", choices=_profile_names(), help="the profile")
    install.add_argument(
        "--dest",
        help="the profile directory to install into (default: Snakemake's user profile directory; /etc/xdg/snakemake for every user)",
    )
    install.add_argument("--force", action="store_true", help="overwrite an existing, different DEST/NAME/config.yaml")


def run(args) -> int:
    return {"install": _install}[args.action](args)


def _profile_names() -> list[str]:
    return sorted(entry.name for entry in PROFILES.iterdir() if entry.joinpath("config.yaml").is_file())


def _snakemake_profile_dirs() -> tuple[Path, Path]:
    """(user, site) directories in which ``snakemake --profile NAME`` looks for NAME/ (after the
    working directory): $XDG_CONFIG_HOME/snakemake or ~/.config/snakemake, and /etc/xdg/snakemake
    on Linux. Asked of Snakemake itself, so they are the ones it searches on every platform."""
    from snakemake.common import get_appdirs

    dirs = get_appdirs()
    return Path(dirs.user_config_dir), Path(dirs.site_config_dir)


def _install(args) -> int:
    shipped = PROFILES.joinpath(args.name, "config.yaml").read_bytes()
    user_dir, site_dir = _snakemake_profile_dirs()
    target = Path(args.dest or user_dir) / args.name / "config.yaml"
    if target.exists() and target.read_bytes() == shipped:
        print(f"{target}: the {args.name} profile is already installed")
        return 0
    if target.exists() and not args.force:
        print(
            f"tunnelscope: {target} exists and differs from the shipped {args.name} profile; pass --force to overwrite it",
            file=sys.stderr,
        )
        return 1
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shipped)
    except OSError as exc:
        print(f"tunnelscope: cannot write {target}: {exc}", file=sys.stderr)
        return 2
    # Snakemake finds a profile by name only in its own directories; elsewhere it needs the path.
    found = target.parent.parent.resolve() in (user_dir.resolve(), site_dir.resolve())
    print(
        f"installed the {args.name} profile as {target}; use it with: snakemake --profile {args.name if found else target.parent}"
    )
    return 0

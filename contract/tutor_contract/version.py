"""The version of the ``tutor-serving`` distribution, for ``--version`` and the API documents."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "tutor-serving"


def distribution_version() -> str:
    """The installed ``tutor-serving`` version (``0+unknown`` when run from sources that were
    never installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def version_line(program: str) -> str:
    """What ``<program> --version`` prints: ``tutor-gateway (tutor-serving) 0.1.0``."""
    return f"{program} ({DISTRIBUTION}) {distribution_version()}"

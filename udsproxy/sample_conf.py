"""The sample configs (``conf/`` in the source tree) as installed with the package.

The wheel carries them as package data (``udsproxy/conf`` is a symlink to ``conf`` in the
tree), so ``udsproxy demo --config conf/article/envoy.yaml`` works from an installed wheel
or image too, where no ``conf/`` directory exists in the working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["packaged_root", "resolve_sample"]


def packaged_root() -> Path:
    """The directory that holds ``conf/`` inside the installed package."""
    return Path(str(files("udsproxy")))


def resolve_sample(path: str, cwd: Path | None = None) -> Path | None:
    """For a ``conf/...`` path missing from ``cwd``: the directory to run from so that it and
    the relative paths inside it (the article's CDS/LDS files) resolve in the packaged copy.
    None when the path exists where it is, or is not a packaged sample."""
    here = cwd or Path.cwd()
    if (here / path).exists() or Path(path).is_absolute():
        return None
    root = packaged_root()
    return root if path.startswith("conf/") and (root / path).is_file() else None

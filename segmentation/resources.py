"""Where LayerWatch's own data are (the shipped model, the default policy, the example config).

In a source checkout they are the repository's ``data/``; a wheel carries the same files as the data-only
package ``layerwatch_data`` (pyproject maps ``data/`` onto it), so an installed LayerWatch finds them from any
folder. ``data/`` holds no code: ``layerwatch_data`` is a namespace package of plain files.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

__all__ = ["data_dir"]

_SOURCE = Path(__file__).resolve().parent.parent / "data"


@cache
def data_dir() -> Path:
    """The folder with ``models/`` and ``config/``: the checkout's ``data/``, else the installed package's."""
    if (_SOURCE / "models").is_dir():
        return _SOURCE
    spec = importlib.util.find_spec("layerwatch_data")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "models").is_dir():
            return Path(location)
    return _SOURCE  # neither: the caller's "file not found" names this path

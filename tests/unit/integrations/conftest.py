"""The OctoPrint plugin's own modules without OctoPrint: its package is registered bare (its ``__init__`` builds the
plugin on OctoPrint's classes, which are not installed here), then its torch- and OctoPrint-free modules import."""

from __future__ import annotations

import sys
import types
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[3] / "integrations" / "octoprint" / "octoprint_layerwatch"

if "octoprint_layerwatch" not in sys.modules:
    package = types.ModuleType("octoprint_layerwatch")
    package.__path__ = [str(PLUGIN)]
    sys.modules["octoprint_layerwatch"] = package

"""A Chromium for the tests that open pages (the report, the MLflow UI) and export PNGs.

Without one a test skips, except where a browser is required (`TUNER_REQUIRE_CHROMIUM`,
set by .ci/run, which installs one): there a missing browser fails, as a missing PostgreSQL does.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
REQUIRE_ENV = "TUNER_REQUIRE_CHROMIUM"


def needs_chromium(reason: str) -> pytest.MarkDecorator:
    """Skip the test when no Chromium is installed; fail it instead when one is required."""
    if CHROMIUM is None and os.environ.get(REQUIRE_ENV):
        return pytest.mark.usefixtures("chromium_required")
    return pytest.mark.skipif(CHROMIUM is None, reason=f"{reason} (.ci/run installs one)")

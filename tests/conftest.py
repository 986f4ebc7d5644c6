from __future__ import annotations

import pytest

from tests.browser import REQUIRE_ENV


@pytest.fixture
def chromium_required() -> None:
    pytest.fail(f"no Chromium found but {REQUIRE_ENV} is set: install one (apt-get install chromium)")

"""Every setting is documented where operators look: the README's table and `.env.example`."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskservice.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in text]
    assert not missing, f"{document} does not mention {missing}"

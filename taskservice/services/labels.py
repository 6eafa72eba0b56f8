"""Task labels: how a label list is checked, merged and ordered, and what a label's key is.

Labels that differ only in case are one label, so every comparison goes through `label_key`
(Unicode case folding, which also matches "STRASSE" with "straße"); the first spelling a client
gives is the one kept and returned.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from taskservice.db.models import LABEL_MAX_LENGTH, LABELS_MAX_COUNT
from taskservice.errors import FieldViolation


def label_key(label: str) -> str:
    """What makes two labels the same label: their case-folded form."""
    return label.casefold()


def has_control_character(text: str) -> bool:
    """C0 controls, DEL and C1 controls: the characters Unicode files under "Cc"."""
    return any(unicodedata.category(character) == "Cc" for character in text)


def normalize_labels(labels: Iterable[str], field: str) -> tuple[list[str], list[FieldViolation]]:
    """The labels as stored (trimmed, merged by key, first spelling kept, sorted by key).

    Returns the list and every violation found; the list is meaningless when there are any.
    """
    kept: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for index, raw in enumerate(labels):
        label = raw.strip()
        if not 1 <= len(label) <= LABEL_MAX_LENGTH:
            violations.append(
                FieldViolation(
                    f"{field}[{index}]", f"1 to {LABEL_MAX_LENGTH} characters after trimming"
                )
            )
        elif has_control_character(label):
            violations.append(
                FieldViolation(f"{field}[{index}]", "must not contain control characters")
            )
        else:
            kept.setdefault(label_key(label), label)
    if len(kept) > LABELS_MAX_COUNT:
        violations.append(
            FieldViolation(field, f"at most {LABELS_MAX_COUNT} labels (after merging duplicates)")
        )
    return [kept[key] for key in sorted(kept)], violations

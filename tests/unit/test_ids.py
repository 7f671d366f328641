"""Machinery's ids: ``task_``/``group_``/``chord_`` + a version-4 UUID in canonical text."""

from __future__ import annotations

import re
import uuid

from machinery_compat.protocol.ids import chord_id, group_id, task_id, uuid4_text

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def test_ids_are_prefixed_version_4_uuids() -> None:
    for make, prefix in ((task_id, "task_"), (group_id, "group_"), (chord_id, "chord_")):
        value = make()
        assert value.startswith(prefix) and UUID4.match(value[len(prefix):]), value


def test_uuid4_text_is_what_uuid_parses_back() -> None:
    seen = set()
    for _ in range(5000):
        text = uuid4_text()
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
        seen.add(text)
    assert len(seen) == 5000

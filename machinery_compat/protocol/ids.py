"""Machinery's identifiers: ``task_<uuid4>``, ``group_<uuid4>``, ``chord_<uuid4>``.

A random (version 4, RFC 4122 variant) UUID in its canonical text form, as Go's
``uuid.New().String()`` (google/uuid), formatted here straight from 16 bytes of
``os.urandom`` (what ``uuid.uuid4()`` reads too, without building a ``UUID`` object: a
producer makes one per task).  Fresh randomness each call: safe after ``fork``.
"""

from __future__ import annotations

import os


def uuid4_text() -> str:
    """``xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`` from 16 random bytes."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def task_id() -> str:
    return "task_" + uuid4_text()


def group_id() -> str:
    return "group_" + uuid4_text()


def chord_id() -> str:
    return "chord_" + uuid4_text()

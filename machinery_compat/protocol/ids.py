"""Machinery's identifiers: ``task_<uuid4>``, ``group_<uuid4>``, ``chord_<uuid4>``."""

from __future__ import annotations

import uuid


def task_id() -> str:
    return "task_" + str(uuid.uuid4())


def group_id() -> str:
    return "group_" + str(uuid.uuid4())


def chord_id() -> str:
    return "chord_" + str(uuid.uuid4())

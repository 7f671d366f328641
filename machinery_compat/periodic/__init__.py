"""Periodic tasks (placeholder)."""

from .cron import EverySchedule, Schedule, SpecError, SpecSchedule, parse_spec

__all__ = ["EverySchedule", "Schedule", "SpecError", "SpecSchedule", "parse_spec"]

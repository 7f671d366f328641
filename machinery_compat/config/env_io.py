"""Reading and writing Machinery's environment variables (``Config.from_env``/``to_env``),
parsed like Go's envconfig (``strconv.ParseInt``/``ParseBool``)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Final

from ..exceptions import ConfigError
from ..protocol.sublime import check_dialect
from .keys import _ENV_PREFIX, _KEYS, _Key, _section_for_env
from .model import _INT64_MAX, _INT64_MIN, Config, SQSConfig

logger = logging.getLogger(__name__)


# strconv.ParseInt(s, 0, 64) syntax: sign, base prefix, digits with single underscores.
_GO_INT_RE: Final = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+"
    r"|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)\Z"
)
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_int(text: str) -> int:
    """Parse ``text`` like Go's ``strconv.ParseInt(text, 0, 64)``; ``ValueError`` if invalid."""
    if not _GO_INT_RE.match(text):
        raise ValueError(f"invalid syntax for a Go integer: {text!r}")
    sign = -1 if text[0] == "-" else 1
    body = text.lstrip("+-").replace("_", "")
    prefix = body[:2].lower()
    if prefix in ("0x", "0b", "0o"):
        result = sign * int(body[2:], {"0x": 16, "0b": 2, "0o": 8}[prefix])
    elif len(body) > 1 and body[0] == "0":
        result = sign * int(body, 8)  # Go: a leading 0 means octal
    else:
        result = sign * int(body, 10)
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise ValueError(f"value out of range for a 64-bit Go integer: {text!r}")
    return result


def parse_go_bool(text: str) -> bool:
    """Parse ``text`` like Go's ``strconv.ParseBool``; ``ValueError`` if invalid."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid syntax for a Go boolean: {text!r}")


def _parse_env_value(spec: _Key, name: str, text: str) -> Any:
    try:
        if spec.kind == "str":
            return text
        if spec.kind == "dialect":
            return check_dialect(text or "upstream")
        if spec.kind in ("int", "opt_int"):
            return parse_go_int(text)
        if spec.kind == "duration":  # envconfig: time.ParseDuration, kept in seconds
            from ..periodic._go import parse_duration

            return parse_duration(text) / 1e9
        if spec.kind in ("bool", "bool_or"):
            return parse_go_bool(text)
        if spec.kind == "declare_map":
            if not text.strip():
                return {}
            keys = _split_env_map(text)
            logger.warning(
                "%s: Go Machinery keeps only the keys of this variable (values become nil); "
                "declaring queues with %s",
                name,
                dict.fromkeys(keys),
            )
            return dict.fromkeys(keys)
        return dict(_split_env_pairs(text))  # binding_map: Go's QueueBindingArgs.Decode
    except ValueError as e:
        raise ConfigError(f"environment variable {name}: {e}") from None


def _split_env_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 2:
            raise ValueError(f"invalid map item {item!r} (expected key:value,key:value)")
        pairs.append((parts[0], parts[1]))
    return pairs


def _split_env_map(text: str) -> list[str]:
    return [k for k, _ in _split_env_pairs(text)]


def _env_out(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    pairs = []
    for k, v in dict(value).items():
        item = f"{k}:{'' if v is None else v}"
        if item.count(":") != 1 or "," in item:
            raise ConfigError(f"{name}: {k!r}: {v!r} cannot be written as key:value")
        pairs.append(item)
    return ",".join(pairs)



# --------------------------------------------------------------------------------------------
# Config.from_env / to_env
# --------------------------------------------------------------------------------------------


def read_env(cls: type[Config], environ: Mapping[str, str] | None = None) -> Config:
    """:meth:`Config.from_env`."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    cnf = cls(sqs=SQSConfig())  # envconfig allocates every section
    for spec in _KEYS:
        target = _section_for_env(cnf, spec.section)
        for alt in spec.env:
            name = f"{_ENV_PREFIX[spec.section]}_{alt}" if spec.section else alt
            if name not in env:
                name = alt
                if name not in env:
                    continue
            value = _parse_env_value(spec, name, env[name])
            if spec.kind == "bool_or":
                value = bool(getattr(target, spec.attr)) or value
            setattr(target, spec.attr, value)
    if cnf.azure is not None and cnf.azure == type(cnf.azure)():
        cnf.azure = None  # no AZURE_ variable: the section stays absent (code-only default)
    return cnf


def to_env(cnf: Config, *, full: bool = False) -> dict[str, str]:
    """:meth:`Config.to_env`."""
    default = Config(sqs=SQSConfig())
    out: dict[str, str] = {}
    for spec in _KEYS:
        obj = cnf if spec.section is None else getattr(cnf, spec.section)
        if obj is None:
            continue
        ref = default if spec.section is None else getattr(default, spec.section)
        if ref is None:  # a section absent by default (azure)
            ref = type(obj)()
        value = getattr(obj, spec.attr)
        if value is None or value == {} or not (full or value != getattr(ref, spec.attr)):
            continue  # an empty map cannot be written (Go refuses AMQP_QUEUE_BINDING_ARGS=)
        for name in spec.env:
            out[name] = (f"{round(value * 1e9)}ns" if spec.kind == "duration"
                         else _env_out(name, value))
    return out

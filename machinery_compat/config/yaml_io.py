"""Reading and writing Go Machinery's YAML config file (``Config.from_yaml``/``to_yaml``)."""

from __future__ import annotations

import logging
import math
import os
from typing import IO, Any, Final, cast

import yaml

from ..exceptions import ConfigError
from ..protocol.sublime import check_dialect
from .keys import _KEYS, _SECTION_TYPES, _Key, _Kind, _Section
from .masking import MASK, mask_url
from .model import _INT64_MAX, _INT64_MIN, GO_YAML_READ_LIMIT, Config, SQSConfig

logger = logging.getLogger(__name__)


# yaml.v2 reads unquoted y/Y/n/N as booleans; PyYAML keeps them as strings.
_YAML_EXTRA_BOOLS: Final = {"y": True, "Y": True, "n": False, "N": False}


def _config_from_yaml_doc(doc: Any, source: str) -> Config:
    cnf = Config()
    if doc is None:  # empty file: Go keeps the defaults but drops the AMQP section
        cnf.amqp = None
        return cnf
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(doc).__name__}")
    by_key = {(s.section, k): s for s in _KEYS for k in s.yaml}
    for raw_key, value in doc.items():
        key = str(raw_key)
        if key in _SECTION_TYPES:
            section = cast(_Section, key)
            if value is None:
                setattr(cnf, key, None)
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: key {key!r}: expected a mapping, got {type(value).__name__}"
                )
            obj = getattr(cnf, key)
            if obj is None:
                obj = _SECTION_TYPES[key]()
                setattr(cnf, key, obj)
            for raw_sub, sub_value in value.items():
                sub = str(raw_sub)
                spec = by_key.get((section, sub))
                if spec is None:
                    logger.warning(
                        "%s: ignoring unknown config key %r (Go Machinery ignores it too)",
                        source,
                        f"{key}.{sub}",
                    )
                    continue
                _apply_yaml(obj, spec, sub_value, f"{key}.{sub}", source)
            continue
        spec = by_key.get((None, key)) if isinstance(raw_key, str) else None
        if spec is None:
            logger.warning(
                "%s: ignoring unknown config key %r (Go Machinery ignores it too)", source, key
            )
            continue
        _apply_yaml(cnf, spec, value, key, source)
    if "amqp" not in doc:
        cnf.amqp = None  # Go: a file without an amqp section gives a nil AMQP config
    return cnf


def _apply_yaml(target: Any, spec: _Key, value: Any, dotted: str, source: str) -> None:
    try:
        converted = _convert_yaml(spec.kind, value)
    except (TypeError, ValueError) as e:
        shown = _show_secret(spec, value)
        raise ConfigError(f"{source}: key {dotted!r}: {e}, got {shown}") from None
    if spec.kind == "bool_or":
        converted = bool(getattr(target, spec.attr)) or converted
    setattr(target, spec.attr, converted)


def _convert_yaml(kind: _Kind, value: Any) -> Any:
    if kind == "str":
        return _yaml_scalar_text(value)
    if kind == "dialect":
        return check_dialect("upstream" if value is None else _yaml_scalar_text(value))
    if kind == "int":
        return 0 if value is None else _yaml_int(value)
    if kind == "opt_int":
        return None if value is None else _yaml_int(value)
    if kind == "duration":  # yaml.v2 into a time.Duration: integer ns or a duration string
        return _duration_seconds(value)
    if kind in ("bool", "bool_or"):
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in _YAML_EXTRA_BOOLS:
            return _YAML_EXTRA_BOOLS[value]
        raise TypeError("expected a boolean (true/false)")
    # maps
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError("expected a mapping")
    return {_yaml_scalar_text(k): v for k, v in value.items()}


def _duration_seconds(value: Any) -> float:
    """A Go ``time.Duration`` from YAML (integer nanoseconds, or ``time.ParseDuration``
    text), in seconds."""
    from ..periodic._go import parse_duration

    if value is None:
        return 0.0
    if isinstance(value, str):
        return parse_duration(value) / 1e9
    return _yaml_int(value) / 1e9


def _yaml_scalar_text(value: Any) -> str:
    """A YAML scalar as Go's yaml.v2 stores it into a string (any scalar is accepted)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        raise TypeError("expected a string")
    return str(value)  # dates and times: their ISO text, as written


def _yaml_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected an integer")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ValueError("expected an integer")  # Go would truncate 3.7 to 3
    result = int(value)
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise ValueError("integer out of range for Go's int")
    return result


def _show_secret(spec: _Key, value: Any) -> str:
    if spec.secret == "text":
        return MASK
    if spec.secret == "url" and isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


def _yaml_out(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value



# --------------------------------------------------------------------------------------------
# Config.from_yaml / to_yaml_dict / to_yaml
# --------------------------------------------------------------------------------------------


def read_yaml(source: str | os.PathLike[str] | IO[str] | IO[bytes]) -> Config:
    """:meth:`Config.from_yaml`."""
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        try:
            with open(name, "rb") as fh:
                data: str | bytes = fh.read()
        except OSError as e:
            raise ConfigError(f"{name}: cannot read config file: {e}") from e
    else:
        name = str(getattr(source, "name", "<stream>"))
        data = source.read()
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size == 0:
        raise ConfigError(f"{name}: empty config file (Go Machinery refuses it: EOF)")
    if size > GO_YAML_READ_LIMIT:
        logger.warning(
            "%s is %d bytes long; Go Machinery reads only the first %d bytes of a YAML "
            "config file, so Go workers would see it truncated",
            name,
            size,
            GO_YAML_READ_LIMIT,
        )
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML: {e}") from e
    return _config_from_yaml_doc(doc, name)


def to_yaml_dict(cnf: Config, *, full: bool = False) -> dict[str, Any]:
    """:meth:`Config.to_yaml_dict`."""
    default = Config(sqs=SQSConfig())
    out: dict[str, Any] = {}
    for section in (None, "amqp", "sqs", "redis", "dynamodb"):
        specs = [s for s in _KEYS if s.section == section]
        if section is None:
            for spec in specs:
                value = getattr(cnf, spec.attr)
                # (wire_dialect is Python's own: written only when not the default)
                if (full and spec.kind != "dialect") or value != getattr(default, spec.attr):
                    out[spec.yaml[0]] = _yaml_out(value)
            continue
        obj = getattr(cnf, section)
        if obj is None:
            if section in ("redis", "dynamodb"):
                out[section] = None
            continue
        ref = getattr(default, section)
        body: dict[str, Any] = {}
        for spec in specs:
            value = getattr(obj, spec.attr)
            if value is None or not (full or value != getattr(ref, spec.attr)):
                continue
            for key in spec.yaml:
                body[key] = _yaml_out(value)
        if body or full or section in ("amqp", "sqs"):
            out[section] = body
    return out


def to_yaml(cnf: Config, *, full: bool = False) -> str:
    """:meth:`Config.to_yaml`."""
    text = yaml.safe_dump(
        to_yaml_dict(cnf, full=full), sort_keys=False, default_flow_style=False
    )
    if len(text.encode("utf-8")) > GO_YAML_READ_LIMIT:
        logger.warning(
            "YAML config is %d bytes; Go Machinery reads only the first %d bytes",
            len(text.encode("utf-8")),
            GO_YAML_READ_LIMIT,
        )
    return text

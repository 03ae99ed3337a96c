"""What every config section is made of, and the helpers every layer uses on a loaded config.

A section is a dataclass beside the code it configures (``data/settings.py``,
``generation/settings.py``, ...); each field is made by :func:`setting`, which keeps its one-line
description and its constraints (bounds, allowed values) in the field's metadata. One validator,
:func:`check_tree`, walks a loaded config against that metadata, then runs the cross-field checks
each section registers with :func:`section_check`; the JSON schema and ``config/README.md`` are
generated from the same metadata. ``synrep.config`` composes the sections and loads the files.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from synrep.fileio import write_text


class InputError(ValueError):
    """What the user gave cannot be used: an input file malformed, truncated or of another run, a
    model or data set that does not fit the config. The command line prints it as one line; any
    other exception is a bug and keeps its traceback."""


class ConfigError(InputError):
    """A configuration key is unknown, has the wrong type or a value outside its allowed set."""


def config_dir() -> Path:
    """``config/`` of the working tree synrep runs in (``SYNREP_CONFIG_DIR`` overrides it).

    Read from the current directory, not from where the package was installed: a non-editable
    install and a venv shared by two clones each read the config of the clone they run in.
    """
    return Path(os.environ.get("SYNREP_CONFIG_DIR") or Path.cwd() / "config")


# --------------------------------------------------------------------------------------------
# Fields and their constraints
# --------------------------------------------------------------------------------------------

BOUNDS = ("ge", "gt", "le", "lt")


def setting(default: Any, description: str, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: Any = None, note: str = "") -> Any:
    """A config field: its default, one line saying what it means, and what its value must meet.

    ``ge``/``gt``/``le``/``lt`` bound a number (each number of a list); ``choices`` is the set of
    allowed values (of each item of a list), any container (a registry dict stays live); ``note``
    is added to the bound's message. Null passes every constraint. A dataclass type as default is
    a nested section; a list, dict or dataclass instance is copied for each config.
    """
    metadata: dict[str, Any] = {"description": description}
    for name, bound in zip(BOUNDS, (ge, gt, le, lt)):
        if bound is not None:
            metadata[name] = bound
    if choices is not None:
        metadata["choices"] = choices
    if note:
        metadata["note"] = note
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bound_text(meta: typing.Mapping[str, Any]) -> str:
    """A field's bounds in words: ``> 0``, ``>= 2``, ``in [0, 1)``; "" when it has none."""
    lower = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    upper = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lower and upper:
        return f"in {lower[0]}{lower[1]}, {upper[1]}{upper[0]}"
    if lower:
        return f"{'>=' if lower[0] == '[' else '>'} {lower[1]}"
    if upper:
        return f"{'<=' if upper[0] == ']' else '<'} {upper[1]}"
    return ""


def value_problem(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    """What is wrong with one value under a field's metadata, or None."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"{value!r} is not one of {list(choices)}"
    bounds = {name: meta[name] for name in BOUNDS if name in meta}
    if not bounds:
        return None
    ok = (("ge" not in bounds or value >= bounds["ge"]) and ("gt" not in bounds or value > bounds["gt"])
          and ("le" not in bounds or value <= bounds["le"]) and ("lt" not in bounds or value < bounds["lt"]))
    if ok:
        return None
    note = f" ({meta['note']})" if meta.get("note") else ""
    return f"must be {bound_text(meta)}{note}, got {value!r}"


@dataclasses.dataclass
class PathsConfig:
    """Where data and results live."""

    data_dir: str = setting("data", "Folder of the data sets (the toy world's files)")
    results_dir: str = setting("results", "Every step's outputs, under <results_dir>/<name>/")
    mlflow_uri: str = setting("", "MLflow tracking URI; empty means sqlite:///<absolute results_dir>/mlflow.db")


# --------------------------------------------------------------------------------------------
# The validator
# --------------------------------------------------------------------------------------------

# A section's cross-field checks: fn(section node, its dotted key, the whole config)
SectionCheck = Callable[[DictConfig, str, DictConfig], None]
SECTION_CHECKS: dict[type, list[SectionCheck]] = {}


def section_check(cls: type) -> Callable[[SectionCheck], SectionCheck]:
    """Register a check of ``cls``'s sections that bounds and choices cannot say (raise ConfigError)."""

    def register(fn: SectionCheck) -> SectionCheck:
        SECTION_CHECKS.setdefault(cls, []).append(fn)
        return fn

    return register


def inner_type(tp: Any) -> Any:
    """``Optional[X]`` -> ``X``; any other type as it is."""
    if typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """A section's field types (``Optional`` unwrapped), once per class."""
    hints = typing.get_type_hints(cls)
    return {f.name: inner_type(hints[f.name]) for f in dataclasses.fields(cls)}


def child_key(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def sections(node: DictConfig, cls: type, key: str = "") -> Iterator[tuple[DictConfig, type, str]]:
    """Each section of a loaded config with its dataclass and dotted key, a parent before its
    children: nested sections, the entries of a map of sections, the items of a list of them."""
    yield node, cls, key
    for name, tp in field_types(cls).items():
        value, sub = node[name], child_key(key, name)
        if value is None:
            continue
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            yield from sections(value, tp, sub)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):
            for entry_name, entry in value.items():
                yield from sections(entry, args[1], f"{sub}.{entry_name}")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):
            for i, item in enumerate(value):
                yield from sections(item, args[0], f"{sub}[{i}]")


def check_fields(node: DictConfig, cls: type, key: str) -> None:
    """Each field of one section against its bounds and choices (each item of a list)."""
    for f in dataclasses.fields(cls):
        if not any(name in f.metadata for name in (*BOUNDS, "choices")):
            continue
        value = node[f.name]
        items = enumerate(value) if isinstance(value, ListConfig) else [(None, value)]
        for i, item in items:
            problem = None if item is None else value_problem(item, f.metadata)
            if problem:
                where = child_key(key, f.name) + ("" if i is None else f"[{i}]")
                raise ConfigError(f"config key '{where}': {problem}")


def check_tree(cfg: DictConfig, cls: type) -> None:
    """The one validator: every field's bounds and choices first, then every section's own checks
    (which may rely on the fields being valid), each failure a ConfigError naming its key."""
    found = list(sections(cfg, cls))
    for node, section_cls, key in found:
        check_fields(node, section_cls, key)
    for node, section_cls, key in found:
        for check in SECTION_CHECKS.get(section_cls, ()):
            check(node, key, cfg)


# --------------------------------------------------------------------------------------------
# Helpers on a loaded config
# --------------------------------------------------------------------------------------------


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)


# Keys added to a section after its hash was published: left out of the hash while all of them
# are at their defaults, so that a config without them keeps its hashes (and Snakemake does not
# rerun its steps)
HASH_OMITS_AT_DEFAULT = {"captions": {"skew": [], "skew_seed": 0, "held_out": []}}


def hashed_section(key: str, value: dict) -> dict:
    """A section's plain dict as hashes see it (``HASH_OMITS_AT_DEFAULT``)."""
    omit = HASH_OMITS_AT_DEFAULT.get(key, {})
    if omit and all(value.get(k) == v for k, v in omit.items()):
        return {k: v for k, v in value.items() if k not in omit}
    return value


def section_hash(cfg: DictConfig, *keys: str) -> str:
    """A short hash of some config sections: Snakemake params, so a rule reruns when they change."""
    payload = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        plain = to_dict(value) if isinstance(value, (DictConfig, ListConfig)) else value
        payload[key] = hashed_section(key, plain) if isinstance(plain, dict) else plain
    return digest(payload)


def digest(data: Any) -> str:
    """A short hash of plain data (JSON with sorted keys): Snakemake params, source specs, run identities."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def save_resolved(cfg: DictConfig, directory: str | os.PathLike, filename: str = "config.yaml") -> Path:
    """Write the resolved config beside a step's outputs."""
    return write_text(Path(directory) / filename, to_yaml(cfg))


def run_dir(cfg: DictConfig, *parts: str) -> Path:
    """``<results_dir>/<name>/<parts...>``"""
    return Path(cfg.paths.results_dir, cfg.name, *parts)

"""Write config/README.md, every config key, from the config sections' dataclasses.

    python scripts/config_reference.py           # rewrite config/README.md
    python scripts/config_reference.py --check   # exit 1 when it is out of date

Each key of ``synrep.config.Config`` with its type, its default (the composed tree's, which is the
default run's: ``config/config.yaml`` gives the same values), its bounds or allowed values and its
one-line description, all from the field's metadata (``synrep.settings.setting``). A section's
docstring heads its table.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "config" / "README.md"
WIDTH = 80  # a longer default is cut, so that a table row stays readable


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{type_name(args[0])} or null"
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"map of {type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "section"
    return "any" if tp is Any else getattr(tp, "__name__", str(tp))


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and value == "":
        return '""'
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    if len(text) > WIDTH:
        text = text[: WIDTH - 1] + "…"
    return "`" + text.replace("|", "\\|") + "`"


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return None if dataclasses.is_dataclass(value) else value
    return None


def escape(text: str) -> str:
    return text.replace("|", "\\|")


def sections(cls: type, prefix: str, defaults: Any, out: list[str], title: str | None = None) -> None:
    """A table of the plain keys of one dataclass, then a section for each nested one. ``defaults``:
    this section's values in the composed default tree, or MISSING for an entry of a map or list of
    sections (a new entry takes the dataclass defaults)."""
    from synrep.settings import bound_text

    hints = typing.get_type_hints(cls)
    nested: list[tuple[str, type, Any, str]] = []
    rows: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        value_tp = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None
        item_tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        composed = defaults.get(f.name, dataclasses.MISSING) if isinstance(defaults, dict) else dataclasses.MISSING
        if dataclasses.is_dataclass(tp):
            nested.append((key + ".", tp, composed, key))
            continue
        default = default_of(f) if composed is dataclasses.MISSING else composed
        if value_tp is not None and dataclasses.is_dataclass(value_tp):
            nested.append((key + ".<name>.", value_tp, dataclasses.MISSING, f"{key}.<name>"))
            shown = show(list(default))
        elif item_tp is not None and dataclasses.is_dataclass(item_tp):
            nested.append((key + "[].", item_tp, dataclasses.MISSING, f"{key}[]"))
            shown = f"{len(default)} blocks" if default else "`[]`"
        else:
            shown = show(default)
        allowed = ", ".join(f"`{c}`" for c in f.metadata.get("choices", ())) or bound_text(f.metadata)
        rows.append(f"| `{key}` | {type_name(tp)} | {shown} | {escape(allowed)} | {escape(f.metadata['description'])} |")
    heading = title or prefix.rstrip(".")
    doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
    if rows:
        out += [f"## `{heading}`", ""]
        if doc:
            out += [" ".join(doc.split()), ""]
        out += ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |", *rows, ""]
    for sub_prefix, sub_cls, sub_defaults, sub_title in nested:
        sections(sub_cls, sub_prefix, sub_defaults, out, sub_title)


def render() -> str:
    sys.path.insert(0, str(REPO / "src"))
    from omegaconf import OmegaConf

    from synrep.config import Config

    defaults = OmegaConf.to_container(OmegaConf.structured(Config))
    out = [
        "# Every config key",
        "",
        "Generated from the config sections' dataclasses (each beside the code it configures;",
        "`src/synrep/config.py` composes them) by `python scripts/config_reference.py`; do not edit",
        "(`tests/test_docs.py` fails when it is out of date). *default* is the default run's value, which",
        "`config/config.yaml` repeats with comments; an entry of a map or list of sections (`<name>`, `[]`)",
        "starts from its section's defaults. *allowed* is what the loader accepts beyond the type; the",
        "checks of each section's settings module come on top. A default longer than a table cell is",
        "cut with …; `python -m synrep config` prints it whole.",
        "",
    ]
    sections(Config, "", defaults, out, "top level")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if config/README.md is out of date")
    args = parser.parse_args(argv)
    new = render()
    if args.check:
        if not README.exists() or README.read_text() != new:
            print(f"{README.relative_to(REPO)} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    if not README.exists() or README.read_text() != new:
        from synrep.fileio import write_text

        write_text(README, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

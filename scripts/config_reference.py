"""Write the key reference of docs/configuration.md from the config dataclasses.

    python scripts/config_reference.py           # rewrite the generated part of the page
    python scripts/config_reference.py --check   # exit 1 when the page is out of date

The reference is every key of ``synrep.config.Config`` with its type, its dataclass default, its
value in the default run (``config/config.yaml``), its allowed values and its description (the
field's metadata, ``synrep.settings.setting``). Only the text between the two markers is generated; the prose above stays.
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
PAGE = REPO / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: python scripts/config_reference.py -->"
END = "<!-- END GENERATED -->"
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


def lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return dataclasses.MISSING
        tree = tree[part]
    return tree


def escape(text: str) -> str:
    return text.replace("|", "\\|")


def sections(cls: type, prefix: str, run: dict, out: list[str], title: str | None = None) -> None:
    """A table of the plain keys of one dataclass, then a section for each nested one."""
    from synrep.settings import bound_text

    hints = typing.get_type_hints(cls)
    nested: list[tuple[str, type, str]] = []
    rows: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        value_tp = typing.get_args(tp)[1] if typing.get_origin(tp) is dict else None
        item_tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            nested.append((key + ".", tp, key))
            continue
        if value_tp is not None and dataclasses.is_dataclass(value_tp):
            nested.append((key + ".<name>.", value_tp, f"{key}.<name>"))
        if item_tp is not None and dataclasses.is_dataclass(item_tp):
            nested.append((key + "[].", item_tp, f"{key}[]"))
        plain = not (value_tp is not None and dataclasses.is_dataclass(value_tp)) and not (
            item_tp is not None and dataclasses.is_dataclass(item_tp))
        in_run = lookup(run, key) if "<name>" not in key and "[]" not in key else dataclasses.MISSING
        default = default_of(f)
        if in_run is dataclasses.MISSING or in_run == default:
            run_text = ""
        elif plain:
            run_text = show(in_run)
        else:  # a map or list of sections: what the default run names, its sections follow
            run_text = show(list(in_run)) if isinstance(in_run, dict) else f"{len(in_run)} blocks"
        allowed = ", ".join(f"`{c}`" for c in f.metadata.get("choices", ())) or bound_text(f.metadata)
        rows.append(f"| `{key}` | {type_name(tp)} | {show(default) if plain else '(below)'} | {run_text} "
                    f"| {escape(allowed)} | {escape(f.metadata['description'])} |")
    heading = title or prefix.rstrip(".")
    doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
    if rows:
        out += [f"### `{heading}`", ""]
        if doc:
            out += [" ".join(doc.split()), ""]
        out += ["| key | type | default | default run | allowed | meaning |",
                "| --- | --- | --- | --- | --- | --- |", *rows, ""]
    for sub_prefix, sub_cls, sub_title in nested:
        sections(sub_cls, sub_prefix, run, out, sub_title)


def render() -> str:
    sys.path.insert(0, str(REPO / "src"))
    from synrep.config import Config, load_config, to_dict

    import os

    here = Path.cwd()
    os.chdir(REPO)  # load_config reads config/ from the working directory
    try:
        run = to_dict(load_config())
    finally:
        os.chdir(here)
    out = [
        BEGIN,
        "",
        "Generated from the config sections (`src/synrep/config.py` composes them) and `config/config.yaml` by `python scripts/config_reference.py`",
        "(`tests/test_docs.py` fails when it is out of date). *default* is the dataclass default;",
        "*default run* the value `config/config.yaml` sets, where it differs; *allowed* the values the",
        "loader accepts. A default longer than a table cell is cut with …; `python -m synrep config` prints",
        "it whole.",
        "",
    ]
    sections(Config, "", run, out, "top level")
    out.append(END)
    return "\n".join(out) + "\n"


def updated(page: str, reference: str) -> str:
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + reference + (("\n" + tail) if tail else "")
    return page.rstrip("\n") + "\n\n## Every key\n\n" + reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = parser.parse_args(argv)
    page = PAGE.read_text()
    new = updated(page, render())
    if args.check:
        if new != page:
            print(f"{PAGE.relative_to(REPO)} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    if new != page:
        from synrep.fileio import write_text

        write_text(PAGE, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

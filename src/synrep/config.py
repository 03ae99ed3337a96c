"""The config's composition and loading: the top-level ``Config`` of every package's sections.

Each section is a dataclass beside the code it configures (``data/settings.py``,
``generation/settings.py``, ``recipes/settings.py``, ``recipes/dreambooth_settings.py``,
``learning/settings.py``, ``evaluation/settings.py``, ``experiments/settings.py``), its fields made by
``synrep.settings.setting`` with a description and constraints; their defaults are the values of
``config/config.yaml``. Loading merges, in order: the dataclass defaults, ``config/config.yaml``, an
optional ``config/experiment/<name>.yaml`` and ``key=value`` overrides. Unknown keys, wrong types and
values outside their allowed set fail at load time with the key's dotted path.

This module sits above the packages (it imports their settings); package code imports the helpers
on a loaded config from ``synrep.settings``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from synrep.data.settings import CaptionsConfig, ToyWorldConfig
from synrep.evaluation.settings import EvalConfig, InpaintQualityConfig, SampleQualityConfig
from synrep.experiments.settings import LaunchConfig, PlanConfig, SweepConfig
from synrep.generation.settings import DEFAULT_SOURCES, GenerationConfig, SourceConfig
from synrep.learning.settings import TrainConfig
from synrep.settings import (  # noqa: F401  (re-exported: the command line, workflow and tests import them here)
    ConfigError,
    InputError,
    PathsConfig,
    check_tree,
    config_dir,
    digest,
    run_dir,
    save_resolved,
    section_hash,
    setting,
    to_dict,
    to_yaml,
)
from synrep.training_recipes import RECIPES


def _import_settings_modules() -> None:
    """Import every package's settings modules (``settings.py``, ``*_settings.py``): a recipe declared
    in a new one joins the config, the command line and the workflow without an import line here."""
    root = Path(__file__).parent
    for path in sorted(root.glob("*/settings.py")) + sorted(root.glob("*/*_settings.py")):
        importlib.import_module(f"synrep.{path.parent.name}.{path.stem}")


_import_settings_modules()


@dataclass
class Sections:
    """The sections that are not a training recipe's (``training_recipes.RECIPES`` adds those)."""

    name: str = setting("toy", "The run's name: its results go to <paths.results_dir>/<name>/")
    threads: int = setting(1, "CPU threads for torch in each step (Snakemake rules pass theirs)", gt=0)
    paths: PathsConfig = setting(PathsConfig, "Where data and results live")
    toyworld: ToyWorldConfig = setting(ToyWorldConfig, "The embedded toy world")
    captions: CaptionsConfig = setting(CaptionsConfig(limit=256),
                                       "The run's caption set (the first 256 of the toy world's 3661 captions)")
    generation: GenerationConfig = setting(GenerationConfig, "Defaults of every source and how generation runs")
    sources: dict[str, SourceConfig] = setting(
        DEFAULT_SOURCES, "Named synthetic data sources; `train.data` and the sweep's `data` axis name them")
    sample_quality: SampleQualityConfig = setting(SampleQualityConfig, "The generator's caption match and diversity")
    inpaint_quality: InpaintQualityConfig = setting(InpaintQualityConfig, "The inpainting measurement")
    train: TrainConfig = setting(TrainConfig, "One training run")
    eval: EvalConfig = setting(EvalConfig, "Frozen-feature evaluation")
    sweep: SweepConfig = setting(SweepConfig, "The ablation grid")
    launch: LaunchConfig = setting(LaunchConfig, "The sweep on a cluster")
    plan: PlanConfig = setting(PlanConfig, "The cost plan")
    schedule: Optional[str] = setting(
        None, "A named schedule from `schedules` (e.g. 1x, 2x, 3x), merged into train.* at load time")
    schedules: dict[str, Any] = setting({}, "Named schedules: each a mapping of train.* values")


def _compose() -> type:
    """``Config``: the sections above with each recipe's section after ``captions``, in the order the
    settings modules declare them."""
    hints = typing.get_type_hints(Sections)
    fields = [(f.name, hints[f.name], f) for f in dataclasses.fields(Sections)]
    at = [name for name, _, _ in fields].index("captions") + 1
    taken = {name for name, _, _ in fields}
    recipes = []
    for r in RECIPES.values():
        if r.section in taken:
            raise ConfigError(f"recipe {r.step!r}: its config section {r.section!r} is taken")
        taken.add(r.section)
        recipes.append((r.section, r.settings, setting(r.settings, r.description)))
    fresh = [(name, tp, dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
             for name, tp, f in fields]
    config = dataclasses.make_dataclass("Config", fresh[:at] + recipes + fresh[at:])
    config.__module__ = __name__
    config.__doc__ = "Every section of synrep's config; ``config/config.yaml`` gives the same values, with comments."
    return config


Config = _compose()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _describe(err: OmegaConfBaseException, source: str, within: str | None = None) -> ConfigError:
    """One line: OmegaConf appends full_key / reference_type / object_type lines to its messages."""
    key = getattr(err, "full_key", None) or "?"
    if within and not key.startswith(within):
        # an element of a list of structs is checked detached from its parent: name both
        key = f"{within}' at '{key}"
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0].strip()
    return ConfigError(f"{source}: config key '{key}': {msg}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise _describe(err, source) from None


def _fails(cfg: DictConfig, item: str) -> bool:
    try:
        OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException:
        return True
    return False


def _load_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.context_mark or err.problem_mark
        what = ", ".join(filter(None, (err.context, err.problem)))
        raise ConfigError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: cannot parse YAML: {what}") from None
    except Exception as err:  # other yaml.YAMLError and friends
        raise ConfigError(f"{path}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def experiment_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    return config_dir() / "experiment" / f"{name}.yaml"


def validate(cfg: DictConfig) -> None:
    """Check what the type system cannot (allowed values, ranges, cross-field rules), with the key's path."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise _describe(err, "config") from None
    check_tree(cfg, Config)


def load_config(
    overrides: Iterable[str] = (),
    *,
    experiment: str | None = None,
    config_file: str | os.PathLike | None = None,
    base: dict | None = None,
) -> DictConfig:
    """Load and validate a config.

    Merged in order: the dataclass defaults; ``config_file`` (default ``config/config.yaml``; e.g. a
    resolved config written by Snakemake); the ``experiment`` file in ``config/experiment/``;
    ``base``, a plain mapping (Snakemake's ``--config`` / ``--configfile`` values); ``overrides``,
    ``key=value`` strings. An
    ``experiment=NAME`` item among the overrides is the same as ``experiment=NAME``.
    """
    overrides = list(overrides)
    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        if key == "experiment":
            experiment = value
        else:
            dotlist.append(item)

    default_file = Path(config_file) if config_file else config_dir() / "config.yaml"
    if not config_file and not default_file.exists():
        raise ConfigError(f"config file not found: {default_file} (run synrep from the root of a checkout, "
                          "or set SYNREP_CONFIG_DIR)")
    if base:
        base = dict(base)
        experiment = experiment or base.pop("experiment", None)
        base.pop("experiment", None)
    # Layers, lowest first: the experiment file overrides the defaults; Snakemake's --config and
    # key=value override both. A named schedule slots in above the experiment file.
    files = [(str(default_file), _load_yaml(default_file))]
    if experiment:
        files += experiment_layers(experiment_path(experiment))
    overlays = [("snakemake config", OmegaConf.create(base))] if base else []
    cfg = _merge_layers(files, overlays, dotlist)
    if cfg.schedule is not None:
        if cfg.schedule not in cfg.schedules:
            raise ConfigError(f"config key 'schedule': {cfg.schedule!r} is not one of {list(cfg.schedules)} "
                              "(defined under 'schedules:')")
        values = OmegaConf.create({"train": OmegaConf.to_container(cfg.schedules[cfg.schedule])})
        cfg = _merge_layers(files + [(f"config key 'schedules.{cfg.schedule}'", values)], overlays, dotlist)
    validate(cfg)
    return cfg


def experiment_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """An experiment file, after the file it ``extends`` (another experiment's name), if any."""
    layer = _load_yaml(path)
    parent = layer.pop("extends", None)
    if parent is None:
        return [(str(path), layer)]
    parent_path = experiment_path(str(parent))
    if parent_path in seen or parent_path == path:
        raise ConfigError(f"{path}: 'extends: {parent}' makes a cycle")
    return experiment_layers(parent_path, seen + (path,)) + [(str(path), layer)]


def _merge_layers(files: list[tuple[str, DictConfig]], overlays: list[tuple[str, DictConfig]],
                  dotlist: list[str]) -> DictConfig:
    cfg = OmegaConf.structured(Config)
    for source, layer in files + overlays:
        cfg = _merge(cfg, layer, source)
    if dotlist:
        try:
            cli = OmegaConf.from_dotlist(dotlist)
        except OmegaConfBaseException as err:
            raise _describe(err, "command line") from None
        try:
            cfg = OmegaConf.merge(cfg, cli)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or ""
            within = None
            if not any(key.startswith(item.split("=", 1)[0]) for item in dotlist):
                # OmegaConf lost the path (list elements are checked detached): find the item
                within = next((item.split("=", 1)[0] for item in dotlist if _fails(cfg, item)), None)
            raise _describe(err, "command line", within) from None
    OmegaConf.set_readonly(cfg, False)
    return cfg


def json_schema() -> dict:
    """A JSON schema of the config tree, derived from the dataclasses (for Snakemake's validate): each
    key's type and, from its field's metadata, its one-line description, bounds and allowed values."""

    keywords = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}

    def constrained(schema: dict, meta: typing.Mapping[str, Any]) -> dict:
        """A field's schema with its description, bounds and allowed values (of each item of a list)."""
        rules = {keywords[b]: meta[b] for b in keywords if b in meta}
        if "choices" in meta:
            rules["enum"] = list(meta["choices"])
        target = schema["items"] if schema.get("type") in ("array", ["array", "null"]) else schema
        if "enum" in rules and "null" in (target.get("type") or []):
            rules["enum"].append(None)
        target.update(rules)
        return {**schema, "description": meta["description"]}

    def schema_of(tp: Any) -> dict:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            props = {f.name: constrained(schema_of(hints[f.name]), f.metadata) for f in dataclasses.fields(tp)}
            return {"type": "object", "properties": props, "additionalProperties": False}
        if origin is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            inner = schema_of(args[0])
            types = inner.get("type")
            if isinstance(types, str):
                inner = dict(inner, type=[types, "null"])
            elif isinstance(types, list):
                inner = dict(inner, type=[*types, "null"])
            return inner
        if origin is list:
            (item,) = typing.get_args(tp)
            return {"type": "array", "items": schema_of(item)}
        if origin is dict:
            return {"type": "object"}
        mapping = {str: "string", int: "integer", float: "number", bool: "boolean"}
        if tp in mapping:
            # "${...}" interpolations are strings in the raw YAML
            return {"type": [mapping[tp], "string"]} if tp is not str else {"type": "string"}
        return {}

    schema = schema_of(Config)
    # Snakemake validates with Draft 2020-12 and warns about any other identifier
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = "synrep config; generated from synrep.config.Config, do not edit"
    schema["properties"]["experiment"] = {"type": "string"}
    return schema

"""The training recipes, each declared once, on its config section's dataclass.

A recipe trains one model into a folder (a pipeline folder any source can name as ``generator:``, a
CLIP folder). Its declaration says which step runs it, which function that step calls and what the
step's Snakemake rule reads::

    @recipe("train_inpaint", section="toy_inpaint", run="synrep.recipes.toy_inpaint:run",
            help="fine-tune the toy generator into a GLIDE-style inpainting model",
            description="The inpainting fine-tune's recipe")
    @dataclass
    class ToyInpaintConfig:
        output_dir: str = setting(...)
        ...

From the declaration alone, ``Config`` gains the section (``config.py``), the command line the step
(``python -m synrep train_inpaint``) and the workflow its rule (``workflow/rules/toy_models.smk``): the
rule makes ``<section>.output_dir`` from the toy world's outputs in ``world`` and the files or
folders that the section's keys in ``reads`` name, and reruns when the section (or a section in
``hash_with``) changes. A recipe whose rule has another shape (wildcards, several outputs) sets
``rule=False`` and writes it by hand.

Declarations live in settings modules (``settings.py``, ``*_settings.py``), which import nothing
heavy: the config imports every one of them when it loads, and the recipe's own module (torch,
diffusers) is imported only when its step runs. Nothing but the standard library here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Recipe:
    step: str  # python -m synrep <step>, and its Snakemake rule's name
    section: str  # its config section (a key of Config); the section has an output_dir
    settings: type  # the section's dataclass
    run: str  # "module:function", called with the loaded config when the step runs
    help: str  # the step's line in python -m synrep --help
    description: str  # the section's line in config/README.md
    world: tuple[str, ...] = ("train",)  # the toy world's outputs (rules.toyworld.output.<name>) it reads
    reads: tuple[str, ...] = ()  # keys of its section that name a file or folder it reads
    hash_with: tuple[str, ...] = ("toyworld",)  # other sections its output depends on
    rule: bool = True  # False: its rule is written by hand in the workflow
    runtime: int = 60  # minutes its rule asks a cluster for
    mem_mb: int = 4000  # memory its rule asks a cluster for

    def function(self) -> tuple[str, str]:
        module, _, name = self.run.partition(":")
        return module, name or "run"


RECIPES: dict[str, Recipe] = {}


def recipe(step: str, *, section: str, run: str, help: str, description: str, **options) -> Callable[[type], type]:
    """Declare the dataclass below as the config section of the recipe that ``step`` runs."""

    def register(settings: type) -> type:
        known = RECIPES.get(step)
        if known is not None and known.settings.__qualname__ != settings.__qualname__:
            raise ValueError(f"recipe step {step!r} is declared twice: {known.settings.__qualname__} "
                             f"and {settings.__qualname__}")
        if any(r.section == section and r.step != step for r in RECIPES.values()):
            raise ValueError(f"config section {section!r} belongs to two recipes")
        RECIPES[step] = Recipe(step=step, section=section, settings=settings, run=run, help=help,
                               description=description, **options)
        return settings

    return register

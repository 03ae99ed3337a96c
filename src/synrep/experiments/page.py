"""The page a user opens: ``results/<name>/report.html``, every table and plot of the run on one page.

It reads what the run's steps wrote under ``results/<name>/`` and adds nothing of its own: each
Markdown table file (``*.md``) rendered as HTML, each plot and sample grid (``*.png``) embedded as
a data URI (the page is one file: it opens from the results folder, from MLflow or from a mail),
each CSV linked beside its table, the ablation plots captioned with the question they answer and
the plots that wait for an axis named with the reason (``ablations/plots.json``), and a summary of
the run's config above its full resolved config.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path

from omegaconf import DictConfig

from synrep.fileio import write_text
from synrep.settings import run_dir, to_yaml

# Folders in the page's order, with what a reader finds there; any other folder with a table or a
# plot follows these under its own path, so that a new step's output is never left off the page.
SECTIONS = {
    "ablations": "Ablations: StableRep against SimCLR, CLIP and the baselines, on synthetic and real images",
    "sample_quality": "The generator: caption match and diversity against the guidance scale w",
    "inpaint_quality": "Text-guided inpainting: edit accuracy and what it preserves",
    "dreambooth_quality": "DreamBooth: subject fidelity, prompt fidelity, language drift, with and without prior preservation",
    "subject_probe": "DreamBooth as a source: the subject against its near misses",
    "nada/quality": "StyleGAN-NADA: the generator adapted to another domain from text alone",
    "shards": "Samples of each synthetic source (a row per caption)",
}
# What to read from the steps' sample grids (file name pattern -> caption; the steps that draw them
# say the same of their rows)
GRIDS = [
    (r"shards/.*/grid\.png", "Does this source draw what its captions say? A row per caption, its l images"),
    (r"sample_quality/samples_w(.*)\.png", "What the generator draws at w = {0}: a row per caption"),
    (r"dreambooth_quality/samples_(.*)\.png",
     "Is the subject kept across prompts ({0})? Rows: the instance, a new background, a new size, the class"),
    (r"nada/quality/samples\.png", "Did the domain change and the content stay? Rows: frozen, frozen + domain words, adapted"),
    (r"inpaint_quality/edits_(.*)\.png", "Does the edit ({0}) change only the masked region? Top: originals; bottom: edited"),
]
# Not results a reader compares: logs, per-run folders (their numbers are in the ablation tables),
# caption files, and DreamBooth's models and class images (its results are dreambooth_quality/).
SKIPPED = {"logs", "runs", "captions", "mlartifacts", "dreambooth"}

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .file { font-size: 0.85em; color: #555; }
.waits { color: #8a5a00; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""


def _markdown(text: str) -> str:
    """Markdown (with pipe tables) as HTML; raw HTML in it is escaped, headings sit below the
    page's own (a file's "#" becomes an h3)."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return re.sub(r"<(/?)h([1-6])>", lambda m: f"<{m.group(1)}h{min(int(m.group(2)) + 2, 6)}>", rendered)


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _link(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return f'<a href="{html.escape(rel)}">{html.escape(rel)}</a>'


def grid_caption(rel: str) -> str | None:
    for pattern, caption in GRIDS:
        match = re.fullmatch(pattern, rel)
        if match:
            return caption.format(*match.groups())
    return None


def result_files(root: Path) -> dict[str, list[Path]]:
    """The run's tables and plots by folder (relative to ``root``), in the page's order."""
    found: dict[str, list[Path]] = {}
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        if here == root:
            subfolders[:] = [d for d in subfolders if d not in SKIPPED]  # not walked at all (a run's many files)
        for name in sorted(files):
            if Path(name).suffix in (".md", ".png", ".csv"):
                found.setdefault(here.relative_to(root).as_posix(), []).append(here / name)

    def order(folder: str) -> tuple[int, str]:
        known = [i for i, name in enumerate(SECTIONS) if folder == name or folder.startswith(name + "/")]
        return (known[0] if known else len(SECTIONS) - 0.5, folder)  # others before the sample grids
    return {folder: found[folder] for folder in sorted(found, key=order)}


def config_summary(cfg: DictConfig) -> str:
    """What a reader needs to read the tables: the sweep, the training recipe, the evaluation."""
    sources = ", ".join(f"{name} ({s.mode}, {s.guidance.kind} w={s.guidance.w})" for name, s in cfg.sources.items())
    grids = "; ".join("{" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in grid.items() if v is not None) + "}"
                      for grid in cfg.sweep.grids)
    rows = [("name", cfg.name), ("data", f"{cfg.eval.dataset}; captions limit {cfg.captions.limit}"),
            ("sources", sources), ("sweep grids", grids), ("seeds", list(cfg.sweep.seeds)),
            ("training", f"{cfg.train.epochs} {cfg.train.epoch_unit} epochs, {cfg.train.batch_images} images a batch, "
                         f"default l = {cfg.train.l}, m = {cfg.train.m}"),
            ("evaluation", f"targets {', '.join(cfg.eval.targets)}; linear probe, {cfg.eval.fewshot_ways}-way "
                           f"{cfg.eval.fewshot_shots}-shot, zero-shot for text-tower methods")]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _folder_html(folder: str, files: list[Path], root: Path) -> str:
    title = next((t for name, t in SECTIONS.items() if folder == name or folder.startswith(name + "/")), folder)
    parts = [f'<section id="{html.escape(folder)}"><h2>{html.escape(title)}</h2><p class="file">{html.escape(folder)}/</p>']
    plots = {}
    plan = root / folder / "plots.json"
    if plan.exists():
        plots = {p["file"]: p for p in json.loads(plan.read_text())["plots"] if p["file"]}
        waiting = [p for p in json.loads(plan.read_text())["plots"] if p["waits"]]
        if waiting:
            items = "".join(f"<li><b>{html.escape(p['name'])}</b> ({html.escape(p['question'])}): "
                            f"{html.escape(p['waits'])}</li>" for p in waiting)
            parts.append(f'<p class="waits">Plots not drawn for this run:</p><ul class="waits">{items}</ul>')
    # a folder's main table (ablations/tables.md) before the others
    for path in sorted((p for p in files if p.suffix == ".md"), key=lambda p: (p.name != "tables.md", p.name)):
        parts.append(f'<p class="file">{_link(path, root)}</p>{_markdown(path.read_text())}')
    for path in [p for p in files if p.suffix == ".png"]:
        question = plots.get(path.name, {}).get("question") or grid_caption(path.relative_to(root).as_posix())
        caption = f"{question} ({path.relative_to(root).as_posix()})" if question else path.relative_to(root).as_posix()
        parts.append(_image(path, caption))
    csvs = [p for p in files if p.suffix == ".csv"]
    if csvs:
        parts.append('<p class="file">The tables as CSV: ' + ", ".join(_link(p, root) for p in csvs) + "</p>")
    return "".join(parts) + "</section>"


def build(cfg: DictConfig, root: Path) -> Path:
    """Write ``root/report.html`` from the tables and plots under ``root``."""
    folders = result_files(root)
    toc = "".join(f'<li><a href="#{html.escape(f)}">{html.escape(f)}</a></li>' for f in folders)
    body = "".join(_folder_html(folder, files, root) for folder, files in folders.items())
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>synrep: {html.escape(cfg.name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>synrep run: {html.escape(cfg.name)}</h1>"
            f"<p>Every table and plot this run wrote under <code>{html.escape(str(root))}</code>; cells are "
            "mean ± 95% CI over seeds unless a table says otherwise.</p>"
            f"<h2>Config</h2>{config_summary(cfg)}<ul>{toc}</ul>{body}"
            f"<section><h2>The resolved config</h2><details><summary>config.yaml</summary>"
            f"<pre>{html.escape(to_yaml(cfg))}</pre></details></section></body></html>\n")
    return write_text(root / "report.html", page)


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep page``: ``results/<name>/report.html``."""
    root = run_dir(cfg)
    if not root.is_dir():
        raise FileNotFoundError(f"no results at {root}: run the workflow first (snakemake --cores 2)")
    return {"page": build(cfg, root)}

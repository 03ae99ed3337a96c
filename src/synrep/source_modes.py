"""The source modes, each declared once: what it starts from, which per-mode settings it reads (and
what the config checks of them), how it samples and what its provenance records keep.

| mode | starts from | samples |
| --- | --- | --- |
| ``text2img`` | the caption (or a prompt of its own) | the pipeline's text-to-image call (CLIP-guided with ``guidance.kind: clip``) |
| ``inpaint`` | the caption's real image and the mask of a region | the pipeline's inpainting form (GLIDE's inpainting) |
| ``unclip`` | the caption (or a prompt of its own) | caption -> prior -> CLIP image embedding -> decoder (DALL-E 2) |
| ``variation`` | the caption's real image | its CLIP image embedding -> decoder (DALL-E 2's variations) |
| ``union`` | other sources' shards | nothing: their shards read as one data set |

Nothing but the standard library: the config checks each source against this table when it loads
(as it checks methods against training_methods.py). diffusion/sampling.py samples by what a mode
starts from: a mask takes the pipeline's inpainting form, an embedding goes through unCLIP's
decoder (from the prior on the caption, or from the real image), else the text-to-image call.
Adding a mode: one ``SourceMode`` in ``MODES`` (docs/sources-and-modes.md walks through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

# Mode inpaint: what is regenerated (the rest of the real image is kept)
INPAINT_REGIONS = ("object", "background")

# A mode's own checks of its settings: (the key under sources.<name>, the message) of each problem
Checks = Callable[[Any], Iterator[tuple[str, str]]]


def no_checks(source: Any) -> Iterator[tuple[str, str]]:
    return iter(())


@dataclass(frozen=True)
class SourceMode:
    name: str
    generates: bool = True  # False: it makes nothing, it joins other sources' shards (``union``)
    own_prompts: bool = True  # a prompts file of its own may stand in for the captions
    # Its inputs: each caption's real image (the record keeps where it comes from), the mask of the
    # region it regenerates, a CLIP image embedding its decoder reads
    real_image: bool = False
    mask: bool = False
    embedding: bool = False
    # Per-mode settings it reads (``sources.<name>.<section>``), each kept in its records; another
    # mode's section must stay at its defaults
    settings: tuple[str, ...] = ()
    # Keys of those sections its records leave out (they do not change its images)
    record_omits: tuple[str, ...] = ()
    checks: Checks = no_checks

    def first_is_real(self, spec: dict) -> bool:
        """Whether image 0 of each caption is the real image itself (not sampled): ``keep_real``."""
        return self.real_image and any(spec[s].get("keep_real", False) for s in self.settings)


def _inpaint_checks(source: Any) -> Iterator[tuple[str, str]]:
    if source.inpaint.region not in INPAINT_REGIONS:
        yield "inpaint.region", f"{source.inpaint.region!r} is not one of {list(INPAINT_REGIONS)}"
    if source.inpaint.dilate < 0:
        yield "inpaint.dilate", f"must be >= 0, got {source.inpaint.dilate!r}"
    if source.guidance.kind != "cfg":
        yield "guidance.kind", "mode inpaint guides by classifier-free guidance only"


def _unclip_checks(source: Any) -> Iterator[tuple[str, str]]:
    if source.guidance.kind != "cfg":
        yield "guidance.kind", f"mode {source.mode} guides its decoder by classifier-free guidance only"
    u = source.unclip
    if u.prior_samples < 1:
        yield "unclip.prior_samples", f"must be >= 1, got {u.prior_samples}"
    if u.prior_steps <= 0 or u.prior_w < 1:
        yield "unclip", f"prior_steps must be > 0 and prior_w >= 1, got {u.prior_steps} and {u.prior_w}"


MODES: dict[str, SourceMode] = {m.name: m for m in (
    SourceMode("text2img"),
    SourceMode("inpaint", own_prompts=False, real_image=True, mask=True, settings=("inpaint",), checks=_inpaint_checks),
    SourceMode("unclip", embedding=True, settings=("unclip",), record_omits=("caption",), checks=_unclip_checks),
    SourceMode("variation", own_prompts=False, real_image=True, embedding=True, settings=("unclip",),
               record_omits=("prior_steps", "prior_w", "use_prior", "prior_samples"), checks=_unclip_checks),
    SourceMode("union", generates=False, own_prompts=False),
)}


def get(name: str) -> SourceMode:
    if name not in MODES:
        raise ValueError(f"unknown source mode {name!r}; one of {list(MODES)}")
    return MODES[name]


def owners(section: str) -> list[str]:
    """The modes that read a settings section."""
    return [m.name for m in MODES.values() if section in m.settings]

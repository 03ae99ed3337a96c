"""Fresh images during training (``sources.<name>.refresh``): which round of a caption's images a
pass reads.

A refreshing source stores ``rounds`` rounds of l images per caption, one after another (image i of
round r is stored as image r x l + i). Pass p reads round floor(p / every) mod rounds of every
caption, so all the images of a caption in a batch come from one round, and a round depends on the
pass alone: every rank of a distributed run, and a run resumed at any pass, read the same round.
"""

from __future__ import annotations

from typing import NamedTuple

from synrep.settings import InputError


class Refresh(NamedTuple):
    every: int  # passes per round
    rounds: int
    per_round: int  # images of a caption in one round


def round_of_pass(pass_index: int, refresh: Refresh) -> int:
    return (pass_index // refresh.every) % refresh.rounds


def round_names(names: list[str], pass_index: int, refresh: Refresh, where: str) -> list[str]:
    """The image members of one caption (in stored order) that pass ``pass_index`` reads."""
    if len(names) != refresh.rounds * refresh.per_round:
        raise InputError(f"{where} has {len(names)} images; a source of {refresh.rounds} rounds of "
                         f"{refresh.per_round} stores {refresh.rounds * refresh.per_round} (rerun generate)")
    r = round_of_pass(pass_index, refresh)
    return names[r * refresh.per_round:(r + 1) * refresh.per_round]

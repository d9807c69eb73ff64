"""Score a bot classifier on labels.tsv: recall on bots, false-positive rate on humans,
per source, for two views: `whole` (every row) and `heldout` (rows from no source the
classifier ships or was tuned on; see README.md).

    python tests/data/ua_labels/score.py [--misses]

prints both tables (and, with --misses, every wrong verdict with the rule that gave it).
tests/test_bots.py enforces the targets on both views through the same functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

LABELS = Path(__file__).with_name("labels.tsv")
VIEWS = ("whole", "heldout")


@dataclass(frozen=True)
class Case:
    source: str
    label: str  # "human" or "bot"
    group: str  # the source's own category
    heldout: bool
    ua: str


@dataclass
class Score:
    bots: int = 0
    humans: int = 0
    missed: list[Case] = field(default_factory=list)  # bots judged human
    dropped: list[tuple[Case, str]] = field(default_factory=list)  # humans judged bot, with the rule

    @property
    def recall(self) -> float:
        return 1 - len(self.missed) / self.bots if self.bots else 1.0

    @property
    def fpr(self) -> float:
        return len(self.dropped) / self.humans if self.humans else 0.0


def load(path: Path = LABELS) -> list[Case]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        source, label, group, heldout, ua = line.split("\t")
        cases.append(Case(source, label, group, heldout == "1", ua))
    return cases


Classify = Callable[[str], tuple[bool, str]]  # ua -> (bot, rule)


def score(cases: Iterable[Case], classify: Classify) -> dict[str, dict[str, Score]]:
    """view -> source -> Score; the source `all` counts each distinct UA once."""
    out: dict[str, dict[str, Score]] = {v: {} for v in VIEWS}
    counted: dict[str, set[str]] = {v: set() for v in VIEWS}
    for case in cases:
        bot, rule = classify(case.ua)
        for view in VIEWS:
            if view == "heldout" and not case.heldout:
                continue
            keys = [case.source]
            if case.ua not in counted[view]:
                counted[view].add(case.ua)
                keys.append("all")
            for key in keys:
                s = out[view].setdefault(key, Score())
                if case.label == "bot":
                    s.bots += 1
                    if not bot:
                        s.missed.append(case)
                else:
                    s.humans += 1
                    if bot:
                        s.dropped.append((case, rule))
    return out


def table(scores: dict[str, Score]) -> str:
    rows = ["| source | bots | recall | humans | dropped | FPR |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in sorted(scores, key=lambda n: (n == "all", n)):
        s = scores[name]
        label = f"**{name}**" if name == "all" else name
        rows.append(f"| {label} | {s.bots:,} | {s.recall:.1%} | {s.humans:,} | {len(s.dropped)} | {s.fpr:.2%} |")
    return "\n".join(rows)


def report(result: dict[str, dict[str, Score]], misses: bool = False) -> str:
    parts = []
    for view in VIEWS:
        parts += [f"{view} view", table(result[view]), ""]
    if misses:
        everything = result["whole"]["all"]
        parts.append("humans dropped (rule, source, group, ua):")
        parts += [f"  {rule}\t{c.source}\t{c.group}\t{c.ua}" for c, rule in everything.dropped]
        parts.append("bots missed (source, group, ua):")
        parts += [f"  {c.source}\t{c.group}\t{c.ua}" for c in everything.missed]
    return "\n".join(parts)


def tally_classifier() -> Classify:
    from tally.streams.bots import classify_ua

    def classify(ua: str) -> tuple[bool, str]:
        v = classify_ua(ua)
        return v.bot, v.rule
    return classify


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    print(report(score(load(), tally_classifier()), misses="--misses" in sys.argv))

"""Unicode TR39 skeletons: one string for all the names that look alike.

Two names are confusable when their skeletons are equal (Unicode Technical
Standard #39, section 4): ``skeleton(X)`` is ``NFD(X)`` with each character
replaced by the prototype of its class in ``confusables.txt``, in NFD again. So
Cyrillic ``a`` (U+0430) and Latin ``a`` have one skeleton, as do ``0`` and ``O``, ``1``
and ``l``, ``rn`` and ``m``.

The data is Unicode's ``confusables.txt`` as the ``confusable-homoglyphs``
package ships it (a well-kept package that tracks Unicode's releases). It keeps
each line in both directions and drops which side is the prototype, so this
module rebuilds the classes: a source maps to exactly one prototype and a
prototype is never a source, so a character with several homoglyphs, or whose
one homoglyph has several, is a prototype (or maps to it); a pair of characters
that only look like each other maps to the smaller one. Which member of a class
stands for it does not matter, only that it is one.

The table (about 7,700 entries) is built on first use, from the package's data
file, without importing the package itself: its module keeps every character's
name in memory (about 14 MiB of resident memory); this costs about 2.5 MiB.
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from importlib import resources
from typing import Any

# The package's data marks right-to-left characters with LEFT-TO-RIGHT MARKs.
_LRM = "\u200e"


def _homoglyphOnly(pairs: list[tuple[str, Any]]) -> Any:
    """json object hook: ``{"c": X, "n": NAME}`` becomes X, so no name is kept."""
    if pairs and pairs[0][0] == "c":
        return pairs[0][1]
    return pairs


@cache
def prototypes() -> dict[str, str]:
    """Each character that is not the prototype of its class -> that prototype."""
    # Built from one flat string once the parse's objects are freed, so the table
    # is not scattered among them: 2.5 MiB of resident memory instead of 5.5.
    return dict(item.split("\1") for item in _flatTable().split("\0"))


def _flatTable() -> str:
    """The table as ``char \\1 prototype`` items joined by ``\\0``."""
    data = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_bytes()
    glyphs: dict[str, list[str]] = {}
    for key, others in json.loads(data, object_pairs_hook=_homoglyphOnly):
        glyphs.setdefault(key.replace(_LRM, ""), []).extend(o.replace(_LRM, "") for o in others)
    items: list[str] = []
    for char, others in glyphs.items():
        if len(char) != 1 or len(others) != 1:
            continue  # a sequence (never a source) or a prototype with several sources
        (other,) = others
        if len(other) != 1 or len(glyphs.get(other, ())) > 1 or other < char:
            # other is the prototype, or (a pair alike only to each other) the smaller
            items.append(char + "\1" + other)
    return "\0".join(items)


def skeleton(text: str) -> str:
    """The TR39 skeleton of ``text``: equal for strings that look alike."""
    table = prototypes()
    text = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join([table.get(c, c) for c in text]))

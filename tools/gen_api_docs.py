#!/usr/bin/env python3
"""Generates docs/api.md, the API reference, from the comments of
include/gsink.h (the header is the documentation).

    tools/gen_api_docs.py            rewrite docs/api.md
    tools/gen_api_docs.py --check    fail if docs/api.md is out of date

Rules the header follows and this script relies on: sections are introduced
by a three-line banner (/* ---- */, /* Title */, /* ---- */); a comment
directly above one or more declarations documents them all (a blank line ends
the group); field and enumerator comments stay in the code block.
"""
import argparse
import difflib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "include", "gsink.h")
OUTPUT = os.path.join(ROOT, "docs", "api.md")

BANNER = re.compile(r"^/\*\s*-{10,}\s*\*/$")


def comment_text(lines):
    """Text of a block comment given as source lines, without the markers."""
    out = []
    for ln in lines:
        s = ln.strip()
        s = re.sub(r"^/\*+\s?", "", s)
        s = re.sub(r"\s*\*+/$", "", s)
        s = re.sub(r"^\*\s?", "", s)
        out.append(s.rstrip())
    while out and not out[0]:
        out.pop(0)
    while out and not out[-1]:
        out.pop()
    return out


def declared_names(code):
    """Names a declaration block introduces (functions, types, macros)."""
    names = []
    for m in re.finditer(r"\b(gsink_[a-z0-9_]+)\s*\(", code):
        if m.group(1) not in names and not code[: m.start()].rstrip().endswith("("):
            names.append(m.group(1))
    for m in re.finditer(r"}\s*(gsink_[a-z0-9_]+)\s*;", code):
        names.append(m.group(1))
    for m in re.finditer(r"^#define\s+(GSINK_[A-Z0-9_]+)", code, re.M):
        names.append(m.group(1))
    return names


def parse(text):
    lines = text.splitlines()
    i = 0
    # File comment: the introduction.
    intro = []
    if lines and lines[0].startswith("/*"):
        while i < len(lines):
            intro.append(lines[i])
            i += 1
            if lines[i - 1].rstrip().endswith("*/"):
                break
    intro = comment_text(intro)

    sections = []  # (title, [(doc_lines, code)])
    current = ("Preamble", [])
    pending = []  # comment lines waiting for declarations
    group = None  # (doc, [code blocks]) being built

    def flush():
        nonlocal group
        if group and group[1]:
            current[1].append((group[0], "\n".join(group[1])))
        group = None

    while i < len(lines):
        ln = lines[i]
        s = ln.strip()
        if BANNER.match(s) and i + 2 < len(lines) and BANNER.match(lines[i + 2].strip()):
            flush()
            pending = []
            if current[1]:
                sections.append(current)
            current = (" ".join(comment_text([lines[i + 1]])), [])
            i += 3
            continue
        if not s:
            flush()
            pending = []
            i += 1
            continue
        if s.startswith("/*"):
            flush()
            block = [ln]
            while not lines[i].rstrip().endswith("*/"):
                i += 1
                block.append(lines[i])
            if pending:  # two comments in a row: the first is prose
                current[1].append((pending, ""))
            pending = comment_text(block)
            i += 1
            continue
        if s.startswith(("#ifndef", "#ifdef", "#if ", "#elif", "#else", "#endif", "#include", "extern", "}")) \
                or s in ("#define GSINK_H",) or s.startswith("#define GSINK_API") or s == "#endif /* GSINK_H */":
            flush()
            pending = []
            i += 1
            continue
        # A declaration: a macro, a typedef or a function.
        block = [ln]
        if s.startswith("#define"):
            while block[-1].rstrip().endswith("\\"):
                i += 1
                block.append(lines[i])
        elif s.startswith("typedef") and "{" in s:
            while not re.match(r"^\}\s*\w+\s*;", lines[i].strip()):
                i += 1
                block.append(lines[i])
        else:
            while ";" not in re.sub(r"/\*.*?\*/", "", lines[i]):
                i += 1
                block.append(lines[i])
        i += 1
        if block[0].startswith("GSINK_API "):
            # Drop the export macro and re-indent the continuation lines.
            pad = " " * len("GSINK_API ")
            block = [block[0][len("GSINK_API "):]] + [
                b[len(pad):] if b.startswith(pad) else b for b in block[1:]]
        code = "\n".join(block)
        if group is None:
            group = (pending, [])
            pending = []
        group[1].append(code)
    flush()
    if current[1]:
        sections.append(current)
    return intro, sections


def slug(title):
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).strip().replace(" ", "-")


def render_doc(doc):
    """Plain comment text becomes a paragraph; text laid out with indented
    lines (lists, tables) keeps its layout in a text block."""
    if any(l.startswith((" ", "-")) for l in doc[1:]):
        head = []
        while doc and not doc[0].startswith((" ", "-")) and not doc[0].endswith(":"):
            head.append(doc.pop(0))
        if doc and doc[0].endswith(":"):
            head.append(doc.pop(0))
        out = [" ".join(head)] if head else []
        return out + ["", "```text"] + doc + ["```"]
    return [" ".join(l.strip() for l in doc if l.strip())]


def render(intro, sections):
    out = ["# libgsink API reference", "",
           "<!-- Generated by tools/gen_api_docs.py from include/gsink.h; do not edit. "
           "`meson test --suite docs` fails when this file is out of date. -->", ""]
    out += intro + [""]
    out += ["## Contents", ""]
    for title, _ in sections:
        out.append("- [%s](#%s)" % (title, slug(title)))
    out.append("")
    for title, items in sections:
        out += ["## " + title, ""]
        for doc, code in items:
            if code:
                names = declared_names(code)
                if names:
                    out += ["### " + ", ".join("`%s`" % n for n in names), ""]
                out += ["```c", code, "```", ""]
            if doc:
                out += render_doc(doc) + [""]
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if docs/api.md differs")
    ap.add_argument("--header", default=HEADER)
    ap.add_argument("--output", default=OUTPUT)
    args = ap.parse_args()
    with open(args.header, encoding="utf-8") as f:
        md = render(*parse(f.read()))
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                have = f.read()
        except FileNotFoundError:
            have = ""
        if have != md:
            sys.stdout.writelines(difflib.unified_diff(
                have.splitlines(True), md.splitlines(True), "docs/api.md", "generated"))
            print("gen_api_docs: docs/api.md is out of date; run tools/gen_api_docs.py", file=sys.stderr)
            return 1
        print("gen_api_docs: docs/api.md is up to date")
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(md)
    print("gen_api_docs: wrote %s" % os.path.relpath(args.output, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())

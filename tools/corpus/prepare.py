#!/usr/bin/env python3
"""Prepare the training corpus for gsink-train.

Sources: the English documentation of ten Debian packages (all in Debian main,
free licences), about 40 MB of clean prose:
  - linux-doc-6.1       the Linux kernel Documentation/ tree, rst (GPL-2.0);
  - python3.11-doc      the Python 3.11 documentation sources, rst (PSF-2.0);
  - perl-doc            perlfunc, perlop, perlfaq, perlre, ... and the perl*delta
                        release notes, POD (GPL-1+ or Artistic);
  - postgresql-doc-15   the PostgreSQL 15 manual, DocBook HTML (PostgreSQL licence);
  - sqlite3-doc         the SQLite documentation, HTML (public domain);
  - python-django-doc   the Django documentation, Sphinx HTML (BSD-3-Clause);
  - git-doc             the Git manual pages and user manual, AsciiDoc HTML (GPL-2.0);
  - rust-doc            the Rust books: the book, reference, nomicon, edition guide,
                        embedded book, rustc/rustdoc books, Rust by Example; mdBook
                        HTML (MIT or Apache-2.0; the generated API docs are skipped);
  - debian-handbook     The Debian Administrator's Handbook, en-US, DocBook HTML
                        (GPL-2+ or CC-BY-SA-3.0);
  - debian-reference-en the Debian Reference, DocBook HTML (GPL-2+).
See docs/training.md for why these.

Steps
  1. read every English document of each source package (rst/.txt, .html or
     .pod; gzip or plain; see FORMATS), skipping translations, machine-readable
     bindings, generated API references, indexes and redirect pages;
  2. clean, per format (clean_rst, clean_html, clean_pod): drop code/literal
     blocks, tables, headings, navigation and markup, keep prose paragraphs
     (one paragraph per line, each accepted by is_prose); in the new packages
     a paragraph already seen in the same package is dropped (boilerplate);
  3. shuffle documents with --seed and hold out --val-fraction of them;
  4. train a byte-level BPE tokenizer (HuggingFace `tokenizers`) on the
     training split, with <|endoftext|> as the only special token;
  5. write train.bin / val.bin: every document's tokens followed by
     <|endoftext|> (no BOS), packed as uint16 (vocab <= 65536) or int32,
     behind a 40-byte header that gsink-train verifies; meta.json has the
     statistics, per package too.

Token file header (little-endian, 40 bytes):
  char[8] magic "GSKTOK\\0\\1" | u32 version (1) | u32 dtype bytes (2 or 4)
  u64 token count | u32 vocab size | i32 end-of-text id
  u32 CRC-32 (zlib) of the payload | u32 reserved (0)

Usage (no installation; fetch.sh runs `apt-get download` for every source package):
  tools/corpus/fetch.sh .cache/corpus/debs
  nice -n 19 .venv/bin/python tools/corpus/prepare.py --out .cache/corpus/docs-v2 \\
      --deb .cache/corpus/debs/*.deb
  # or with the packages installed (apt-get install <the packages above>):
  .venv/bin/python tools/corpus/prepare.py --out .cache/corpus/docs-v2
  # the first, smaller corpus (.cache/corpus/docs): the two rst packages only
  .venv/bin/python tools/corpus/prepare.py --out .cache/corpus/docs \\
      --packages linux-doc-6.1,python3.11-doc --deb ...
"""
import argparse
import gzip
import html
import html.parser
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

MAGIC = b"GSKTOK\x00\x01"
VERSION = 1
HEADER = struct.Struct("<8sIIQIiII")
assert HEADER.size == 40
EOT = "<|endoftext|>"
# package -> directory of its English documentation inside the package (or below --root)
SOURCES = {
    "linux-doc-6.1": "usr/share/doc/linux-doc-6.1/Documentation",
    "python3.11-doc": "usr/share/doc/python3.11/html/_sources",
    "debian-handbook": "usr/share/doc/debian-handbook/html/en-US",
    "debian-reference-en": "usr/share/debian-reference",  # shared by all languages: *.en.html
    "git-doc": "usr/share/doc/git-doc",
    "perl-doc": "usr/share/perl/5.36.0/pod",
    "postgresql-doc-15": "usr/share/doc/postgresql-doc-15/html",
    "rust-doc": "usr/share/doc/rust-doc/html",
    "python-django-doc": "usr/share/doc/python-django-doc/html",
    "sqlite3-doc": "usr/share/doc/sqlite3",
}

SKIP_DIRS = ("translations", "devicetree/bindings", "sphinx", "sphinx-static", "images")
# the mdBook books of rust-doc (the API reference, std/core/alloc/..., is generated,
# repetitive and mostly signatures; the unstable book is mostly feature stubs)
RUST_BOOKS = ("book", "reference", "nomicon", "edition-guide", "embedded-book", "rustc", "rustdoc",
              "rust-by-example")
RUST_SKIP = ("book/2018-edition", "book/first-edition", "book/second-edition")  # redirect stubs
# package -> how its documents are read:
#   fmt: cleaner ("rst", "html" or "pod"); suffixes: file names kept (before .gz);
#   only: top-level directories read (default all); skip: directory prefixes
#   (relative to the source directory) not descended into;
#   skip_files: file names not read (mdBook's print.html repeats the whole book);
#   dedup: drop a paragraph already seen in an earlier document of the package
#   (boilerplate: release-note footers, "see also" lines, rust-doc's redirect
#   stubs); off for the two original sources so that they are cleaned exactly
#   as in the first corpus (.cache/corpus/docs).
FORMATS = {
    "linux-doc-6.1": {"fmt": "rst", "suffixes": (".rst", ".txt"), "skip": SKIP_DIRS, "dedup": False},
    "python3.11-doc": {"fmt": "rst", "suffixes": (".rst", ".txt"), "skip": SKIP_DIRS, "dedup": False},
    "debian-handbook": {"fmt": "html", "suffixes": (".html",), "skip": ("Common_Content",)},
    "debian-reference-en": {"fmt": "html", "suffixes": (".en.html",), "skip": ()},
    "git-doc": {"fmt": "html", "suffixes": (".html",), "skip": ()},
    "perl-doc": {"fmt": "pod", "suffixes": (".pod",), "skip": ()},
    "postgresql-doc-15": {"fmt": "html", "suffixes": (".html",), "skip": ()},
    "rust-doc": {"fmt": "html", "suffixes": (".html",), "only": RUST_BOOKS, "skip": RUST_SKIP,
                 "skip_files": ("print.html", "404.html", "toc.html", "SUMMARY.html")},
    "python-django-doc": {"fmt": "html", "suffixes": (".html",), "skip": ("_static", "_images"),
                          "skip_files": ("genindex.html", "py-modindex.html", "search.html")},
    "sqlite3-doc": {"fmt": "html", "suffixes": (".html",), "skip": ("images",)},
}
assert set(FORMATS) == set(SOURCES)


def write_tokens(path, tokens, vocab_size, eot_id):
    """Writes a token file atomically (temporary file, fsync, rename)."""
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    arr = np.ascontiguousarray(np.asarray(tokens, dtype=dtype))
    payload = arr.tobytes()
    hdr = HEADER.pack(MAGIC, VERSION, arr.dtype.itemsize, arr.size, vocab_size, eot_id,
                      zlib.crc32(payload) & 0xFFFFFFFF, 0)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(hdr)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_tokens(path):
    """Reads and verifies a token file; raises ValueError if it is corrupt."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < HEADER.size:
        raise ValueError(f"{path}: shorter than the header")
    magic, version, dbytes, count, vocab, eot, crc, _ = HEADER.unpack_from(raw)
    if magic != MAGIC or version != VERSION or dbytes not in (2, 4):
        raise ValueError(f"{path}: not a version-1 gsink token file")
    payload = raw[HEADER.size:]
    if len(payload) != count * dbytes or (zlib.crc32(payload) & 0xFFFFFFFF) != crc:
        raise ValueError(f"{path}: size or checksum mismatch")
    arr = np.frombuffer(payload, dtype=np.uint16 if dbytes == 2 else np.int32)
    return arr, vocab, eot


# ---- cleaning ---------------------------------------------------------------

INLINE_RULES = [
    (re.compile(r":[a-zA-Z:+-]+:`([^`<]*?)\s*<[^`>]*>`"), r"\1"),  # :ref:`text <label>`
    (re.compile(r":[a-zA-Z:+-]+:`([^`]*)`"), r"\1"),              # :c:func:`foo`
    (re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?"), r"\1"),              # `text <url>`_
    (re.compile(r"``([^`]+)``"), r"\1"),                           # ``literal``
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),                        # `interpreted`
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),                       # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?!\w)"), r"\1"),     # *emphasis*
    (re.compile(r"\|([A-Za-z][\w -]*)\|"), r"\1"),                 # |substitution|
    (re.compile(r"\[#?\w*\]_"), ""),                                # footnote refs
    (re.compile(r"\s+"), " "),
]
CODE_HINT = re.compile(r"[{};]\s*$|^\s*#\s*(include|define|if)|->|==|\(\)\s*;|^\s*(\$|#) |0x[0-9a-fA-F]{4,}")
ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+_.:])\1{2,}\s*$")
TABLE = re.compile(r"^\s*[+|].*[+|]\s*$|^\s*(=+\s+)+=+\s*$")


def clean_inline(text):
    for pat, rep in INLINE_RULES:
        text = pat.sub(rep, text)
    return text.strip()


def is_prose(par):
    if len(par) < 40:
        return False
    words = par.split()
    if len(words) < 6:
        return False
    letters = sum(c.isalpha() or c == " " for c in par)
    if letters / len(par) < 0.80:
        return False
    if not par.isascii():
        non_ascii = sum(not c.isascii() for c in par)
        if non_ascii / len(par) > 0.02:
            return False
    # mostly lower-case words with ordinary punctuation: English sentences
    wordlike = sum(w.strip(".,;:()!?'\"").isalpha() for w in words)
    return wordlike / len(words) >= 0.75


def clean_rst(text):
    """Keeps the prose paragraphs of an rst/txt document, one per line."""
    lines = text.replace("\t", "        ").split("\n")
    out, par = [], []
    skip_indent = None  # indentation of a literal/directive block being skipped
    prev_literal = False

    def flush():
        if par:
            joined = clean_inline(" ".join(par))
            if is_prose(joined):
                out.append(joined)
            par.clear()

    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_indent is not None:
            if stripped == "" or indent > skip_indent:
                continue
            skip_indent = None
        if stripped == "":
            flush()
            continue
        if stripped.startswith(".. ") or stripped == "..":
            flush()
            skip_indent = indent  # directive + its indented body (code, tables, toctree)
            continue
        if ADORNMENT.match(line) or TABLE.match(line):
            flush()
            par.clear()  # a heading's title line: do not keep it as prose
            continue
        if stripped.startswith(":") and re.match(r"^:[\w -]+:", stripped):
            flush()
            continue
        if CODE_HINT.search(stripped):
            flush()
            par.clear()
            continue
        if par and indent > 0 and prev_literal:
            continue
        par.append(stripped.lstrip("-*+# ").strip() if re.match(r"^[-*+]\s", stripped) else stripped)
        if stripped.endswith("::"):
            # rst literal block follows: drop the marker, skip the indented block
            par[-1] = par[-1][:-2].rstrip() + ("" if par[-1].endswith(" ::") else ":")
            flush()
            skip_indent = indent
    flush()
    return "\n".join(out)


# Typographic characters of HTML/POD documentation, mapped to ASCII so that the
# (mostly ASCII) corpus does not spend vocabulary or the non-ASCII budget of
# is_prose on them. Applied by the HTML and POD cleaners only.
TYPOGRAPHY = str.maketrans({
    "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2009": " ", "\u200b": "",
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2010": "-", "\u2011": "-", "\u2013": "-", "\u2014": " - ", "\u2026": "...",
    "\u00ad": "", "\u2032": "'",
})


def _keep(text, out):
    text = re.sub(r"\s+", " ", text.translate(TYPOGRAPHY)).strip()
    if is_prose(text):
        out.append(text)


class _ProseHTML(html.parser.HTMLParser):
    """Collects the text of an HTML page's block elements, one paragraph each.

    Code, tables, headings, navigation, tables of contents and scripts are
    skipped with everything inside them; every block-level tag ends the current
    paragraph, so list items, definitions and block quotes become paragraphs of
    their own and is_prose then keeps only the prose-like ones.
    """
    SKIP_TAGS = {"head", "script", "style", "pre", "table", "nav", "h1", "h2", "h3", "h4", "h5",
                 "h6", "dt", "svg", "math", "button", "select", "textarea", "noscript", "form",
                 "kbd", "samp", "figure", "caption"}
    SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures",
                    "list-of-examples", "sphinxsidebar", "related", "menu-bar", "nav-wrapper", "nav-wide-wrapper",
                    "programlisting", "screen", "synopsis", "cmdsynopsis", "funcsynopsis",
                    "literallayout", "refsynopsisdiv", "refnamediv", "titlepage", "index",
                    "footnotes", "footer", "header", "verseblock", "listingblock", "literalblock",
                    "mermaid", "legalnotice", "title"}
    BLOCK_TAGS = {"p", "div", "li", "dd", "dl", "ul", "ol", "blockquote", "br", "hr", "tr", "td",
                  "th", "section", "article", "aside", "main", "body", "header", "footer",
                  "details", "summary", "center", "address", "img"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.buf = [], []
        self.skip_tag, self.skip_depth = None, 0

    def flush(self):
        if self.buf:
            _keep("".join(self.buf), self.out)
            self.buf.clear()

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in self.SKIP_TAGS or classes & self.SKIP_CLASSES:
            self.flush()
            if tag not in ("br", "hr", "img"):
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in self.BLOCK_TAGS:
            self.flush()

    def handle_startendtag(self, tag, attrs):
        if self.skip_tag is None and tag in self.BLOCK_TAGS:
            self.flush()

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in self.BLOCK_TAGS:
            self.flush()

    def handle_data(self, data):
        if self.skip_tag is None:
            self.buf.append(data)


def clean_html(text):
    """Keeps the prose paragraphs of an HTML page (DocBook, AsciiDoc or mdBook output)."""
    p = _ProseHTML()
    p.feed(text)
    p.close()
    p.flush()
    return "\n".join(p.out)


POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'"}


def _pod_code(code, body):
    body = body.strip()
    if code in "XZ":
        return ""
    if code == "E":
        if body in POD_ESCAPES:
            return POD_ESCAPES[body]
        if body.isdigit() or body.lower().startswith("0x"):
            return chr(int(body, 0))
        return html.unescape("&" + body + ";")
    if code == "L":
        if "|" in body:
            return body.split("|", 1)[0]
        if "://" in body:
            return body
        name, _, sect = body.partition("/")
        sect = sect.strip('"')
        return f"{sect} in {name}" if name and sect else (sect or name)
    return body  # B, C, I, F, S and unknown codes: their text


def pod_inline(text):
    """Expands POD formatting codes (B<x>, C<< x >>, L<text|target>, E<gt>...)."""
    # multi-bracket codes (C<< $a->b >>) may contain < and >: expand them first
    while True:
        m = re.search(r"([A-Z])(<{2,})\s", text)
        if not m:
            break
        close = text.find(" " + ">" * len(m.group(2)), m.end() - 1)
        if close < 0:
            text = text[:m.start()] + text[m.start() + 1:]  # unbalanced: drop the code letter
            continue
        text = (text[:m.start()] + _pod_code(m.group(1), text[m.end():close])
                .replace("<", "\x01").replace(">", "\x02")
                + text[close + 1 + len(m.group(2)):])
    # single-bracket codes, innermost first
    inner = re.compile(r"([A-Z])<([^<>]*)>")
    while True:
        new = inner.sub(lambda m: _pod_code(m.group(1), m.group(2)).replace("<", "\x01")
                        .replace(">", "\x02"), text)
        if new == text:
            break
        text = new
    return text.replace("\x01", "<").replace("\x02", ">")


def clean_pod(text):
    """Keeps the prose paragraphs of a POD document, one per line.

    Command paragraphs (=head, =item, =over...) are dropped, as are verbatim
    (indented) paragraphs and =begin/=end and =for blocks; ordinary paragraphs
    have their formatting codes expanded and are kept if they read as prose.
    """
    out = []
    in_pod, in_begin = False, None
    for par in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        par = par.strip("\n")
        if not par.strip():
            continue
        if par.startswith("="):
            cmd, _, rest = par.partition(" ")
            cmd = cmd.split("\n")[0]
            if cmd == "=cut":
                in_pod = False
            else:
                in_pod = True
            if cmd == "=begin":
                in_begin = rest.split()[0] if rest.split() else ""
            elif cmd == "=end":
                in_begin = None
            continue
        if not in_pod or in_begin is not None:
            continue
        if par[0] in " \t":
            continue  # verbatim (code)
        _keep(pod_inline(par), out)
    return "\n".join(out)


CLEANERS = {"rst": clean_rst, "html": clean_html, "pod": clean_pod}


def iter_documents(root, pkg):
    """Yields (name, text) for every document of one source package, in a fixed order."""
    spec = FORMATS[pkg]
    skip, only = spec["skip"], spec.get("only")
    skip_files = spec.get("skip_files", ())
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames
                             if not any(os.path.join(rel, d).lstrip("./").startswith(s) for s in skip)
                             and (only is None or rel != "." or d in only))
        if only is not None and rel == ".":
            continue  # only the listed top-level directories
        for name in sorted(filenames):
            base = name[:-3] if name.endswith(".gz") else name
            if not base.endswith(spec["suffixes"]) or base.endswith(".py.txt") or base in skip_files:
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue  # aliases (git-doc's index.html) and links out of the package
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                raw = f.read()
            yield pkg + ":" + os.path.relpath(path, root), raw.decode("utf-8", errors="replace")


def extract_deb(deb, dest):
    """Extracts the documentation directories of a source package's .deb into dest.

    The package is named by the .deb's control file; only its SOURCES directory
    (for rust-doc, only the books read) is unpacked. A .deb of another package
    is unpacked whole, and the source directories are then looked for in it.
    """
    os.makedirs(dest, exist_ok=True)
    pkg = subprocess.run(["dpkg-deb", "-f", deb, "Package"], check=True, capture_output=True,
                         text=True).stdout.strip()
    if pkg in SOURCES:
        only = FORMATS[pkg].get("only")
        members = ["./" + SOURCES[pkg] + ("/" + d if d else "") for d in (only or [""])]
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
        # (quiet: a member hard-linked to a file outside them fails; then unpack it all)
        r = subprocess.run(["tar", "-x", "-C", dest] + members, stdin=tar.stdout,
                           stderr=subprocess.DEVNULL)
        tar.stdout.close()
        if tar.wait() == 0 and r.returncode == 0:
            return
    subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)


def unigram_entropy_nats(tokens, vocab):
    counts = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/", help="where the packages are installed (default /)")
    ap.add_argument("--deb", action="extend", nargs="+", default=[],
                    help=".deb files of the source packages to extract instead of installing them "
                         "(--deb A.deb B.deb or --deb A.deb --deb B.deb), or a directory of them")
    ap.add_argument("--packages", default="",
                    help="comma-separated subset of the source packages to use (default: all of "
                         + ", ".join(SOURCES) + ")")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-docs", type=int, default=0, help="use only the first N documents (tests)")
    args = ap.parse_args()

    wanted = [p.strip() for p in args.packages.split(",") if p.strip()] if args.packages else list(SOURCES)
    unknown = [p for p in wanted if p not in SOURCES]
    if unknown:
        sys.exit(f"prepare.py: unknown source packages {' '.join(unknown)} (known: {' '.join(SOURCES)})")

    debs = []
    for deb in args.deb:
        if os.path.isdir(deb):
            debs += sorted(os.path.join(deb, f) for f in os.listdir(deb) if f.endswith(".deb"))
        else:
            debs.append(deb)
    roots = {}
    tmpdir = tempfile.TemporaryDirectory()
    for deb in debs:
        dest = os.path.join(tmpdir.name, os.path.basename(deb))
        extract_deb(deb, dest)
        for pkg in wanted:
            if os.path.isdir(os.path.join(dest, SOURCES[pkg])):
                roots[pkg] = os.path.join(dest, SOURCES[pkg])
    for pkg in wanted:
        if pkg not in roots and os.path.isdir(os.path.join(args.root, SOURCES[pkg])):
            roots[pkg] = os.path.join(args.root, SOURCES[pkg])
    missing = [p for p in wanted if p not in roots]
    if missing:
        sys.exit(f"prepare.py: corpus packages not found: {' '.join(missing)}; install them with "
                 f"`apt-get install {' '.join(missing)}` or pass their .deb files with --deb "
                 f"(tools/corpus/fetch.sh DIR downloads them)")

    t0 = time.time()
    docs, raw_chars = [], 0
    per_pkg = {pkg: {"format": FORMATS[pkg]["fmt"], "files": 0, "documents": 0,
                     "chars_raw": 0, "chars_clean": 0} for pkg in sorted(roots)}
    for pkg in sorted(roots):
        if args.max_docs and len(docs) >= args.max_docs:
            break
        clean = CLEANERS[FORMATS[pkg]["fmt"]]
        stats = per_pkg[pkg]
        dedup, seen = FORMATS[pkg].get("dedup", True), set()
        for rel, text in iter_documents(roots[pkg], pkg):
            raw_chars += len(text)
            stats["files"] += 1
            stats["chars_raw"] += len(text)
            cleaned = clean(text)
            if dedup:
                pars = [p for p in cleaned.split("\n") if p not in seen]
                seen.update(pars)
                cleaned = "\n".join(pars)
            if len(cleaned) >= 200:
                docs.append((rel, cleaned))
                stats["documents"] += 1
                stats["chars_clean"] += len(cleaned)
            if args.max_docs and len(docs) >= args.max_docs:
                break
        if stats["files"] == 0:
            print(f"prepare.py: warning: no documents of {pkg} in {roots[pkg]} (is the package "
                  f"installed, or its .deb passed?)", file=sys.stderr)
        print(f"  {pkg}: {stats['documents']} documents, {stats['chars_raw'] / 1e6:.1f} MB raw -> "
              f"{stats['chars_clean'] / 1e6:.1f} MB clean ({time.time() - t0:.1f}s)", flush=True)
    rng = random.Random(args.seed)
    rng.shuffle(docs)
    n_val = max(1, int(round(len(docs) * args.val_fraction)))
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    clean_chars = sum(len(d) for _, d in docs)
    print(f"documents: {len(docs)} kept ({len(train_docs)} train, {len(val_docs)} val); "
          f"{raw_chars / 1e6:.1f} MB raw -> {clean_chars / 1e6:.1f} MB clean text "
          f"({time.time() - t0:.1f}s)", flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train.txt"), "w") as f:
        for _, d in train_docs:
            f.write(d + "\n\n")

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d for _, d in train_docs), trainer=trainer)
    eot_id = tok.token_to_id(EOT)
    vocab = tok.get_vocab_size()
    tok.save(os.path.join(args.out, "tokenizer.json"))
    print(f"tokenizer: byte-level BPE, vocab {vocab}, {EOT} = {eot_id} ({time.time() - t0:.1f}s)", flush=True)

    def encode(split):
        ids = []
        for enc in tok.encode_batch([d for _, d in split]):
            ids.extend(enc.ids)
            ids.append(eot_id)
        return np.asarray(ids, dtype=np.int64)

    train_ids, val_ids = encode(train_docs), encode(val_docs)
    write_tokens(os.path.join(args.out, "train.bin"), train_ids, vocab, eot_id)
    write_tokens(os.path.join(args.out, "val.bin"), val_ids, vocab, eot_id)
    os.remove(os.path.join(args.out, "train.txt"))
    meta = {
        "source": "Debian packages " + ", ".join(sorted(roots))
                  + " (English documentation: reStructuredText, HTML, POD)",
        "packages": per_pkg,
        "debs": [os.path.basename(d) for d in debs],
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "chars": {"raw": raw_chars, "clean": clean_chars},
        "tokens": {"train": int(train_ids.size), "val": int(val_ids.size)},
        "vocab_size": vocab, "eot_id": eot_id, "seed": args.seed,
        "unigram_entropy_nats": {"train": unigram_entropy_nats(train_ids, vocab),
                                 "val": unigram_entropy_nats(val_ids, vocab)},
        "val_documents": [r for r, _ in val_docs],
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"tokens: train {train_ids.size}, val {val_ids.size}; chars/token "
          f"{clean_chars / (train_ids.size + val_ids.size):.2f}; unigram entropy "
          f"{meta['unigram_entropy_nats']['val']:.3f} nats ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()

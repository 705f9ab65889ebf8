#!/usr/bin/env python3
"""page-fill.py BOOK.pdf TOC: the pages of the book that are more than a
third empty, not counting the last page of each chapter.

Each page is rendered in grey at 50 dpi (pdftoppm). A row is ink if any pixel
in it is darker than mid-grey. The text block runs from the first ink row of
the page (the running head) to the lowest ink row found on any page of the
book; a page's empty part is what lies below its own last ink row. The last
page of a chapter, before the next chapter's first page (read from the .toc
that cwebmac writes), ends where the chapter ends and is not counted; nor
are the index and the list of section names. Exits 1 if any page is listed."""
import re, subprocess, sys, tempfile, os

def rows(pgm):
    with open(pgm, 'rb') as f:
        data = f.read()
    # P5 header: magic, width, height, maxval, then one byte per pixel
    parts = re.match(rb'P5\s+(\d+)\s+(\d+)\s+(\d+)\s', data)
    w, h = int(parts.group(1)), int(parts.group(2))
    px = data[parts.end():]
    return [min(px[r * w:(r + 1) * w]) < 128 for r in range(h)]

def main():
    pdf, toc = sys.argv[1], sys.argv[2]
    starts = set()
    for line in open(toc):
        m = re.match(r'\\ZZ \{(.*?)\}\{\d+\}\{\d+\}\{(\d+)\}', line)
        if m:
            starts.add(int(m.group(2)))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(['pdftoppm', '-gray', '-r', '50', pdf, os.path.join(d, 'p')], check=True)
        files = sorted(os.listdir(d), key=lambda n: int(re.findall(r'\d+', n)[0]))
        ink = [rows(os.path.join(d, n)) for n in files]
    last = [max((r for r, k in enumerate(p) if k), default=0) for p in ink]
    first = [min((r for r, k in enumerate(p) if k), default=0) for p in ink]
    bottom = max(last)
    # PDF page 1 is the title and contents; the book's page n is PDF page n+1.
    index_start = max(starts)
    empty = []
    for i in range(1, len(ink)):
        page = i  # the printed page number
        if page >= index_start:
            break
        if page + 1 in starts:
            continue  # the last page of a chapter
        frac = (bottom - last[i]) / (bottom - first[i])
        if frac > 1 / 3:
            empty.append((page, frac))
    print('%d pages; %d mid-chapter pages more than a third empty:' % (len(ink), len(empty)))
    for page, frac in empty:
        print('  page %d: %.0f%% empty' % (page, 100 * frac))
    return 1 if empty else 0

sys.exit(main())

#!/usr/bin/env python3
"""Turn the table of a benchmark report (bench/results/*/report.md) into plain
TeX for the book, so that the numbers in the book are the numbers of a run and
are never typed by hand.

    python3 bench/table-to-tex.py REPORT.md [PROFILE.md] > benchtable.tex

The output defines \\benchtable (the table, as a \\vbox) and \\benchdate,
\\benchcommand, \\benchmachine and \\benchversion (from the report's header).
Each cell shows the median, and under it the ratios to direct (d) and to
HAProxy (h) of the same round; the spread (min-max over rounds) is left to the
report, which the book names.

So that the prose can quote a figure without typing it, every cell is also a
macro: \\bm{ROW}{TARGET} is its median, \\bd{ROW}{TARGET} and \\bh{ROW}{TARGET}
its ratios to direct and to HAProxy, with ROW one of the keys of ROWS below
and TARGET a column (direct, iawlb, haproxy, nginx, pen).

PROFILE.md is the output of bench/profile.sh. Its tables become
\\pf{TARGET}{MODE}{COLUMN} (COLUMN: rate, segs, cpu, user, sys, csw, calls, and callsby: the calls
by name),
\\pfbulk{TARGET}{rate or cpu}, and \\profiledate; EARLIER-PROFILE.md, the same
output for an earlier version, becomes \\pfo, \\pfobulk and \\pfodate.

bench/plot-to-mp.py, which writes the data of the book's bar chart, reads the
report with the functions below (read_report, parse_cell, row_key, row_label,
tex) rather than parsing it again.
"""
import re
import sys

TEX_SPECIAL = {'\\': r'\backslash ', '{': r'\{', '}': r'\}', '$': r'\$', '&': r'\&',
               '#': r'\#', '^': r'\^{}', '_': r'\_', '%': r'\%', '~': r'\~{}'}


def tex(s):
    s = ''.join(TEX_SPECIAL.get(c, c) for c in s)
    return s.replace('µ', r'$\mu$').replace('–', '--').replace('—', '---').replace('×', r'$\times$')


def parse_cell(text):
    """A cell of the report -> (median, ratios, marks); '7001 (6409–7549) ×0.44d
    ×0.74h !' -> ('7001', [('0.44', 'd'), ('0.74', 'h')], ['!']). The median is
    '' for an empty cell, and the cell itself if it has no figure (—, failed)."""
    m = re.match(r'^(\S*)(?:\s+\(([^)]*)\))?(.*)$', text.strip())
    median, rest = m.group(1), m.group(3)
    return (median, re.findall(r'×([0-9.]+)([dh])', rest),
            re.findall(r'(!|\[\d+/\d+\]|failed)', rest))


def cell(text):
    """A cell -> its median and marks, over its ratios, as TeX."""
    median, ratios, marks = parse_cell(text)
    if median in ('—', '-', ''):
        return r'---'
    marks = ' '.join(tex(x) for x in marks)
    line2 = r'\enspace '.join(r'$\times$%s\,%s' % (v, k) for v, k in ratios)
    return r'\cell{%s%s}{%s}' % (tex(median), (' ' + marks) if marks else '', line2)


# Row keys, by the start of a row's label in the report.
ROWS = [('connection rate', 'conn'), ('keep-alive', 'ka'), ('latency p50', 'p50'),
        ('latency p99', 'p99'), ('bulk, 1 download', 'bulk1'), ('bulk, 4 parallel', 'bulk4'),
        ('memory: idle RSS', 'rss0'), ('memory: RSS with 1000', 'rss1k'),
        ('memory: KiB per connection (N=1000)', 'kib1k'), ('memory: RSS with', 'rssN'),
        ('memory: KiB per connection', 'kibN')]


def row_key(label):
    """The key in ROWS of a row's label, or None."""
    return next((k for prefix, k in ROWS if label.startswith(prefix)), None)


def row_label(label):
    """A row's label as the book writes it."""
    return label.replace('conns', 'connections')


# The peers by the names the book gives them everywhere else.
NAMES = {'haproxy': 'HAProxy'}


def define(name, value):
    return r'\expandafter\def\csname %s\endcsname{%s}' % (name, value)


def cell_macros(key, target, text):
    median, ratios, _ = parse_cell(text)
    out = [define('bm:%s:%s' % (key, target), tex(median) if median else '---')]
    for v, k in ratios:
        out.append(define('b%s:%s:%s' % (k, key, target), v))
    return out


def read_report(path):
    """A report -> (head, titles, rows): the header's fields (date, command,
    machine, versions), the table's column titles, and its rows under the
    rule, each a list of its cells, the label first."""
    lines = open(path, encoding='utf-8').read().splitlines()
    head = {}
    for ln in lines:
        if ln.startswith('# iawlb benchmark,'):
            head['date'] = ln.split(',', 1)[1].strip()
        m = re.match(r'^- (command|machine|versions): (.*)$', ln)
        if m:
            head[m.group(1)] = m.group(2)
    table = [[c.strip() for c in ln.strip('|').split('|')] for ln in lines if ln.startswith('|')]
    if len(table) < 3:
        sys.exit('%s: no table found' % path)
    return head, table[0], table[2:]


def profile_macros(path, pre='pf'):
    out = []
    cols = ['rate', 'segs', 'cpu', 'user', 'sys', 'csw']
    for ln in open(path, encoding='utf-8').read().splitlines():
        m = re.match(r'^# where the time goes: ([^,]*),', ln)
        if m:
            out.append(r'\def\%sdate{%s}' % ('profile' if pre == 'pf' else pre, tex(m.group(1))))
        c = [x.strip() for x in ln.strip().strip('|').split('|')] if ln.startswith('|') else []
        if len(c) == 8 and c[1] in ('close', 'keepalive'):
            for name, v in zip(cols, c[2:]):
                out.append(define('%s:%s:%s:%s' % (pre, c[0], c[1], name), tex(v)))
        elif len(c) == 3 and c[1] in ('close', 'keepalive'):
            out.append(define('%s:%s:%s:calls' % (pre, c[0], c[1]), tex(c[2].split()[0])))
            detail = re.search(r'\((.*)\)', c[2])
            out.append(define('%s:%s:%s:callsby' % (pre, c[0], c[1]), tex(detail.group(1) if detail else '')))
        elif len(c) == 3 and re.match(r'^[0-9]', c[1]):
            out.append(define('%sbulk:%s:rate' % (pre, c[0]), tex(c[1])))
            out.append(define('%sbulk:%s:cpu' % (pre, c[0]), tex(c[2])))
    return out


def main():
    if len(sys.argv) not in (2, 3, 4):
        sys.exit('usage: table-to-tex.py REPORT.md [PROFILE.md [EARLIER-PROFILE.md]]')
    head, titles, rows = read_report(sys.argv[1])
    out = []
    out.append(r'\def\benchdate{%s}' % tex(head.get('date', '?')))
    command = head.get('command', '?').split('`')
    out.append(r'\def\benchcommand{%s}' % tex(command[1] if len(command) > 1 else command[0]))
    out.append(r'\def\benchmachine{%s}' % tex(head.get('machine', '?')))
    version = re.search(r'iawlb [^;]*', head.get('versions', ''))
    out.append(r'\def\benchversion{%s}' % tex(version.group(0) if version else '?'))
    # A cell's two lines, the median and its ratios, are set flush right, and
    # so is the column, so that the figures of a column line up.
    out.append(r'\def\cell#1#2{\vtop{\halign{\hfil##\cr\strut#1\cr\sevenrm#2\cr}}}')
    out.append(r'\def\benchtable{\vbox{\eightrm\baselineskip=10pt\hbadness=10000\tabskip=0pt'
               r'\halign to\hsize{\vtop{\hsize=1.55in\noindent\raggedright\strut##\strut}'
               r'\tabskip=0pt plus 1fil&&\hfil##\tabskip=0pt plus 1fil\cr')
    out.append('&'.join(r'\bf %s' % tex(NAMES.get(t, t)) for t in titles)
               + r'\cr\noalign{\smallskip\hrule\smallskip}')
    for cells in rows:
        out.append(tex(row_label(cells[0])) + '&' + '&'.join(cell(c) for c in cells[1:])
                   + r'\cr\noalign{\smallskip}')
    out.append(r'\noalign{\hrule}}}}')
    targets = [t.lower() for t in titles[1:]]
    for cells in rows:
        key = row_key(cells[0])
        if key:
            for target, c in zip(targets, cells[1:]):
                out += cell_macros(key, target, c)
    out.append(r'\def\bm#1#2{\csname bm:#1:#2\endcsname}')
    out.append(r'\def\bd#1#2{\csname bd:#1:#2\endcsname}')
    out.append(r'\def\bh#1#2{\csname bh:#1:#2\endcsname}')
    if len(sys.argv) >= 3:
        out += profile_macros(sys.argv[2])
        out.append(r'\def\pf#1#2#3{\csname pf:#1:#2:#3\endcsname}')
        out.append(r'\def\pfbulk#1#2{\csname pfbulk:#1:#2\endcsname}')
    if len(sys.argv) == 4:
        out += profile_macros(sys.argv[3], 'pfo')
        out.append(r'\def\pfo#1#2#3{\csname pfo:#1:#2:#3\endcsname}')
        out.append(r'\def\pfobulk#1#2{\csname pfobulk:#1:#2\endcsname}')
    print('\n'.join(out))


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""Turn the table of a benchmark report (bench/results/*/report.md) into plain
TeX for the book, so that the numbers in the book are the numbers of a run and
are never typed by hand.

    python3 bench/table-to-tex.py REPORT.md > benchtable.tex

The output defines \\benchtable (the table, as a \\vbox) and \\benchdate,
\\benchcommand, \\benchmachine and \\benchversion (from the report's header).
Each cell shows the median, and under it the ratios to direct (d) and to
HAProxy (h) of the same round; the spread (min-max over rounds) is left to the
report, which the book names.
"""
import re
import sys

TEX_SPECIAL = {'\\': r'\backslash ', '{': r'\{', '}': r'\}', '$': r'\$', '&': r'\&',
               '#': r'\#', '^': r'\^{}', '_': r'\_', '%': r'\%', '~': r'\~{}'}


def tex(s):
    s = ''.join(TEX_SPECIAL.get(c, c) for c in s)
    return s.replace('µ', r'$\mu$').replace('–', '--').replace('—', '---').replace('×', r'$\times$')


def cell(text):
    """'7001 (6409–7549) ×0.44d ×0.74h' -> median and ratios, as TeX."""
    text = text.strip()
    if text in ('—', '-', ''):
        return r'\hfil---\hfil'
    m = re.match(r'^(\S+)(?:\s+\(([^)]*)\))?(.*)$', text)
    if not m:
        return tex(text)
    median, rest = m.group(1), m.group(3)
    ratios = re.findall(r'×([0-9.]+)([dh])', rest)
    marks = ' '.join(tex(x) for x in re.findall(r'(!|\[\d+/\d+\]|failed)', rest))
    line2 = r'\enspace '.join(r'$\times$%s\,%s' % (v, k) for v, k in ratios)
    return r'\cell{%s%s}{%s}' % (tex(median), (' ' + marks) if marks else '', line2)


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: table-to-tex.py REPORT.md')
    lines = open(sys.argv[1], encoding='utf-8').read().splitlines()
    head = {}
    for ln in lines:
        if ln.startswith('# iawlb benchmark,'):
            head['date'] = ln.split(',', 1)[1].strip()
        m = re.match(r'^- (command|machine|versions): (.*)$', ln)
        if m:
            head[m.group(1)] = m.group(2)
    rows = [ln for ln in lines if ln.startswith('|')]
    if len(rows) < 3:
        sys.exit('%s: no table found' % sys.argv[1])
    titles = [c.strip() for c in rows[0].strip('|').split('|')]
    out = []
    out.append(r'\def\benchdate{%s}' % tex(head.get('date', '?')))
    command = head.get('command', '?').split('`')
    out.append(r'\def\benchcommand{%s}' % tex(command[1] if len(command) > 1 else command[0]))
    out.append(r'\def\benchmachine{%s}' % tex(head.get('machine', '?')))
    version = re.search(r'iawlb [^;]*', head.get('versions', ''))
    out.append(r'\def\benchversion{%s}' % tex(version.group(0) if version else '?'))
    out.append(r'\def\cell#1#2{\vtop{\hbox{\strut#1}\hbox{\sevenrm#2}}}')
    out.append(r'\def\benchtable{\vbox{\eightrm\baselineskip=10pt\hbadness=10000\tabskip=0pt'
               r'\halign to\hsize{\vtop{\hsize=1.55in\noindent\raggedright\strut##\strut}'
               r'\tabskip=0pt plus 1fil&&\hfil##\hfil\tabskip=0pt plus 1fil\cr')
    out.append('&'.join(r'\bf %s' % tex(t) for t in titles) + r'\cr\noalign{\smallskip\hrule\smallskip}')
    for ln in rows[2:]:
        cells = [c.strip() for c in ln.strip('|').split('|')]
        out.append(tex(cells[0]) + '&' + '&'.join(cell(c) for c in cells[1:])
                   + r'\cr\noalign{\smallskip}')
    out.append(r'\noalign{\hrule}}}}')
    print('\n'.join(out))


if __name__ == '__main__':
    main()

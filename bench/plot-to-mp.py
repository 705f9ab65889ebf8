#!/usr/bin/env python3
"""Turn the throughput rows of a benchmark report (bench/results/*/report.md)
into MetaPost data for the book's Figure 8 (doc/perfplot.mp), so that the
figure, like the table, shows the numbers of a run and none typed by hand.

    python3 bench/plot-to-mp.py REPORT.md > benchdata.mp

The report is read by bench/table-to-tex.py's functions, which this script
imports. The figure shows, for each row of PLOTTED, each proxy's ratio to
direct (the median over rounds of the ratio within a round, as the table's
d ratios). Only the throughputs are drawn: there a ratio is a fraction of
direct, higher is better, and all share one axis from 0 to 1. The latency
rows are multiples of direct (lower is better) and memory has no direct.

benchdata.mp defines, with i a row (1 to benchrows) and j a proxy (1 to
benchproxies, in the order of the report's columns):
  benchproxy[j], benchproxypic[j]      the proxy's name, as a string and typeset;
  benchrowkey[i]                       the row's key in ROWS (conn, ka, ...);
  benchrowname[i], benchrowdetail[i]   the row's label, split in two lines, and
  benchrownamepic[i], benchrowdetailpic[i]  the same typeset;
  benchdirect[i], benchdirectpic[i]   direct's median, with its unit;
  benchratio[i][j]                     the ratio to direct, or -1 if there is none;
  benchratiotext[i][j], benchratiopic[i][j]  the ratio as the report writes it,
                                       with the report's marks (!, [k/n]), or
                                       the cell itself if it has no ratio.
The typeset labels are \\sevenrm (a row's name \\sevenbf), by btex ... etex, which
cannot take a variable; so they are written here, one per label.
"""
import importlib.util
import os
import re
import sys

sys.dont_write_bytecode = True   # no bench/__pycache__ from the import below
_spec = importlib.util.spec_from_file_location(
    'table_to_tex', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'table-to-tex.py'))
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

# The rows drawn, by their keys in report.ROWS, in the figure's order.
PLOTTED = ['conn', 'ka', 'bulk1', 'bulk4']


def mpstring(s):
    """A MetaPost string literal; MetaPost strings cannot hold a double quote."""
    return '"%s"' % s.replace('"', "''")


def btex(body, font=r'\sevenrm'):
    """A typeset label: the text, escaped for TeX, as a btex ... etex picture."""
    text = report.tex(body)
    if 'etex' in text:
        sys.exit('plot-to-mp.py: a label contains "etex", which would end btex early: %s' % body)
    return r'btex %s %s etex' % (font, text)


def split_label(label):
    """A row's label -> (name, detail, unit), e.g.
    'connection rate, req/s (64 conns, Connection: close)'
        -> ('connection rate', '64 connections, Connection: close', 'req/s');
    'bulk, 1 download of 1024 MiB, MB/s' -> ('bulk', '1 download of 1024 MiB', 'MB/s')."""
    label = report.row_label(label)
    unit = re.search(r',\s*(?:aggregate\s+)?(req/s|MB/s)', label)
    rest = (label[:unit.start()] + label[unit.end():]) if unit else label
    m = re.match(r'^([^(]*?)\s*\((.*)\)\s*$', rest)
    if m:
        name, detail = m.group(1), m.group(2)
    else:
        name, _, detail = rest.partition(', ')
    return name.strip(), detail.strip(), unit.group(1) if unit else ''


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: plot-to-mp.py REPORT.md > benchdata.mp')
    head, titles, rows = report.read_report(sys.argv[1])
    targets = [t.lower() for t in titles[1:]]
    if 'direct' not in targets:
        sys.exit('%s: no column direct' % sys.argv[1])
    proxies = [t for t in targets if t != 'direct']
    byname = {}
    for cells in rows:
        key = report.row_key(cells[0])
        if key in PLOTTED and key not in byname:
            byname[key] = cells
    missing = [k for k in PLOTTED if k not in byname]
    if missing:
        sys.exit('%s: no row for %s' % (sys.argv[1], ', '.join(missing)))

    out = ['% benchdata.mp: written by bench/plot-to-mp.py from ' + sys.argv[1] + ';',
           '% the run of ' + head.get('date', '?') + '. Do not edit: make writes it again.',
           'numeric benchrows, benchproxies;',
           'benchrows := %d; benchproxies := %d;' % (len(PLOTTED), len(proxies)),
           'string benchproxy[], benchrowkey[], benchrowname[], benchrowdetail[], benchdirect[];',
           'string benchratiotext[][];',
           'picture benchproxypic[], benchrownamepic[], benchrowdetailpic[], benchdirectpic[];',
           'picture benchratiopic[][];',
           'numeric benchratio[][];']
    for j, target in enumerate(proxies, 1):
        name = report.NAMES.get(target, target)
        out.append('benchproxy[%d] := %s; benchproxypic[%d] := %s;' % (j, mpstring(name), j, btex(name)))
    for i, key in enumerate(PLOTTED, 1):
        cells = dict(zip(targets, byname[key][1:]))
        name, detail, unit = split_label(byname[key][0])
        direct = cells['direct'].split()[0] if cells['direct'].split() else '---'
        direct = 'direct: %s %s' % (direct, unit) if unit else 'direct: %s' % direct
        out.append('benchrowkey[%d] := %s;' % (i, mpstring(key)))
        out.append('benchrowname[%d] := %s; benchrownamepic[%d] := %s;'
                   % (i, mpstring(name), i, btex(name, r'\sevenbf')))
        out.append('benchrowdetail[%d] := %s; benchrowdetailpic[%d] := %s;'
                   % (i, mpstring(detail), i, btex(detail)))
        out.append('benchdirect[%d] := %s; benchdirectpic[%d] := %s;'
                   % (i, mpstring(direct), i, btex(direct)))
        for j, target in enumerate(proxies, 1):
            text = cells.get(target, '').strip()
            _, ratios, marks = report.parse_cell(text)
            d = [v for v, k in ratios if k == 'd']
            if d:
                value, shown = d[0], ' '.join([d[0]] + marks)
            else:
                value, shown = '-1', text or '---'
            out.append('benchratio[%d][%d] := %s; benchratiotext[%d][%d] := %s; benchratiopic[%d][%d] := %s;'
                       % (i, j, value, i, j, mpstring(shown), i, j, btex(shown)))
    print('\n'.join(out))


if __name__ == '__main__':
    main()

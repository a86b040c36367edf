#!/usr/bin/env python3
"""Checks the layering of the Rust core from its own `crate::` paths.

The parts of `src/` stack in floors; a file may use only its own part and the
parts on lower floors, and parts that share a floor never use each other:

    python                    the pyo3 binding
    collector                 one instance's run
    config                    reads an instance into every part's settings
    feeds/                    the SIEM feed and the REST feeds
    huntress/   datadog/      the Huntress client; what goes to Datadog
    json/                     reading JSON without a tree
    base/                     errors, HTTP, cache, redaction, tags

On top of that, no two files import each other through any chain (no cycle of
files), and no two folders do (no cycle of folders). Test modules
(`#[cfg(test)] mod tests`, `test_support.rs`, `fuzz.rs`) are left out: they
may reach any part.

Usage: check_layers.py [SRC_DIR]   (default: src next to this script's folder)
Prints what breaks the rules and exits 1, or prints a summary and exits 0.
"""
import re
import sys
from pathlib import Path

FLOORS = {'base': 0, 'json': 1, 'huntress': 2, 'datadog': 2, 'feeds': 3, 'config': 4, 'collector': 5, 'python': 6, 'lib': 7}
TEST_ONLY = {'test_support.rs', 'fuzz.rs'}
PATH = re.compile(r'\bcrate::((?:[a-z_][a-z0-9_]*::)*)(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)')


def production_text(text):
    """The file without its test module, which by convention closes the file."""
    match = re.search(r'^#\[cfg\(test\)\]\s*\n\s*(pub )?mod tests\b', text, re.M)
    return text[: match.start()] if match else text


def module_file(src, segments):
    """The file that holds the module path `segments`, the longest that exists."""
    for end in range(len(segments), 0, -1):
        base = src.joinpath(*segments[:end])
        for candidate in (base.with_suffix('.rs'), base / 'mod.rs'):
            if candidate.is_file():
                return candidate
    return None


def imports(src, path):
    text = production_text(path.read_text())
    found = set()
    for prefix, last in PATH.findall(text):
        segments = [s for s in prefix.split('::') if s]
        if not last.startswith('{') and last[:1].islower():
            segments.append(last)
        target = module_file(src, segments)
        if target is not None and target != path:
            found.add(target)
    return found


def part(src, path):
    relative = path.relative_to(src)
    return relative.parts[0].removesuffix('.rs')


def folder(src, path):
    relative = path.relative_to(src).parent
    return str(relative) if str(relative) != '.' else None


def cycles(graph):
    """Every strongly connected group of more than one node (Tarjan)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in list(graph):
        if node not in index:
            visit(node)
    return groups


def check(src):
    src = Path(src)
    files = [p for p in sorted(src.rglob('*.rs')) if p.name not in TEST_ONLY]
    graph = {str(p.relative_to(src)): {str(t.relative_to(src)) for t in imports(src, p) if t.name not in TEST_ONLY} for p in files}
    problems = []
    for path, targets in sorted(graph.items()):
        own = part(src, src / path)
        if own not in FLOORS:
            problems.append(f'{path}: part {own!r} has no floor; add it to FLOORS in scripts/check_layers.py')
            continue
        for target in sorted(targets):
            other = part(src, src / target)
            if other != own and FLOORS.get(other, 99) >= FLOORS[own]:
                problems.append(f'{path} uses {target}: {own} (floor {FLOORS[own]}) may not use {other} (floor {FLOORS.get(other)})')
    for group in cycles(graph):
        problems.append('these files import each other in a cycle: ' + ', '.join(group))
    folders = {}
    for path, targets in graph.items():
        mine = folder(src, src / path)
        for target in targets:
            theirs = folder(src, src / target)
            if mine and theirs and mine != theirs:
                folders.setdefault(mine, set()).add(theirs)
    for group in cycles(folders):
        problems.append('these folders import each other in a cycle: ' + ', '.join(group))
    return graph, problems


def main():
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / 'src'
    graph, problems = check(src)
    if problems:
        print('\n'.join(problems))
        print(f'layering broken: {len(problems)} problem(s)')
        return 1
    arrows = sum(len(t) for t in graph.values())
    print(f'layering holds: {len(graph)} files, {arrows} imports, no cycle, every import points down')
    return 0


if __name__ == '__main__':
    sys.exit(main())

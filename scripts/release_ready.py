"""Refuses a release whose published metadata still holds a placeholder: the
contact addresses of manifest.json and pyproject.toml, and the download address
in docs/installation.md. Exit 0 when ready; 1, with each placeholder and its
file, when not. The release workflow runs it before it publishes."""

import json
import re
import sys
from pathlib import Path

# Addresses that cannot reach anyone (RFC 2606 names) and unfilled path parts.
PLACEHOLDER = re.compile(r'@[\w.-]*\.(invalid|example|test)\b|@example\.(com|org|net)\b|<OWNER>|<REPOSITORY>')


def manifest_addresses(root):
    author = json.loads((root / 'manifest.json').read_text())['author']
    return [(f'manifest.json author.{key}', author.get(key, '')) for key in ('support_email', 'sales_email')]


def pyproject_addresses(root):
    text = (root / 'pyproject.toml').read_text()
    return [('pyproject.toml authors', email) for email in re.findall(r'email\s*=\s*"([^"]*)"', text)]


def download_lines(root):
    lines = (root / 'docs' / 'installation.md').read_text().splitlines()
    return [(f'docs/installation.md line {n}', line.strip()) for n, line in enumerate(lines, 1) if 'github.com/' in line]


def placeholders(root):
    found = manifest_addresses(root) + pyproject_addresses(root) + download_lines(root)
    return [(where, value) for where, value in found if PLACEHOLDER.search(value)]


def main(argv):
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    left = placeholders(root)
    for where, value in left:
        print(f'release_ready: {where} is a placeholder: {value}', file=sys.stderr)
    if left:
        print('release_ready: set the maintainers\' contact address and the releases repository before a release', file=sys.stderr)
        return 1
    print('release_ready: no placeholder in the published metadata')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))

"""The README is the tile and links to the depth in docs/: the README keeps the integrations-extras shape and size,
every relative link of the README and of docs/ leads to a file and heading that exist, and the manifest's media
are images of the tree."""

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')
PAGES = ['README.md'] + sorted(os.path.join('docs', name) for name in os.listdir(DOCS) if name.endswith('.md'))
# Written beside this page by the release work; checked once it is in the tree.
ELSEWHERE = {'docs/installation.md'}

INLINE_LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
REFERENCE_LINK = re.compile(r'^\[[^\]]+\]:\s*(\S+)', re.M)
FENCE = re.compile(r'^(```|~~~).*?^\1', re.M | re.S)


def read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r'[`*_]', '', heading.strip().lower())
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    text = FENCE.sub('', read(path))
    return {slug(line.lstrip('#')) for line in text.splitlines() if re.match(r'^#{1,6} ', line)}


def relative_links(path):
    text = FENCE.sub('', read(path))
    for target in INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text):
        if not re.match(r'^[a-z]+:', target):
            yield target


def test_slug_follows_github():
    assert slug('Processing rules, endpoints and compression') == 'processing-rules-endpoints-and-compression'
    assert slug('Metrics (all carry the instance `tags`)') == 'metrics-all-carry-the-instance-tags'
    assert slug('The tile installer (`install -t`)') == 'the-tile-installer-install--t'


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_lead_to_files_and_headings(page):
    checked = 0
    for target in relative_links(page):
        file_part, _, anchor = target.partition('#')
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if resolved in ELSEWHERE and not os.path.exists(os.path.join(ROOT, resolved)):
            continue
        assert os.path.exists(os.path.join(ROOT, resolved)), f'{page}: {target} leads to no file'
        if anchor:
            assert resolved.endswith('.md'), f'{page}: {target} has an anchor on a file that is not markdown'
            assert anchor in anchors(resolved), f'{page}: {target}: no such heading in {resolved}'
        checked += 1
    if page == 'README.md':
        assert checked >= 10, 'the README links to the docs pages'


@pytest.mark.parametrize('page', sorted(ELSEWHERE))
def test_pages_written_elsewhere_are_in_the_tree(page):
    """The links to these pages are checked once the page is in the tree; until then this test says so."""
    if not os.path.exists(os.path.join(ROOT, page)):
        pytest.skip(f'{page} is not in this tree: links to it are not checked')
    assert page in PAGES


def test_readme_is_a_tile():
    text = read('README.md')
    lines = text.splitlines()
    assert len(lines) < 250, f'README.md has {len(lines)} lines: move the depth to docs/'
    h2 = [line[3:] for line in lines if line.startswith('## ')]
    assert h2 == ['Overview', 'Setup', 'Data Collected', 'Troubleshooting', 'Support']
    h3 = [line[4:] for line in lines if line.startswith('### ')]
    assert h3 == ['Installation', 'Configuration', 'Validation', 'Metrics', 'Logs', 'Events', 'Service Checks']
    setup = text.split('## Setup', 1)[1].split('## Data Collected', 1)[0]
    assert 'scripts/demo.sh' in text.split('## Setup', 1)[0], 'the try-without-credentials line is near the top'
    assert 'sudo -u dd-agent -- datadog-agent check huntress' in setup
    assert 'metadata.csv' in text.split('### Metrics', 1)[1].split('###', 1)[0]


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    linked = set()
    for page in PAGES:
        for target in relative_links(page):
            file_part = target.partition('#')[0]
            if file_part:
                linked.add(os.path.normpath(os.path.join(os.path.dirname(page), file_part)))
    orphans = [page for page in PAGES if page != 'README.md' and page not in linked]
    assert not orphans, orphans


def test_manifest_media_are_images_of_the_tree():
    media = json.loads(read('manifest.json'))['tile']['media']
    assert media, 'the tile shows at least one image'
    for item in media:
        assert item['media_type'] == 'image' and item['caption']
        assert item['image_url'].startswith('images/')
        with open(os.path.join(ROOT, item['image_url']), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n', item['image_url']

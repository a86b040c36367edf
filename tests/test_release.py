"""The release metadata tells one story: one version (__about__.py, which Cargo.toml, hence the wheels, must
match, and the CHANGELOG's top section), the platforms of the manifest are those the release workflow builds, and
the workflow passes actionlint."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

from datadog_checks.huntress import __about__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, '.github', 'workflows', 'release.yml')
SECTION = re.compile(r'^## (\d+\.\d+\.\d+) / (\d{4}-\d{2}-\d{2})$')


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding='utf-8') as f:
        return f.read()


def test_cargo_toml_builds_the_version_of_about_py():
    """maturin takes the wheel's version from Cargo.toml (pyproject.toml declares it dynamic)."""
    pyproject = tomllib.loads(read('pyproject.toml'))
    assert 'version' not in pyproject['project'] and pyproject['project']['dynamic'] == ['version']
    assert tomllib.loads(read('Cargo.toml'))['package']['version'] == __about__.__version__


def test_pyproject_points_ddev_at_about_py():
    path = tomllib.loads(read('pyproject.toml'))['tool']['hatch']['version']['path']
    assert os.path.isfile(os.path.join(ROOT, 'python', path))


def test_changelog_sections_are_versions_and_the_top_one_is_about_py():
    headings = [line for line in read('CHANGELOG.md').splitlines() if line.startswith('## ')]
    assert headings
    for heading in headings:
        assert SECTION.match(heading), heading
    assert SECTION.match(headings[0]).group(1) == __about__.__version__
    versions = [tuple(map(int, SECTION.match(h).group(1).split('.'))) for h in headings]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)


def test_manifest_lists_the_platforms_the_release_workflow_builds():
    tags = json.loads(read('manifest.json'))['tile']['classifier_tags']
    assert {t for t in tags if t.startswith('Supported OS::')} == {
        'Supported OS::Linux',
        'Supported OS::Windows',
        'Supported OS::macOS',
    }
    assert 'Submitted Data Type::Events' in tags
    workflow = yaml.safe_load(read('.github', 'workflows', 'release.yml'))
    platforms = {entry['platform'] for entry in workflow['jobs']['platform-wheel']['strategy']['matrix']['include']}
    assert platforms == {
        'manylinux2014_x86_64',
        'manylinux2014_aarch64',
        'win_amd64',
        'macosx_x86_64',
        'macosx_arm64',
    }


def test_release_workflow_publishes_only_complete_tested_assets_with_their_sums():
    """The universal wheel and the extras folder are built from all five platform wheels (--require-all), each is
    run once against the simulator, and only a tag's run publishes, with write access in that one job."""
    workflow = yaml.safe_load(read('.github', 'workflows', 'release.yml'))
    assert workflow['permissions'] == {'contents': 'read'}
    runs = [step.get('run', '') for step in workflow['jobs']['universal-wheel']['steps']]
    order = [
        'scripts/build-universal.sh --require-all',
        'scripts/wheel-cycle.sh dist/datadog_huntress-*-py3-none-any.whl',
        'scripts/export-extras.sh --require-all --build',
        'scripts/wheel-cycle.sh "$(tail -n 1 extras-wheel.txt)"',
        'python scripts/release_assets.py --dist dist --out release --extras dist/extras/huntress',
        'sha256sum -c SHA256SUMS',
    ]
    positions = [next(i for i, run in enumerate(runs) if command in run) for command in order]
    assert positions == sorted(positions)
    publish = workflow['jobs']['publish']
    assert publish['needs'] == 'universal-wheel'
    assert publish['if'] == "startsWith(github.ref, 'refs/tags/v')"
    assert publish['permissions'] == {'contents': 'write'}
    runs = [step.get('run', '') for step in publish['steps']]
    assert runs.index('python3 scripts/release_ready.py') < len(runs) - 1, 'the metadata is checked before publishing'
    script = publish['steps'][-1]['run']
    assert 'sha256sum -c SHA256SUMS' in script and 'gh release create "$TAG"' in script and './*' in script
    for name, job in workflow['jobs'].items():
        if name != 'publish':
            assert 'permissions' not in job, name


def test_release_workflow_passes_actionlint(tmp_path):
    actionlint = shutil.which('actionlint', path=os.path.dirname(sys.executable))
    assert actionlint, 'actionlint is installed by requirements-dev.txt'
    result = subprocess.run([actionlint, WORKFLOW], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter does find faults: an unknown runner label fails.
    broken = tmp_path / 'release.yml'
    broken.write_text(read('.github', 'workflows', 'release.yml').replace('macos-15-intel', 'macos-1-intel'))
    result = subprocess.run([actionlint, str(broken)], capture_output=True, text=True)
    assert result.returncode == 1 and 'macos-1-intel' in result.stdout


def release_ready(root):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'release_ready.py'), str(root)], capture_output=True, text=True)


def release_copy(tmp_path, email, download):
    (tmp_path / 'docs').mkdir(parents=True)
    manifest = json.loads(read('manifest.json'))
    manifest['author'].update(support_email=email, sales_email=email)
    (tmp_path / 'manifest.json').write_text(json.dumps(manifest))
    (tmp_path / 'pyproject.toml').write_text(re.sub(r'email = "[^"]*"', f'email = "{email}"', read('pyproject.toml')))
    installation = read('docs', 'installation.md').replace('https://github.com/<OWNER>/<REPOSITORY>/releases', download)
    (tmp_path / 'docs' / 'installation.md').write_text(installation)
    return tmp_path


def test_release_ready_passes_real_contacts_and_names_each_placeholder(tmp_path):
    ready = release_ready(release_copy(tmp_path / 'ready', 'security-integrations@msp.io', 'https://github.com/msp-tools/datadog-huntress/releases'))
    assert ready.returncode == 0, ready.stderr
    left = release_ready(release_copy(tmp_path / 'left', 'me@example.com', 'https://github.com/<OWNER>/<REPOSITORY>/releases'))
    assert left.returncode == 1
    assert 'author.support_email' in left.stderr and 'pyproject.toml authors' in left.stderr and 'installation.md line' in left.stderr


def test_release_ready_judges_the_tree_as_it_is():
    """The tree's own verdict: not ready exactly while a contact is an .invalid address or the download path unfilled."""
    unfilled = '.invalid"' in read('manifest.json') or '<OWNER>' in read('docs', 'installation.md')
    assert (release_ready(ROOT).returncode == 1) == unfilled

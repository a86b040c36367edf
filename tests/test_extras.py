"""The integrations-extras folder that scripts/export-extras.sh writes. Built as Datadog's extras pipeline builds a
check's folder, `python -m build --wheel` with hatchling (what `ddev release build` runs), inside a tree that ignores
*.so as integrations-extras does, it gives the one py3-none-any wheel the tile installer downloads. That wheel
installs with --no-deps next to datadog-checks-base and runs a cycle against the simulator (scripts/wheel-cycle.sh).
The other platforms' cores are the stand-ins of tests/test_wheel.py."""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

from tests.test_wheel import (  # noqa: F401  wheels is a fixture
    ROOT,
    about_version,
    dist_info_file,
    every_platform,
    members,
    run_assembly,
    wheels,
)

EXPORT = os.path.join(ROOT, 'scripts', 'export-extras.sh')


def extras_tree(tmp_path):
    """A stand-in for an integrations-extras checkout: its .gitignore leaves out *.so, as the real one does."""
    tree = tmp_path / 'integrations-extras'
    tree.mkdir()
    (tree / '.gitignore').write_text('*.so\ndist/\nbuild/\n')
    return tree


def run_export(out, *args):
    return subprocess.run([EXPORT, '--out', str(out), *args], capture_output=True, text=True, cwd=ROOT)


def package_files(files):
    return {name: data for name, data in files.items() if '.dist-info/' not in name}


def test_the_extras_folder_builds_with_hatchling_into_the_tile_wheel_and_runs_a_cycle(wheels, tmp_path):
    tree = extras_tree(tmp_path)
    inputs = every_platform(wheels, tmp_path / 'wheels')
    result = run_export(tree, '--require-all', '--build', *inputs)
    assert result.returncode == 0, result.stderr[-3000:]
    folder, wheel = result.stdout.split()[0], result.stdout.split()[-1]
    assert folder == str(tree / 'huntress')
    for name in ['README.md', 'CHANGELOG.md', 'manifest.json', 'metadata.csv', 'assets/configuration/spec.yaml']:
        assert os.path.isfile(os.path.join(folder, name)), name
    assert os.path.basename(wheel) == f'datadog_huntress-{about_version()}-py3-none-any.whl'

    files = members(wheel)
    wheel_file = dist_info_file(files, 'WHEEL').splitlines()
    assert any(line.startswith('Generator: hatchling ') for line in wheel_file), wheel_file
    assert 'Root-Is-Purelib: true' in wheel_file
    assert [line for line in wheel_file if line.startswith('Tag:')] == ['Tag: py3-none-any']
    metadata = dist_info_file(files, 'METADATA').splitlines()
    assert 'Name: datadog-huntress' in metadata and f'Version: {about_version()}' in metadata
    assert any(line.startswith('Requires-Dist: datadog-checks-base') for line in metadata)
    assert 'datadog_checks/__init__.py' not in files

    # The Python package and the five cores are those of the universal wheel assembled from the same wheels.
    assembled = run_assembly(inputs, tmp_path / 'universal', '--require-all')
    assert assembled.returncode == 0, assembled.stderr
    assert package_files(files) == package_files(members(assembled.stdout.strip()))
    assert len([n for n in files if n.startswith('datadog_checks/huntress/_native/')]) == 5

    cycle = subprocess.run([os.path.join(ROOT, 'scripts', 'wheel-cycle.sh'), wheel], capture_output=True, text=True)
    assert cycle.returncode == 0, cycle.stdout[-2000:] + cycle.stderr[-3000:]
    assert 'cycle ok: 300 events delivered once each (core _core_linux_x86_64.abi3.so)' in cycle.stdout
    assert 'uninstall ok: datadog_checks.base imports, datadog_checks.huntress is gone' in cycle.stdout


def test_without_the_artifacts_setting_hatchling_drops_the_ignored_cores(wheels, tmp_path):
    """Why pyproject.toml lists _native/ as artifacts: otherwise hatchling leaves every core out of the wheel, the
    Linux and macOS ones as the tree's .gitignore says (*.so), the Windows one by its own default exclusion of
    *.py[cdo]. The folder is edited for this test; the wheel is then built as scripts/build-extras-wheel.sh does."""
    tree = extras_tree(tmp_path)
    result = run_export(tree, '--require-all', *every_platform(wheels, tmp_path / 'wheels'))
    assert result.returncode == 0, result.stderr
    pyproject = tree / 'huntress' / 'pyproject.toml'
    text = pyproject.read_text()
    assert 'artifacts = ["/datadog_checks/huntress/_native/*"]\n' in text
    pyproject.write_text(text.replace('artifacts = ["/datadog_checks/huntress/_native/*"]\n', ''))
    build = subprocess.run(
        [os.path.join(ROOT, 'scripts', 'build-extras-wheel.sh'), str(tree / 'huntress'), str(tmp_path / 'out')],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = build.stdout.split()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert 'datadog_checks/huntress/check.py' in names
    assert [n for n in names if n.startswith('datadog_checks/huntress/_native/')] == []


def test_the_folder_pyproject_is_the_project_s_with_hatchling(wheels, tmp_path):
    result = run_export(tmp_path, '--require-all', *every_platform(wheels, tmp_path / 'wheels'))
    assert result.returncode == 0, result.stderr
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        source = tomllib.load(f)
    with open(tmp_path / 'huntress' / 'pyproject.toml', 'rb') as f:
        exported = tomllib.load(f)
    assert exported['build-system'] == {'requires': ['hatchling>=1.27'], 'build-backend': 'hatchling.build'}
    assert exported['project'] == source['project']
    assert 'maturin' not in exported['tool'] and exported['tool']['hatch'] == source['tool']['hatch']
    assert (tmp_path / 'huntress' / exported['tool']['hatch']['version']['path']).is_file()


def test_a_folder_without_every_core_is_labelled_or_refused(wheels, tmp_path):
    result = run_export(tmp_path, wheels['platform'])
    assert result.returncode == 0, result.stderr
    labelled = f'{about_version()}+linux.x64'
    assert 'extras_export: warning: the folder holds the native cores of linux x86_64 only' in result.stderr
    assert f"__version__ = '{labelled}'" in (tmp_path / 'huntress/datadog_checks/huntress/__about__.py').read_text()
    assert os.listdir(tmp_path / 'huntress/datadog_checks/huntress/_native') == ['_core_linux_x86_64.abi3.so']

    refused = run_export(tmp_path / 'refused', '--require-all', wheels['platform'])
    assert refused.returncode == 1
    assert 'not of linux aarch64, windows amd64, macos x86_64, macos arm64' in refused.stderr
    assert not (tmp_path / 'refused').exists()


def test_cores_of_other_sources_are_refused(wheels, tmp_path):
    """A wheel whose Python files differ from the tree's was built from other sources: its core is not exported."""
    edited = tmp_path / os.path.basename(wheels['platform'])
    with zipfile.ZipFile(wheels['platform']) as source, zipfile.ZipFile(edited, 'w') as target:
        for member in source.namelist():
            data = source.read(member)
            target.writestr(member, data + b'\n# edited\n' if member.endswith('/check.py') else data)
    result = run_export(tmp_path / 'out', str(edited))
    assert result.returncode == 1
    assert "its Python files differ from the tree's: ['datadog_checks/huntress/check.py']" in result.stderr


def test_the_release_publishes_the_folder_as_a_tar_with_its_sum(wheels, tmp_path):
    """release_assets.py --extras: the folder as it was exported (not its dist/), under huntress/, in SHA256SUMS."""
    dist = tmp_path / 'dist'
    inputs = every_platform(wheels, dist)
    assert run_assembly(inputs, dist, '--require-all').returncode == 0
    shutil.copy2(wheels['platform'], dist)
    exported = run_export(tmp_path / 'extras', '--require-all', '--build', *inputs)
    assert exported.returncode == 0, exported.stderr[-3000:]
    folder = tmp_path / 'extras' / 'huntress'
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, 'scripts', 'release_assets.py'),
            '--dist',
            str(dist),
            '--out',
            str(tmp_path / 'release'),
            '--extras',
            str(folder),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    name = f'datadog_huntress-{about_version()}-integrations-extras.tar.gz'
    archive_path = tmp_path / 'release' / name
    with tarfile.open(archive_path) as archive:
        archived = sorted(m.name for m in archive.getmembers() if m.isfile())
    on_disk = sorted(
        'huntress/' + os.path.relpath(os.path.join(d, f), folder).replace(os.sep, '/')
        for d, subdirs, files in os.walk(folder)
        if not os.path.relpath(d, folder).split(os.sep)[0] == 'dist'
        for f in files
    )
    assert archived == on_disk
    assert 'huntress/pyproject.toml' in archived
    assert 'huntress/datadog_checks/huntress/_native/_core_linux_x86_64.abi3.so' in archived
    digest = hashlib.sha256(archive_path.read_bytes()).hexdigest()
    assert f'{digest}  {name}' in (tmp_path / 'release' / 'SHA256SUMS').read_text().splitlines()

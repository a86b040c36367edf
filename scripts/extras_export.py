"""Writes the check as an integrations-extras folder, `<out>/huntress/`, that builds with hatchling.

Datadog builds the wheel of an integrations-extras check from the check's folder alone, with `python -m build
--wheel` (what `ddev release build` runs), and the tile installer (`datadog-agent integration install -t`) downloads
only that one `py3-none-any` wheel. Neither step compiles Rust. So the folder carries the native cores prebuilt: the
Python package of this tree, plus each platform wheel's core under `datadog_checks/huntress/_native/` as the
universal wheel holds it, and `_loader.py` picks the running platform's. The folder's pyproject.toml is this
project's with hatchling as the build backend (the `tool.hatch.build` tables of pyproject.toml say what goes into
the wheel) and without maturin's table.

Only a folder holding the cores of all five platforms carries the release version in its `__about__.py`; with fewer,
the version gets the local label of scripts/universal_wheel.py (`0.2.0+linux.x64`) and a warning says so, or, with
`--require-all`, the export fails.

Usage: python scripts/extras_export.py [--out DIR] [--require-all] WHEEL [WHEEL ...]
The wheels are the platform wheels (cpXY-abi3-<platform>) of this tree's version; their Python files must equal the
tree's, so that the cores belong to the sources they are exported with. Prints the folder's path.
"""

import argparse
import os
import re
import shutil
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'python', 'datadog_checks', 'huntress')
NAME = 'huntress'
# The tile's files, as integrations-extras keeps them next to datadog_checks/ in the check's folder.
TILE_FILES = ['README.md', 'CHANGELOG.md', 'manifest.json', 'metadata.csv']
TILE_DIRS = ['assets', 'docs', 'images']
HATCHLING_BUILD_SYSTEM = '[build-system]\nrequires = ["hatchling>=1.27"]\nbuild-backend = "hatchling.build"\n'
# What a development build leaves in the package and no wheel holds.
LOCAL_ONLY = re.compile(r'^(_core\..*\.(so|pyd)|_core\.(so|pyd)|_native|__pycache__|.*\.py[co])$')


# scripts/universal_wheel.py, imported from this folder (first on sys.path already when this file runs as a script).
if os.path.join(ROOT, 'scripts') not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import universal_wheel as UNIVERSAL  # noqa: E402


class ExportError(Exception):
    pass


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def tree_package():
    """The tree's Python package, as {path inside the wheel: bytes}."""
    files = {}
    for directory, subdirs, names in os.walk(PACKAGE):
        subdirs[:] = sorted(d for d in subdirs if not LOCAL_ONLY.match(d))
        for name in sorted(names):
            if not LOCAL_ONLY.match(name):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, os.path.dirname(os.path.dirname(PACKAGE))).replace(os.sep, '/')
                files[relative] = read(path)
    return files


def about_version():
    match = re.search(r"^__version__ = '([^']+)'$", read(os.path.join(PACKAGE, '__about__.py')).decode(), re.M)
    return match.group(1)


def hatchling_pyproject():
    """This project's pyproject.toml with hatchling's [build-system] and without [tool.maturin]."""
    text = read(os.path.join(ROOT, 'pyproject.toml')).decode()
    source = tomllib.loads(text)
    build_system = re.compile(r'^\[build-system\]\n(?:[^\[\n].*\n)*', re.M)
    if len(build_system.findall(text)) != 1:
        raise ExportError('pyproject.toml: expected one [build-system] table')
    text = build_system.sub(HATCHLING_BUILD_SYSTEM, text)
    maturin = text.find('\n[tool.maturin]\n')
    if maturin >= 0:
        if re.search(r'^\[', text[maturin + len('\n[tool.maturin]\n') :], re.M):
            raise ExportError('pyproject.toml: [tool.maturin] must be its last table')
        text = text[: maturin + 1].rstrip('\n') + '\n'
    exported = tomllib.loads(text)
    expected = {key: value for key, value in source.items() if key != 'build-system'}
    expected['tool'] = {key: value for key, value in source['tool'].items() if key != 'maturin'}
    if {key: value for key, value in exported.items() if key != 'build-system'} != expected:
        raise ExportError('pyproject.toml: the export changed more than [build-system] and [tool.maturin]')
    wheel_target = exported['tool'].get('hatch', {}).get('build', {}).get('targets', {}).get('wheel', {})
    if '/datadog_checks/huntress/_native/*' not in wheel_target.get('artifacts', []):
        raise ExportError('pyproject.toml: tool.hatch.build.targets.wheel must list the cores of _native/ as artifacts')
    return text


def wheel_cores(wheel_paths, package):
    """{name in _native/: bytes} from the platform wheels, which must hold the tree's Python files."""
    if not wheel_paths:
        raise ExportError('no platform wheel given')
    cores = {}
    version = about_version()
    for path in sorted(wheel_paths):
        match, members, core = UNIVERSAL.read_wheel(path)
        if match['version'] != version:
            raise ExportError(f"{path}: version {match['version']}, the tree's is {version}")
        dist_info = f"{match['dist']}-{match['version']}.dist-info/"
        pure = UNIVERSAL.pure_members(members, core, dist_info)
        if pure != package:
            differing = sorted(set(pure) ^ set(package) | {n for n in pure if package.get(n) != pure[n]})
            raise ExportError(f"{path}: its Python files differ from the tree's: {differing[:5]}")
        name = UNIVERSAL.core_name(match['platform'])
        if name in cores:
            raise ExportError(f'{path}: a second core for {name}')
        cores[name] = members[core]
    return cores


def export(wheel_paths, out_dir, require_all=False, warn=None):
    """Writes <out_dir>/huntress/ and returns its path."""
    package = tree_package()
    if 'datadog_checks/__init__.py' in package:
        raise ExportError('the package ships datadog_checks/__init__.py, which belongs to datadog-checks-base')
    cores = wheel_cores(wheel_paths, package)
    version = UNIVERSAL.wheel_version(about_version(), cores)
    missing = UNIVERSAL.missing_platforms(cores)
    if missing:
        held = UNIVERSAL.held_platforms(cores)
        message = (
            f'the folder holds the native cores of {UNIVERSAL.LOADER.platform_names(held)} only, not of '
            f'{UNIVERSAL.LOADER.platform_names(missing)}: its version is {version}, not a release'
        )
        if require_all:
            raise ExportError(message)
        (warn or (lambda text: print(f'extras_export: warning: {text}', file=sys.stderr)))(message)
    pyproject = hatchling_pyproject()

    target = os.path.join(out_dir, NAME)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.makedirs(target)
    for name in TILE_FILES:
        shutil.copyfile(os.path.join(ROOT, name), os.path.join(target, name))
    for name in TILE_DIRS:
        shutil.copytree(os.path.join(ROOT, name), os.path.join(target, name))
    with open(os.path.join(target, 'pyproject.toml'), 'w', encoding='utf-8', newline='\n') as f:
        f.write(pyproject)
    files = dict(package)
    about = 'datadog_checks/huntress/__about__.py'
    files[about] = files[about].replace(f"'{about_version()}'".encode(), f"'{version}'".encode(), 1)
    for name, data in cores.items():
        files[UNIVERSAL.NATIVE_DIR + name] = data
    for name, data in files.items():
        path = os.path.join(target, *name.split('/'))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
        if name.endswith(('.so', '.pyd')):
            os.chmod(path, 0o755)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=os.path.join('dist', 'extras'), help='output directory (default: dist/extras)')
    parser.add_argument('--require-all', action='store_true', help="fail unless every platform's core is given")
    parser.add_argument('wheels', nargs='+', help='platform wheels (cpXY-abi3-<platform>)')
    args = parser.parse_args(argv)
    try:
        target = export(args.wheels, args.out, require_all=args.require_all)
    except (ExportError, UNIVERSAL.AssemblyError) as error:
        print(f'extras_export: {error}', file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == '__main__':
    sys.exit(main())

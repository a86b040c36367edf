"""Gathers the assets of a release into one folder, as the release workflow publishes them on the GitHub release:

- the five platform wheels and the universal wheel of this tree's version, from the wheel folder (default dist/);
  the universal wheel must be the complete one (no local version label) and hold exactly the platform wheels' cores;
- each platform wheel's CycloneDX SBOM, the one maturin writes into the wheel's .dist-info/sboms/, as
  `datadog_huntress-<version>-<platform>.cyclonedx.json`;
- with --extras FOLDER, that integrations-extras folder (scripts/export-extras.sh) as
  `datadog_huntress-<version>-integrations-extras.tar.gz`;
- SHA256SUMS: the SHA-256 of every other asset, in the format `sha256sum -c SHA256SUMS` checks.

Usage: python scripts/release_assets.py [--dist DIR] [--out DIR] [--extras FOLDER]
Prints the assets' names. Standard library only.
"""

import argparse
import glob
import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXED_MTIME = 1577836800  # 2020-01-01, so that the same folder gives the same archive


# scripts/universal_wheel.py, imported from this folder (first on sys.path already when this file runs as a script).
if os.path.join(ROOT, 'scripts') not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import universal_wheel as UNIVERSAL  # noqa: E402


class ReleaseError(Exception):
    pass


def about_version():
    about = os.path.join(ROOT, 'python', 'datadog_checks', 'huntress', '__about__.py')
    with open(about, encoding='utf-8') as f:
        for line in f:
            if line.startswith('__version__ = '):
                return line.split("'")[1]
    raise ReleaseError(f'{about}: no __version__')


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def platform_wheels(dist, version):
    """{core name in _native/: (path, core bytes, SBOM bytes or None)}, one wheel per platform of the table."""
    found = {}
    for path in sorted(glob.glob(os.path.join(dist, f'datadog_huntress-{version}-cp*-abi3-*.whl'))):
        match, members, core = UNIVERSAL.read_wheel(path)
        name = UNIVERSAL.core_name(match['platform'])
        if name in found:
            raise ReleaseError(f'{path}: a second wheel for {name} ({found[name][0]})')
        sboms = [n for n in members if '.dist-info/sboms/' in n and n.endswith('.cyclonedx.json')]
        if len(sboms) > 1:
            raise ReleaseError(f'{path}: more than one CycloneDX SBOM: {sboms}')
        found[name] = (path, members[core], members[sboms[0]] if sboms else None)
    missing = UNIVERSAL.missing_platforms(found)
    if missing:
        raise ReleaseError(f'no platform wheel of {version} in {dist} for {UNIVERSAL.LOADER.platform_names(missing)}')
    return found


def check_universal(path, platforms):
    with zipfile.ZipFile(path) as archive:
        native = {
            n[len(UNIVERSAL.NATIVE_DIR) :]: archive.read(n)
            for n in archive.namelist()
            if n.startswith(UNIVERSAL.NATIVE_DIR) and not n.endswith('/')
        }
    expected = {name: core for name, (_, core, _) in platforms.items()}
    if native != expected:
        raise ReleaseError(
            f'{path}: its cores {sorted(native)} are not those of the platform wheels {sorted(expected)}, byte for byte'
        )


def archive_folder(folder, target):
    """A gzipped tar of folder, under its own name, with fixed dates and owners."""
    base = os.path.basename(os.path.normpath(folder))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for directory, subdirs, names in os.walk(folder):
            subdirs[:] = sorted(d for d in subdirs if d not in ('dist', '__pycache__'))
            for name in sorted(names):
                path = os.path.join(directory, name)
                arcname = base + '/' + os.path.relpath(path, folder).replace(os.sep, '/')
                info = tar.gettarinfo(path, arcname)
                info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, '', ''
                info.mode = 0o755 if name.endswith(('.so', '.pyd')) else 0o644
                with open(path, 'rb') as f:
                    tar.addfile(info, f)
    with open(target, 'wb') as out, gzip.GzipFile(filename='', mode='wb', fileobj=out, mtime=FIXED_MTIME) as gz:
        gz.write(buffer.getvalue())


def gather(dist, out, extras=None):
    """Writes the assets into out (emptied first) and returns their names, SHA256SUMS last."""
    version = about_version()
    platforms = platform_wheels(dist, version)
    universal = os.path.join(dist, f'datadog_huntress-{version}-py3-none-any.whl')
    if not os.path.isfile(universal):
        labelled = glob.glob(os.path.join(dist, f'datadog_huntress-{version}+*-py3-none-any.whl'))
        raise ReleaseError(f'no complete universal wheel {universal}' + (f' (only {labelled})' if labelled else ''))
    check_universal(universal, platforms)
    if extras is not None and not os.path.isfile(os.path.join(extras, 'pyproject.toml')):
        raise ReleaseError(f'{extras}: not an exported integrations-extras folder')

    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    names = []
    for name, (path, _, sbom) in sorted(platforms.items()):
        shutil.copyfile(path, os.path.join(out, os.path.basename(path)))
        names.append(os.path.basename(path))
        if sbom is not None:
            platform_name = name[len('_core_') :].split('.', 1)[0]
            sbom_name = f'datadog_huntress-{version}-{platform_name}.cyclonedx.json'
            with open(os.path.join(out, sbom_name), 'wb') as f:
                f.write(sbom)
            names.append(sbom_name)
    shutil.copyfile(universal, os.path.join(out, os.path.basename(universal)))
    names.append(os.path.basename(universal))
    if extras is not None:
        tar_name = f'datadog_huntress-{version}-integrations-extras.tar.gz'
        archive_folder(extras, os.path.join(out, tar_name))
        names.append(tar_name)
    with open(os.path.join(out, 'SHA256SUMS'), 'w', encoding='ascii', newline='\n') as f:
        for name in sorted(names):
            f.write(f'{sha256(os.path.join(out, name))}  {name}\n')
    return sorted(names) + ['SHA256SUMS']


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dist', default='dist', help='the folder holding the wheels (default: dist)')
    parser.add_argument('--out', default='release', help='the folder to write the assets into (default: release)')
    parser.add_argument('--extras', help='an exported integrations-extras folder to publish as a .tar.gz')
    args = parser.parse_args(argv)
    try:
        names = gather(args.dist, args.out, args.extras)
    except (ReleaseError, UNIVERSAL.AssemblyError) as error:
        print(f'release_assets: {error}', file=sys.stderr)
        return 1
    print('\n'.join(names))
    return 0


if __name__ == '__main__':
    sys.exit(main())

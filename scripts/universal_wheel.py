"""Assembles the universal wheel, `datadog_huntress-<version>-py3-none-any.whl`, from platform wheels.

The Agent's tile installer (`datadog-agent integration install -t`) only downloads `py3-none-any` wheels. This
wheel holds the Python package of the platform wheels once, and each platform's native core under its own name in
`datadog_checks/huntress/_native/`; `datadog_checks/huntress/_loader.py` picks the one for the running interpreter.

Only a wheel that holds the core of every platform of the loader's table (`BUNDLED_CORES`) carries the plain
release version. One assembled from fewer platform wheels is labelled with the platforms it holds, as a PEP 440 local
version (`0.2.0+linux.x64`) in its file name, its METADATA and its .dist-info folder, and a warning says so;
`--require-all` makes that an error instead (the release workflow uses it).

Usage: python scripts/universal_wheel.py [--out DIR] [--require-all] WHEEL [WHEEL ...]
The platform wheels must be of one version and hold the same Python files. Standard library only.
"""

import argparse
import base64
import hashlib
import importlib.util
import os
import re
import sys
import zipfile


def _load_loader():
    """The check's own `_loader.py`, whose table of platforms and core names this script follows."""
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'python', 'datadog_checks', 'huntress', '_loader.py'
    )
    spec = importlib.util.spec_from_file_location('huntress_loader', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOADER = _load_loader()
# The CPU names of the local version label: short, and of the characters a normalized PEP 440 label keeps.
LABEL_CPU = {'x86_64': 'x64', 'amd64': 'x64', 'aarch64': 'arm64', 'arm64': 'arm64'}

PACKAGE_DIR = 'datadog_checks/huntress/'
NATIVE_DIR = PACKAGE_DIR + '_native/'
CORE_PATTERN = re.compile(r'^datadog_checks/huntress/_core(\.[^/]*)?\.(so|pyd)$')
WHEEL_NAME = re.compile(
    r'^(?P<dist>[^-]+)-(?P<version>[^-]+)-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$'
)
# The date written for every member, so that the same inputs give the same bytes.
FIXED_DATE = (2020, 1, 1, 0, 0, 0)


class AssemblyError(Exception):
    pass


def core_name(platform_tag):
    """The name of a platform wheel's core in `_native/`, from the wheel's platform tag."""
    tags = platform_tag.split('.')
    if all(t.startswith(('manylinux', 'musllinux')) for t in tags):
        if any(t.startswith('musllinux') for t in tags):
            raise AssemblyError(f'{platform_tag}: musl wheels are not bundled (the Agent links glibc)')
        cpu = tags[0].split('_', 3)[-1] if tags[0].startswith('manylinux_') else tags[0].split('_', 1)[1]
        return f'_core_linux_{cpu}.abi3.so'
    if tags == ['win_amd64']:
        return '_core_windows_amd64.pyd'
    if all(t.startswith('macosx_') for t in tags):
        cpus = {t.split('_', 3)[-1] for t in tags}
        if 'universal2' in cpus:
            return '_core_macos_universal2.abi3.so'
        if len(cpus) == 1:
            return f'_core_macos_{cpus.pop()}.abi3.so'
    raise AssemblyError(f'no bundled name for the platform tag {platform_tag!r}')


def held_platforms(core_names):
    """The (OS, CPU) platforms of the loader's table that the given `_native/` file names serve."""
    return [key for key, names in LOADER.BUNDLED_CORES.items() if any(name in core_names for name in names)]


def missing_platforms(core_names):
    held = held_platforms(core_names)
    return [key for key in LOADER.BUNDLED_CORES if key not in held]


def local_label(platforms):
    """`linux.x64.windows.x64`: the platforms a partial wheel holds, as a PEP 440 local version label."""
    return '.'.join(f'{os_name}.{LABEL_CPU.get(cpu, cpu)}' for os_name, cpu in platforms)


def wheel_version(version, core_names):
    """The release version when every platform's core is there, else the version with a local label."""
    if not missing_platforms(core_names):
        return version
    return f'{version}+{local_label(held_platforms(core_names))}'


def platform_sboms(members, dist_info, bundled_core):
    """A platform wheel's software bills of materials, renamed after its platform: each build has its own."""
    platform_name = bundled_core[len('_core_') :].split('.', 1)[0]
    prefix = dist_info + 'sboms/'
    renamed = {}
    for name, data in members.items():
        if name.startswith(prefix):
            stem, dot, extension = name[len(prefix) :].partition('.')
            renamed[f'{prefix}{stem}.{platform_name}{dot}{extension}'] = data
    return renamed


def record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f'sha256={digest}'


def read_wheel(path):
    match = WHEEL_NAME.match(os.path.basename(path))
    if not match or match['abi'] != 'abi3':
        raise AssemblyError(f'{path}: not an abi3 platform wheel of the form dist-version-cpXY-abi3-platform.whl')
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if not name.endswith('/')}
    cores = [name for name in members if CORE_PATTERN.match(name)]
    if len(cores) != 1:
        raise AssemblyError(f'{path}: expected one native core in {PACKAGE_DIR}, found {cores}')
    return match, members, cores[0]


def pure_members(members, core, dist_info):
    return {name: data for name, data in members.items() if name != core and not name.startswith(dist_info)}


def assemble(wheel_paths, out_dir, require_all=False, warn=None):
    """Writes the universal wheel into out_dir and returns its path. Without the core of every platform, the wheel is
    labelled (see wheel_version) and warn(message) is called, or AssemblyError raised when require_all is set."""
    if not wheel_paths:
        raise AssemblyError('no platform wheel given')
    base = None
    cores = {}
    sboms = {}
    for path in sorted(wheel_paths):
        match, members, core = read_wheel(path)
        dist_info = f"{match['dist']}-{match['version']}.dist-info/"
        pure = pure_members(members, core, dist_info)
        if base is None:
            base = (match, members, dist_info, pure, path)
        elif (match['dist'], match['version']) != (base[0]['dist'], base[0]['version']):
            raise AssemblyError(f"{path}: version {match['version']} differs from {base[4]} ({base[0]['version']})")
        elif pure != base[3]:
            differing = sorted(set(pure) ^ set(base[3]) | {n for n in pure if base[3].get(n) != pure[n]})
            raise AssemblyError(f'{path}: Python files differ from {base[4]}: {differing[:5]}')
        name = core_name(match['platform'])
        if name in cores:
            raise AssemblyError(f'{path}: a second core for {name}')
        cores[name] = members[core]
        sboms.update(platform_sboms(members, dist_info, name))
    match, members, dist_info, pure, _ = base
    if 'datadog_checks/__init__.py' in pure:
        raise AssemblyError('the wheels ship datadog_checks/__init__.py, which belongs to datadog-checks-base')

    version = wheel_version(match['version'], cores)
    missing = missing_platforms(cores)
    if missing:
        message = (
            f"the wheel holds the native cores of {LOADER.platform_names(held_platforms(cores))} only, not of "
            f"{LOADER.platform_names(missing)}: it is versioned {version}, not {match['version']}, and fails to "
            'import on the platforms it lacks'
        )
        if require_all:
            raise AssemblyError(message)
        (warn or (lambda text: print(f'universal_wheel: warning: {text}', file=sys.stderr)))(message)

    new_dist_info = f"{match['dist']}-{version}.dist-info/"
    files = dict(pure)
    for name, data in cores.items():
        files[NATIVE_DIR + name] = data
    for name, data in members.items():
        if name.startswith(dist_info) and name not in (dist_info + 'RECORD', dist_info + 'WHEEL'):
            if not name.startswith(dist_info + 'sboms/'):
                files[name] = data
    files.update(sboms)
    metadata = files[dist_info + 'METADATA'].decode()
    version_line = f"Version: {match['version']}\n"
    if version_line not in metadata:
        raise AssemblyError(f"{base[4]}: METADATA has no line {version_line.strip()!r}")
    files[dist_info + 'METADATA'] = metadata.replace(version_line, f'Version: {version}\n', 1).encode()
    files = {new_dist_info + n[len(dist_info) :] if n.startswith(dist_info) else n: d for n, d in files.items()}
    dist_info = new_dist_info
    files[dist_info + 'WHEEL'] = (
        'Wheel-Version: 1.0\nGenerator: datadog-huntress universal_wheel.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n'
    ).encode()

    record_name = dist_info + 'RECORD'
    record = ''.join(f'{name},{record_hash(data)},{len(data)}\n' for name, data in sorted(files.items()))
    record += f'{record_name},,\n'
    files[record_name] = record.encode()

    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, f"{match['dist']}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(target + '.part', 'w', zipfile.ZIP_DEFLATED) as archive:
        # dist-info last, RECORD at the very end, as wheel tools write them.
        for name in sorted(files, key=lambda n: (n.startswith(dist_info), n == record_name, n)):
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = name.endswith(('.so', '.pyd'))
            info.external_attr = (0o755 if executable else 0o644) << 16
            archive.writestr(info, files[name])
    os.replace(target + '.part', target)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='dist', help='output directory (default: dist)')
    parser.add_argument(
        '--require-all', action='store_true', help="fail unless every platform's core is given (a release wheel)"
    )
    parser.add_argument('wheels', nargs='+', help='platform wheels (cpXY-abi3-<platform>)')
    args = parser.parse_args(argv)
    try:
        target = assemble(args.wheels, args.out, require_all=args.require_all)
    except AssemblyError as error:
        print(f'universal_wheel: {error}', file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == '__main__':
    sys.exit(main())

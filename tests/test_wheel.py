"""The release wheels that scripts/build-wheel.sh leaves in dist/: the manylinux2014 abi3 wheel of this host and the
py3-none-any wheel assembled from it, which holds this one platform's core and says so in its version
(`<version>+linux.x64`). Each is installed as `datadog-agent integration install -w` does (`pip install --no-deps`
into a fresh Python 3.13 holding datadog-checks-base), runs one cycle against the simulator, and uninstalls cleanly
(scripts/wheel-cycle.sh). The other platforms' wheels are stand-ins made from this host's (their cores are text), to
test what the assembly and the release assets do with all five."""

import base64
import csv
import glob
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABOUT = os.path.join(ROOT, 'python', 'datadog_checks', 'huntress', '__about__.py')
STAND_IN_PLATFORMS = {
    'manylinux2014_aarch64.manylinux_2_17_aarch64': ('_core.abi3.so', '_core_linux_aarch64.abi3.so'),
    'win_amd64': ('_core.pyd', '_core_windows_amd64.pyd'),
    'macosx_10_12_x86_64': ('_core.abi3.so', '_core_macos_x86_64.abi3.so'),
    'macosx_11_0_arm64': ('_core.abi3.so', '_core_macos_arm64.abi3.so'),
}


def about_version():
    spec = importlib.util.spec_from_file_location('huntress_about', ABOUT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.__version__


def universal_wheel_module():
    path = os.path.join(ROOT, 'scripts', 'universal_wheel.py')
    spec = importlib.util.spec_from_file_location('universal_wheel', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def wheels():
    version = about_version()
    patterns = {
        'platform': f'datadog_huntress-{version}-cp39-abi3-*manylinux2014_x86_64*.whl',
        'universal': f'datadog_huntress-{version}+linux.x64-py3-none-any.whl',
    }

    def found():
        return {kind: glob.glob(os.path.join(ROOT, 'dist', pattern)) for kind, pattern in patterns.items()}

    if not all(found().values()):
        subprocess.run([os.path.join(ROOT, 'scripts', 'build-wheel.sh')], check=True, cwd=ROOT)
    paths = found()
    assert all(len(p) == 1 for p in paths.values()), paths
    return {kind: p[0] for kind, p in paths.items()}


def members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def native_cores(files):
    """The native cores at the package's top level (not those of the universal wheel's _native/)."""
    return [n for n in files if n.startswith('datadog_checks/huntress/_core') and n.endswith(('.so', '.pyd'))]


def dist_info_file(files, name):
    return files[next(n for n in files if n.endswith('.dist-info/' + name))].decode()


def assert_record_is_exact(files):
    """Every member is listed once in RECORD with its sha256 and size; RECORD lists itself without them."""
    record_name = next(n for n in files if n.endswith('.dist-info/RECORD'))
    rows = list(csv.reader(io.StringIO(files[record_name].decode())))
    assert sorted(row[0] for row in rows) == sorted(files)
    for name, digest, size in rows:
        if name == record_name:
            assert (digest, size) == ('', '')
            continue
        expected = base64.urlsafe_b64encode(hashlib.sha256(files[name]).digest()).rstrip(b'=').decode()
        assert digest == f'sha256={expected}', name
        assert int(size) == len(files[name]), name


def test_platform_wheel_is_abi3_manylinux2014_without_namespace_file(wheels):
    name = os.path.basename(wheels['platform'])
    assert '-cp39-abi3-' in name and 'manylinux2014_x86_64' in name
    files = members(wheels['platform'])
    assert 'datadog_checks/__init__.py' not in files
    assert 'datadog_checks/huntress/data/conf.yaml.example' in files
    assert 'datadog_checks/huntress/config_models/instance.py' in files
    assert 'datadog_checks/huntress/_loader.py' in files
    assert native_cores(files) == ['datadog_checks/huntress/_core.abi3.so']
    # manylinux2014: no glibc symbol newer than 2.17 (the version names sit in the dynamic string table).
    glibc = {tuple(map(int, v.split(b'.'))) for v in re.findall(rb'GLIBC_(2\.[0-9]+)', files[native_cores(files)[0]])}
    assert glibc and max(glibc) <= (2, 17), sorted(glibc)
    metadata = dist_info_file(files, 'METADATA').splitlines()
    assert any(line.startswith('Requires-Dist: datadog-checks-base') for line in metadata)


def test_the_platform_wheel_carries_the_version_of_about_py(wheels):
    version = about_version()
    files = members(wheels['platform'])
    assert os.path.basename(wheels['platform']).startswith(f'datadog_huntress-{version}-cp39-')
    assert f'Version: {version}' in dist_info_file(files, 'METADATA').splitlines()
    assert {n.split('/')[0] for n in files if '.dist-info/' in n} == {f'datadog_huntress-{version}.dist-info'}


def test_a_universal_wheel_of_one_platform_is_labelled_with_it(wheels):
    """Built on one host, the py3-none-any wheel holds one core: its file name, METADATA and .dist-info folder carry
    the local version `<version>+linux.x64`, so that it is not taken for the release, which holds five."""
    labelled = f'{about_version()}+linux.x64'
    files = members(wheels['universal'])
    assert os.path.basename(wheels['universal']) == f'datadog_huntress-{labelled}-py3-none-any.whl'
    assert f'Version: {labelled}' in dist_info_file(files, 'METADATA').splitlines()
    assert {n.split('/')[0] for n in files if '.dist-info/' in n} == {f'datadog_huntress-{labelled}.dist-info'}
    assert sorted(n for n in files if n.startswith('datadog_checks/huntress/_native/')) == [
        'datadog_checks/huntress/_native/_core_linux_x86_64.abi3.so'
    ]


def test_universal_wheel_is_pure_and_bundles_the_linux_core(wheels):
    platform_files = members(wheels['platform'])
    files = members(wheels['universal'])
    wheel_file = dist_info_file(files, 'WHEEL').splitlines()
    assert 'Root-Is-Purelib: true' in wheel_file and 'Tag: py3-none-any' in wheel_file
    assert [line for line in wheel_file if line.startswith('Tag:')] == ['Tag: py3-none-any']
    assert 'datadog_checks/__init__.py' not in files
    assert native_cores(files) == []
    bundled = files['datadog_checks/huntress/_native/_core_linux_x86_64.abi3.so']
    assert bundled == platform_files['datadog_checks/huntress/_core.abi3.so']
    for name, data in platform_files.items():
        if '.dist-info/' not in name and name not in native_cores(platform_files):
            assert files[name] == data, name
    version = about_version()
    assert dist_info_file(files, 'METADATA') == dist_info_file(platform_files, 'METADATA').replace(
        f'\nVersion: {version}\n', f'\nVersion: {version}+linux.x64\n'
    )
    assert_record_is_exact(files)


def stand_in_wheel(linux_wheel, directory, platform_tag, core_name):
    """A copy of the Linux wheel for another platform, whose core is a stand-in file."""
    name = os.path.basename(linux_wheel)
    name = name[: name.index('-abi3-') + len('-abi3-')] + platform_tag + '.whl'
    path = os.path.join(directory, name)
    with zipfile.ZipFile(linux_wheel) as source, zipfile.ZipFile(path, 'w') as target:
        for member in source.namelist():
            data = source.read(member)
            if member == 'datadog_checks/huntress/_core.abi3.so':
                member, data = 'datadog_checks/huntress/' + core_name, f'stand-in core for {platform_tag}'.encode()
            target.writestr(member, data)
    return path


def test_assembly_bundles_every_platform_core_under_its_own_name(wheels, tmp_path):
    inputs = [wheels['platform']]
    expected = {'_core_linux_x86_64.abi3.so': members(wheels['platform'])['datadog_checks/huntress/_core.abi3.so']}
    for platform_tag, (core, bundled_name) in STAND_IN_PLATFORMS.items():
        inputs.append(stand_in_wheel(wheels['platform'], str(tmp_path), platform_tag, core))
        expected[bundled_name] = f'stand-in core for {platform_tag}'.encode()
    out = tmp_path / 'out'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'universal_wheel.py'), '--out', str(out), *inputs],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    assert result.stdout.strip() == str(out / f'datadog_huntress-{about_version()}-py3-none-any.whl')
    files = members(result.stdout.strip())
    assert f'Version: {about_version()}' in dist_info_file(files, 'METADATA').splitlines()
    native = {n.rsplit('/', 1)[1]: d for n, d in files.items() if n.startswith('datadog_checks/huntress/_native/')}
    assert native == expected
    assert native_cores(files) == []
    sboms = {n.rsplit('/', 1)[1] for n in files if '.dist-info/sboms/' in n}
    platforms = [name[len('_core_') :].split('.')[0] for name in expected]
    assert sboms == {f'datadog-huntress.{platform}.cyclonedx.json' for platform in platforms}
    assert_record_is_exact(files)


def test_assembly_refuses_wheels_that_disagree(wheels, tmp_path):
    module = universal_wheel_module()
    other = stand_in_wheel(wheels['platform'], str(tmp_path), 'win_amd64', '_core.pyd')
    renamed = other.replace(f'-{about_version()}-', '-9.9.9-')
    os.rename(other, renamed)
    with pytest.raises(module.AssemblyError, match=rf'version (9\.9\.9|{re.escape(about_version())}) differs from'):
        module.assemble([wheels['platform'], renamed], str(tmp_path / 'out'))

    edited = str(tmp_path / os.path.basename(wheels['platform']).replace('x86_64', 'aarch64'))
    with zipfile.ZipFile(wheels['platform']) as source, zipfile.ZipFile(edited, 'w') as target:
        for member in source.namelist():
            data = source.read(member)
            target.writestr(member, data + b'\n# edited\n' if member.endswith('/check.py') else data)
    with pytest.raises(module.AssemblyError, match='Python files differ'):
        module.assemble([wheels['platform'], edited], str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')


def every_platform(wheels, directory, leave_out=()):
    """This host's platform wheel and stand-ins for the other four (minus the tags in leave_out)."""
    os.makedirs(directory, exist_ok=True)
    inputs = [wheels['platform']]
    for platform_tag, (core, _) in STAND_IN_PLATFORMS.items():
        if platform_tag not in leave_out:
            inputs.append(stand_in_wheel(wheels['platform'], str(directory), platform_tag, core))
    return inputs


def run_assembly(inputs, out, *options):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'universal_wheel.py'), '--out', str(out), *options, *inputs],
        capture_output=True,
        text=True,
    )


def test_assembly_without_every_platform_warns_and_labels_what_it_holds(wheels, tmp_path):
    inputs = every_platform(wheels, tmp_path, leave_out=('macosx_10_12_x86_64', 'macosx_11_0_arm64'))
    result = run_assembly(inputs, tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    labelled = f'{about_version()}+linux.x64.linux.arm64.windows.x64'
    assert result.stdout.strip() == str(tmp_path / 'out' / f'datadog_huntress-{labelled}-py3-none-any.whl')
    assert result.stderr.strip() == (
        'universal_wheel: warning: the wheel holds the native cores of linux x86_64, linux aarch64, windows amd64 '
        f'only, not of macos x86_64, macos arm64: it is versioned {labelled}, not {about_version()}, and fails to '
        'import on the platforms it lacks'
    )
    files = members(result.stdout.strip())
    assert f'Version: {labelled}' in dist_info_file(files, 'METADATA').splitlines()
    assert_record_is_exact(files)


def test_require_all_refuses_a_partial_assembly(wheels, tmp_path):
    result = run_assembly(every_platform(wheels, tmp_path, leave_out=('win_amd64',)), tmp_path / 'out', '--require-all')
    assert result.returncode == 1
    assert 'not of windows amd64' in result.stderr
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')
    complete = run_assembly(every_platform(wheels, tmp_path / 'all'), tmp_path / 'out', '--require-all')
    assert complete.returncode == 0, complete.stderr
    assert os.path.basename(complete.stdout.strip()) == f'datadog_huntress-{about_version()}-py3-none-any.whl'


def test_a_labelled_wheel_on_a_platform_it_lacks_names_what_it_holds(wheels, tmp_path):
    """The universal wheel of this host, unpacked as pip installs it, imported on an aarch64 Linux (faked): the
    ImportError names the platform found, the one core the wheel holds and its labelled version."""
    site = tmp_path / 'site'
    with zipfile.ZipFile(wheels['universal']) as archive:
        archive.extractall(site)
    # The namespace's name comes in as an argument, as in tests/test_loader.py.
    script = (
        'import importlib, os, platform, sys\n'
        'sys.path.insert(0, sys.argv[2])\n'
        'namespace = importlib.import_module(sys.argv[1])\n'
        'namespace.__path__.insert(0, os.path.join(sys.argv[2], sys.argv[1]))\n'
        'platform.machine = lambda: "aarch64"\n'
        'importlib.import_module(sys.argv[1] + ".huntress")\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', script, 'datadog_checks', str(site)], capture_output=True, text=True
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        f'ImportError: datadog-huntress {about_version()}+linux.x64 has no native core for this platform '
        '(linux aarch64, Python '
    ), last_line
    assert 'this installation holds native cores for: linux x86_64. Install the wheel built for linux aarch64' in (
        last_line
    )


def test_release_assets_hold_every_wheel_its_sbom_and_sums_that_check(wheels, tmp_path):
    dist = tmp_path / 'dist'
    inputs = every_platform(wheels, dist)
    shutil.copy2(wheels['platform'], dist)
    assembled = run_assembly(inputs, dist, '--require-all')
    assert assembled.returncode == 0, assembled.stderr
    out = tmp_path / 'release'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'release_assets.py'), '--dist', str(dist), '--out', str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    version = about_version()
    platforms = ['linux_x86_64', 'linux_aarch64', 'windows_amd64', 'macos_x86_64', 'macos_arm64']
    wheel_names = sorted(os.path.basename(p) for p in inputs) + [f'datadog_huntress-{version}-py3-none-any.whl']
    sbom_names = [f'datadog_huntress-{version}-{p}.cyclonedx.json' for p in platforms]
    assert sorted(os.listdir(out)) == sorted(wheel_names + sbom_names + ['SHA256SUMS'])
    assert result.stdout.split() == sorted(wheel_names + sbom_names) + ['SHA256SUMS']
    for name in sbom_names:
        sbom = json.loads((out / name).read_text())
        assert sbom['bomFormat'] == 'CycloneDX' and sbom['components'], name
    sums = (out / 'SHA256SUMS').read_text().splitlines()
    assert [line.split('  ')[1] for line in sums] == sorted(wheel_names + sbom_names)
    for line in sums:
        digest, name = line.split('  ')
        assert digest == hashlib.sha256((out / name).read_bytes()).hexdigest()
    # docs/installation.md lists every asset by name, the version written X.Y.Z.
    with open(os.path.join(ROOT, 'docs', 'installation.md'), encoding='utf-8') as f:
        docs = f.read()
    for name in wheel_names + ['SHA256SUMS', f'datadog_huntress-{version}-<platform>.cyclonedx.json']:
        assert f'`{name.replace(version, "X.Y.Z")}`' in docs, name
    if shutil.which('sha256sum'):
        check = subprocess.run(['sha256sum', '-c', 'SHA256SUMS'], capture_output=True, text=True, cwd=out)
        assert check.returncode == 0, check.stdout + check.stderr
        (out / sbom_names[0]).write_text('{}')
        check = subprocess.run(['sha256sum', '-c', 'SHA256SUMS'], capture_output=True, text=True, cwd=out)
        assert check.returncode == 1 and f'{sbom_names[0]}: FAILED' in check.stdout


def test_release_assets_refuse_a_partial_release(wheels, tmp_path):
    """Without a platform wheel, or with only a labelled universal wheel, nothing is gathered."""
    command = [sys.executable, os.path.join(ROOT, 'scripts', 'release_assets.py'), '--out', str(tmp_path / 'r')]
    dist = tmp_path / 'dist'
    inputs = every_platform(wheels, dist, leave_out=('macosx_11_0_arm64',))
    shutil.copy2(wheels['platform'], dist)
    assert run_assembly(inputs, dist).returncode == 0
    result = subprocess.run([*command, '--dist', str(dist)], capture_output=True, text=True)
    assert result.returncode == 1 and 'for macos arm64' in result.stderr
    stand_in_wheel(wheels['platform'], str(dist), 'macosx_11_0_arm64', '_core.abi3.so')
    result = subprocess.run([*command, '--dist', str(dist)], capture_output=True, text=True)
    assert result.returncode == 1 and 'no complete universal wheel' in result.stderr and '+linux.x64' in result.stderr
    assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('kind, core', [('platform', '_core.abi3.so'), ('universal', '_core_linux_x86_64.abi3.so')])
def test_installed_wheel_runs_a_cycle_and_uninstalls_cleanly(wheels, kind, core):
    result = subprocess.run(
        [os.path.join(ROOT, 'scripts', 'wheel-cycle.sh'), wheels[kind]], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f'cycle ok: 300 events delivered once each (core {core})' in result.stdout
    assert 'uninstall ok: datadog_checks.base imports, datadog_checks.huntress is gone' in result.stdout


def test_pip_wheel_of_a_checkout_builds_a_wheel_that_installs_and_runs(tmp_path):
    """`pip wheel .` on the tracked files alone (maturin from the package registry, in pip's isolated build
    environment) builds a wheel that installs and runs like the release wheels. The compiled dependencies of the
    development build are reused through CARGO_TARGET_DIR, to keep the test short."""
    checkout = tmp_path / 'checkout'
    tracked = subprocess.run(['git', 'ls-files', '-z'], capture_output=True, check=True, cwd=ROOT).stdout.split(b'\0')
    for name in filter(None, (n.decode() for n in tracked)):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(checkout / name), exist_ok=True)
            shutil.copy2(source, checkout / name)
    out = tmp_path / 'wheels'
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, 'target'))
    env.pop('VIRTUAL_ENV', None)
    build = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w', str(out), str(checkout)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = glob.glob(str(out / f'datadog_huntress-{about_version()}-cp39-abi3-*.whl'))
    cycle = subprocess.run([os.path.join(ROOT, 'scripts', 'wheel-cycle.sh'), wheel], capture_output=True, text=True)
    assert cycle.returncode == 0, cycle.stdout[-2000:] + cycle.stderr[-3000:]
    assert 'cycle ok: 300 events delivered once each (core _core.abi3.so)' in cycle.stdout

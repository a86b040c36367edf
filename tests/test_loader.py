"""The loader of the native core picks the core matching the interpreter's OS and CPU (platforms faked here), and
when there is none, names the platform found and the cores the installation does hold."""

import platform
import sys

import pytest

from datadog_checks.huntress import _loader

CORE_FILES = [
    '_core_linux_x86_64.abi3.so',
    '_core_linux_aarch64.abi3.so',
    '_core_windows_amd64.pyd',
    '_core_macos_x86_64.abi3.so',
    '_core_macos_arm64.abi3.so',
]
ALL_PLATFORMS = 'linux x86_64, linux aarch64, windows amd64, macos x86_64, macos arm64'


@pytest.fixture
def native_dir(tmp_path):
    for name in CORE_FILES:
        (tmp_path / name).write_bytes(b'stand-in for ' + name.encode())
    return tmp_path


def fake_platform(monkeypatch, sys_platform, machine, maxsize=2**63 - 1):
    monkeypatch.setattr(sys, 'platform', sys_platform)
    monkeypatch.setattr(platform, 'machine', lambda: machine)
    monkeypatch.setattr(sys, 'maxsize', maxsize)


@pytest.mark.parametrize(
    'sys_platform, machine, expected',
    [
        ('linux', 'x86_64', '_core_linux_x86_64.abi3.so'),
        ('linux', 'aarch64', '_core_linux_aarch64.abi3.so'),
        ('linux', 'arm64', '_core_linux_aarch64.abi3.so'),
        ('win32', 'AMD64', '_core_windows_amd64.pyd'),
        ('darwin', 'x86_64', '_core_macos_x86_64.abi3.so'),
        ('darwin', 'arm64', '_core_macos_arm64.abi3.so'),
    ],
)
def test_picks_the_core_of_the_running_platform(monkeypatch, native_dir, sys_platform, machine, expected):
    fake_platform(monkeypatch, sys_platform, machine)
    path = _loader.bundled_core_path(str(native_dir))
    assert path == str(native_dir / expected)


@pytest.mark.parametrize('machine', ['x86_64', 'arm64'])
def test_a_macos_universal2_core_serves_both_cpus(monkeypatch, tmp_path, machine):
    (tmp_path / '_core_macos_universal2.abi3.so').write_bytes(b'stand-in')
    fake_platform(monkeypatch, 'darwin', machine)
    assert _loader.bundled_core_path(str(tmp_path)) == str(tmp_path / '_core_macos_universal2.abi3.so')


@pytest.mark.parametrize(
    'sys_platform, machine, maxsize, found',
    [
        ('linux', 'riscv64', 2**63 - 1, 'linux riscv64'),
        ('linux', 'armv7l', 2**31 - 1, 'linux 32-bit armv7l'),
        ('linux', 'x86_64', 2**31 - 1, 'linux 32-bit x86_64'),
        ('win32', 'ARM64', 2**63 - 1, 'windows aarch64'),
        ('freebsd14', 'amd64', 2**63 - 1, 'freebsd14 x86_64'),
        ('aix', 'powerpc', 2**63 - 1, 'aix powerpc'),
    ],
)
def test_a_platform_no_wheel_is_built_for_is_named_with_the_cores_held(
    monkeypatch, native_dir, sys_platform, machine, maxsize, found
):
    fake_platform(monkeypatch, sys_platform, machine, maxsize)
    with pytest.raises(ImportError) as error:
        _loader.bundled_core_path(str(native_dir))
    message = str(error.value)
    assert f'no native core for this platform ({found}, Python ' in message
    assert f'this installation holds native cores for: {ALL_PLATFORMS}.' in message
    assert f'No release wheel is built for {found} (they are built for {ALL_PLATFORMS})' in message
    assert error.value.name == 'datadog_checks.huntress._core'


@pytest.mark.parametrize(
    'held, sys_platform, machine, found, listed',
    [
        (['_core_linux_x86_64.abi3.so'], 'linux', 'aarch64', 'linux aarch64', 'linux x86_64'),
        (['_core_linux_x86_64.abi3.so'], 'win32', 'AMD64', 'windows amd64', 'linux x86_64'),
        (
            ['_core_windows_amd64.pyd', '_core_linux_aarch64.abi3.so'],
            'darwin',
            'arm64',
            'macos arm64',
            'linux aarch64, windows amd64',
        ),
        (['_core_macos_universal2.abi3.so'], 'linux', 'x86_64', 'linux x86_64', 'macos x86_64, macos arm64'),
    ],
)
def test_a_partial_installation_lists_the_cores_it_holds_not_the_table(
    monkeypatch, tmp_path, held, sys_platform, machine, found, listed
):
    """The universal wheel built from fewer than five platform wheels: the message tells what it holds."""
    for name in held:
        (tmp_path / name).write_bytes(b'stand-in')
    (tmp_path / '_core_freebsd_amd64.so').write_bytes(b'not a core the loader knows')
    fake_platform(monkeypatch, sys_platform, machine)
    with pytest.raises(ImportError) as error:
        _loader.bundled_core_path(str(tmp_path))
    message = str(error.value)
    assert f'no native core for this platform ({found}, Python ' in message
    assert f'this installation holds native cores for: {listed}. Install the wheel built for {found}, ' in message
    assert 'freebsd' not in message


def test_an_installation_without_native_dir_says_it_holds_no_core(monkeypatch, tmp_path):
    fake_platform(monkeypatch, 'linux', 'aarch64')
    with pytest.raises(ImportError, match=r'\(linux aarch64, Python [^)]*\); this installation holds no native core\. Install'):
        _loader.bundled_core_path(str(tmp_path / 'absent'))


def test_the_message_names_the_installed_version(monkeypatch, tmp_path):
    """A labelled wheel (`0.2.0+linux.x64`) shows its label: the version of the installed distribution is named."""
    monkeypatch.setattr(_loader, 'installed_version', lambda: '0.2.0+linux.x64')
    fake_platform(monkeypatch, 'linux', 'aarch64')
    with pytest.raises(ImportError, match=r'^datadog-huntress 0\.2\.0\+linux\.x64 has no native core'):
        _loader.bundled_core_path(str(tmp_path))


def test_the_core_next_to_the_package_is_used_as_is():
    """A platform wheel or a development build: `_core` sits next to the loader and is imported directly."""
    core = _loader.load_core()
    assert core.__name__ == 'datadog_checks.huntress._core'
    assert '_native' not in core.__file__
    assert sys.modules['datadog_checks.huntress._core'] is core


def test_importing_the_check_without_a_core_raises_import_error(tmp_path):
    """The universal wheel's layout, with no core for this platform: importing the check fails with the loader's
    message. Runs in a child interpreter over a copy of the package without its core."""
    import os
    import shutil
    import subprocess

    import datadog_checks.huntress as package

    source = os.path.dirname(package.__file__)
    target = tmp_path / 'site' / 'datadog_checks' / 'huntress'
    shutil.copytree(source, target, ignore=shutil.ignore_patterns('_core*.so', '_core*.pyd', '__pycache__'))
    (target / '_native').mkdir(exist_ok=True)
    (target / '_native' / '_core_windows_amd64.pyd').write_bytes(b'stand-in')
    # The copy goes first on the namespace package's path, so that its package is the one imported.
    script = (
        'import importlib, sys\n'
        'namespace = importlib.import_module(sys.argv[1])\n'
        'namespace.__path__.insert(0, sys.argv[2])\n'
        'importlib.import_module(sys.argv[1] + ".huntress")\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', script, 'datadog_checks', str(tmp_path / 'site' / 'datadog_checks')],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith('ImportError: datadog-huntress '), last_line
    found = ' '.join(_loader.running_platform())
    assert f' has no native core for this platform ({found}, Python ' in last_line, last_line
    assert f'this installation holds native cores for: windows amd64. Install the wheel built for {found}, ' in last_line


def test_the_message_shown_in_docs_installation_is_the_loader_s():
    """docs/installation.md quotes the error of a labelled wheel on a platform it lacks; it must read as the loader
    writes it (the Python version aside)."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, 'docs', 'installation.md'), encoding='utf-8') as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('    ImportError: '))
    block = []
    for line in lines[start:]:
        if not line.startswith('    '):
            break
        block.append(line.strip())
    message = _loader.missing_core_message(('linux', 'aarch64'), [('linux', 'x86_64')], '0.2.0+linux.x64')

    def any_python(text):
        return re.sub(r'Python \d+\.\d+\.\d+', 'Python X.Y.Z', text)

    assert any_python(' '.join(block)) == any_python('ImportError: ' + message)

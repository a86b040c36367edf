"""The loader of the native core picks the core matching the interpreter's OS and CPU (platforms faked here), and
names the platform found and the platforms supported when there is none."""

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
SUPPORTED = 'linux x86_64, linux aarch64, windows amd64, macos x86_64, macos arm64'


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
def test_no_core_for_the_platform_names_it_and_the_supported_ones(
    monkeypatch, native_dir, sys_platform, machine, maxsize, found
):
    fake_platform(monkeypatch, sys_platform, machine, maxsize)
    with pytest.raises(ImportError) as error:
        _loader.bundled_core_path(str(native_dir))
    message = str(error.value)
    assert f'no native core for this platform ({found}, Python ' in message
    assert f'it supports: {SUPPORTED}.' in message
    assert error.value.name == 'datadog_checks.huntress._core'


def test_a_supported_platform_whose_core_is_not_bundled_fails_the_same_way(monkeypatch, tmp_path):
    (tmp_path / '_core_linux_x86_64.abi3.so').write_bytes(b'stand-in')
    fake_platform(monkeypatch, 'win32', 'AMD64')
    with pytest.raises(ImportError, match=r'\(windows amd64, Python .*it supports: linux x86_64'):
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
    assert last_line.startswith('ImportError: datadog-huntress has no native core for this platform'), last_line
    assert SUPPORTED in last_line

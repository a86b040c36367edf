"""Finds the Rust core (`datadog_checks.huntress._core`) for the running interpreter.

A platform wheel (or a development build) holds one core, `_core.abi3.so` or `_core.pyd`, next to this file, and
it is imported as is. The universal wheel (`py3-none-any`, for the Agent's tile installer) holds one core per
platform in `_native/`, each under its own name; the one matching the interpreter's OS and CPU is loaded and
registered as `datadog_checks.huntress._core`, the name its init function (`PyInit__core`) was built for. When
there is none, the ImportError names the platform found and the cores this installation does hold.
"""

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import platform
import sys

CORE_MODULE = __package__ + '._core'
NATIVE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_native')

# (OS, CPU) of the interpreter -> the file names its core may have in `_native/`, in order of preference.
# A macOS universal2 core serves both CPUs.
BUNDLED_CORES = {
    ('linux', 'x86_64'): ['_core_linux_x86_64.abi3.so'],
    ('linux', 'aarch64'): ['_core_linux_aarch64.abi3.so'],
    ('windows', 'amd64'): ['_core_windows_amd64.pyd'],
    ('macos', 'x86_64'): ['_core_macos_x86_64.abi3.so', '_core_macos_universal2.abi3.so'],
    ('macos', 'arm64'): ['_core_macos_arm64.abi3.so', '_core_macos_universal2.abi3.so'],
}

_CPU_ALIASES = {'amd64': 'x86_64', 'x64': 'x86_64', 'arm64': 'aarch64'}
_OS_CPU_NAMES = {'windows': {'x86_64': 'amd64'}, 'macos': {'aarch64': 'arm64'}}


def running_platform():
    """The (OS, CPU) pair of the running interpreter, in the names of BUNDLED_CORES."""
    if sys.platform.startswith('linux'):
        os_name = 'linux'
    elif sys.platform == 'win32':
        os_name = 'windows'
    elif sys.platform == 'darwin':
        os_name = 'macos'
    else:
        os_name = sys.platform
    machine = platform.machine().lower()
    cpu = _CPU_ALIASES.get(machine, machine)
    if sys.maxsize <= 2**32:
        # A 32-bit interpreter on a 64-bit OS reports the OS's CPU; no 32-bit core exists.
        cpu = '32-bit ' + cpu
    return os_name, _OS_CPU_NAMES.get(os_name, {}).get(cpu, cpu)


def platform_names(platforms):
    return ', '.join(f'{os_name} {cpu}' for os_name, cpu in platforms)


def held_platforms(native_dir=NATIVE_DIR):
    """The platforms whose core is in native_dir, in the order of BUNDLED_CORES: what this installation can run on."""
    try:
        present = set(os.listdir(native_dir))
    except OSError:
        present = set()
    return [key for key, names in BUNDLED_CORES.items() if any(name in present for name in names)]


def installed_version():
    """The version of the installed distribution (a local label such as `+linux.x64` names a partial build)."""
    try:
        return importlib.metadata.version('datadog-huntress')
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_core_message(found, held, version):
    os_name, cpu = found
    name = f'datadog-huntress {version}' if version else 'datadog-huntress'
    if held:
        holds = f'this installation holds native cores for: {platform_names(held)}'
    else:
        holds = 'this installation holds no native core'
    if found in BUNDLED_CORES:
        advice = (
            f'Install the wheel built for {os_name} {cpu}, or the release wheel that holds the cores of every '
            'platform (README, Installation).'
        )
    else:
        advice = (
            f'No release wheel is built for {os_name} {cpu} (they are built for {platform_names(BUNDLED_CORES)}); '
            'building the wheel from source on this host may work (README, Installation).'
        )
    return (
        f'{name} has no native core for this platform ({os_name} {cpu}, Python {platform.python_version()}); '
        f'{holds}. {advice}'
    )


def bundled_core_path(native_dir=NATIVE_DIR):
    """The path of the bundled core for this interpreter; ImportError when there is none."""
    found = running_platform()
    for name in BUNDLED_CORES.get(found, []):
        path = os.path.join(native_dir, name)
        if os.path.isfile(path):
            return path
    raise ImportError(missing_core_message(found, held_platforms(native_dir), installed_version()), name=CORE_MODULE)


def load_bundled_core(native_dir=NATIVE_DIR):
    path = bundled_core_path(native_dir)
    loader = importlib.machinery.ExtensionFileLoader(CORE_MODULE, path)
    spec = importlib.util.spec_from_file_location(CORE_MODULE, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[CORE_MODULE] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[CORE_MODULE]
        raise
    setattr(sys.modules[__package__], '_core', module)
    return module


def load_core():
    """The core next to this file when there is one (platform wheel, development build), else the bundled one."""
    try:
        return importlib.import_module(CORE_MODULE)
    except ModuleNotFoundError as error:
        if error.name != CORE_MODULE:
            raise
    return load_bundled_core()

"""The oldest Rust the project declares (`rust-version` in Cargo.toml) is one that builds it: no crate resolved in
Cargo.lock asks for a newer Rust, and the documentation names the same version. A `cargo update` that pulls in a
crate needing a newer compiler fails here, before a user with the declared Rust (Debian 13's rustc 1.85, say)
finds out."""

import glob
import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def version(text):
    """'1.85' and '1.85.0' are the same Rust."""
    parts = [int(part) for part in text.split('.')]
    assert 2 <= len(parts) <= 3, f'not a Rust version: {text!r}'
    return tuple(parts + [0] * (3 - len(parts)))


def declared():
    with open(os.path.join(ROOT, 'Cargo.toml'), 'rb') as f:
        return tomllib.load(f)['package']['rust-version']


def cargo():
    found = shutil.which('cargo') or shutil.which(os.path.expanduser('~/.cargo/bin/cargo'))
    assert found, 'cargo is needed to read the resolved dependency graph'
    return found


def locked_packages():
    # --locked: the lock file as committed, never a fresh resolution; all targets (Windows and macOS crates too).
    result = subprocess.run(
        [cargo(), 'metadata', '--format-version', '1', '--locked'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)['packages']


def test_version_parsing_treats_missing_patch_as_zero():
    assert version('1.85') == version('1.85.0') < version('1.85.1') < version('1.88')
    with pytest.raises(AssertionError):
        version('1')


def test_no_locked_crate_needs_a_newer_rust_than_declared():
    msrv = version(declared())
    packages = locked_packages()
    assert any(p['name'] == 'datadog-huntress' for p in packages)
    too_new = sorted(
        f"{p['name']} {p['version']} needs Rust {p['rust_version']}"
        for p in packages
        if p.get('rust_version') and version(p['rust_version']) > msrv
    )
    assert not too_new, (
        f'Cargo.toml declares rust-version {declared()}, but Cargo.lock resolves: ' + '; '.join(too_new)
        + '. Resolve with the MSRV-aware resolver (.cargo/config.toml) or raise rust-version and the docs.'
    )


def test_docs_name_the_declared_rust():
    texts = {path: open(path, encoding='utf-8').read() for path in
             [os.path.join(ROOT, 'README.md'), *glob.glob(os.path.join(ROOT, 'docs', '*.md')),
              *glob.glob(os.path.join(ROOT, 'scripts', '*.sh'))]}
    mentions = [
        (os.path.relpath(path, ROOT), found)
        for path, text in texts.items()
        for found in (a or b for a, b in re.findall(r'Rust (?:(1\.\d+(?:\.\d+)?) or newer|≥ ?(1\.\d+(?:\.\d+)?))', text))
    ]
    assert mentions, 'the README names no Rust version'
    wrong = [(path, found) for path, found in mentions if version(found) != version(declared())]
    assert not wrong, f'Cargo.toml declares rust-version {declared()}; these name another: {wrong}'

"""The layering of the Rust core (see docs/development.md), checked on the tree
as committed, and shown to catch each kind of break on a copy that has one."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'scripts' / 'check_layers.py'


def run(src):
    return subprocess.run([sys.executable, str(SCRIPT), str(src)], capture_output=True, text=True, timeout=60)


def test_the_core_stacks_in_floors():
    result = run(ROOT / 'src')
    assert result.returncode == 0, result.stdout
    assert 'every import points down' in result.stdout


@pytest.mark.parametrize(
    ('file', 'line', 'expected'),
    [
        ('base/tags.rs', 'use crate::config::Config;', 'base (floor 0) may not use config (floor 4)'),
        ('datadog/intake.rs', 'use crate::huntress::client::Feature;', 'datadog (floor 2) may not use huntress (floor 2)'),
        ('feeds/paging.rs', 'use crate::feeds::signals::SERVICE;', 'files import each other in a cycle: '),
        ('feeds/orgs.rs', 'use crate::feeds::siem::SERVICE_CHECK;', 'these folders import each other in a cycle: feeds, feeds/siem'),
        ('json/row.rs', 'fn f() { crate::datadog::report::Report::default(); }', 'json (floor 1) may not use datadog (floor 2)'),
    ],
)
def test_a_break_is_named(tmp_path, file, line, expected):
    copy = tmp_path / 'src'
    shutil.copytree(ROOT / 'src', copy)
    target = copy / file
    lines = target.read_text().splitlines(keepends=True)
    target.write_text(lines[0] + line + '\n' + ''.join(lines[1:]))
    result = run(copy)
    assert result.returncode == 1
    assert expected in result.stdout, result.stdout


def test_imports_inside_the_test_module_do_not_count(tmp_path):
    copy = tmp_path / 'src'
    shutil.copytree(ROOT / 'src', copy)
    target = copy / 'base' / 'tags.rs'
    assert '#[cfg(test)]\nmod tests' in target.read_text()
    target.write_text(target.read_text().replace('#[cfg(test)]\nmod tests {', '#[cfg(test)]\nmod tests {\n    use crate::config::Config;', 1))
    assert run(copy).returncode == 0

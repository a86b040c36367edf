"""Paths and loaders shared by the asset tests."""

import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
ASSETS = PROJECT / 'assets'
RULES_DIR = ASSETS / 'security' / 'detection_rules'
SAMPLES_DIR = RULES_DIR / 'samples'


def load_json(path: Path):
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def load_yaml(path: Path):
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f)


def rule_paths():
    return sorted(RULES_DIR.glob('*.json'))

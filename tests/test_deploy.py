"""The deployment files of deploy/ hold together. They cannot be run here (no Docker engine, no cluster), so this
checks what can be checked without one: every file parses; the Dockerfile installs, from dist/, the universal
wheel of the current version with the Agent's command, and its two targets hold no instance and one instance; every
instance the files hold uses only options of the spec, keeps the Huntress keys in ENC[] handles, and is accepted
by the check (its configuration models and the core); the Kubernetes files make it a cluster check whose secret
handles name the Secret that the Agents are allowed to read."""

import os
import re
import shlex
import tomllib

import pytest
import yaml

from datadog_checks.huntress import HuntressCheck, __about__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, 'deploy')
CONF = 'deploy/conf.d/huntress.d/conf.yaml'
HELM = 'deploy/helm/values.yaml'
OPERATOR = 'deploy/operator/datadog-agent.yaml'
K8S_HANDLE = re.compile(r'^ENC\[k8s_secret@(?P<namespace>[^/\]]+)/(?P<secret>[^/\]]+)/(?P<key>[^/\]]+)\]$')
AGENT_API_KEY = '0123456789abcdef0123456789abcdef'


def read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def dockerfile_instructions():
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ''
    for line in read('deploy/Dockerfile').splitlines():
        if not current and (not line.strip() or line.lstrip().startswith('#')):
            continue
        if line.endswith('\\'):
            current += line[:-1] + ' '
            continue
        logical.append(current + line)
        current = ''
    assert not current, 'the Dockerfile ends inside a continued line'
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def stages():
    """{stage name: [(INSTRUCTION, arguments), ...]} in the order of the Dockerfile."""
    result = {}
    current = None
    for instruction, arguments in dockerfile_instructions():
        if instruction == 'FROM':
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == 'AS', arguments
            current = words[2]
            result[current] = [(instruction, words[0])]
        else:
            assert current, f'{instruction} before FROM'
            result[current].append((instruction, arguments))
    return result


def universal_wheel_name():
    """The file name of the universal wheel of this version (the wheel name rules applied to pyproject.toml)."""
    project = tomllib.loads(read('pyproject.toml'))['project']['name']
    return f"{re.sub(r'[-_.]+', '_', project)}-{__about__.__version__}-py3-none-any.whl"


def documented_option_names():
    """The instance options of conf.yaml.example (generated from spec.yaml, with the Agent's common ones)."""
    example = read('python/datadog_checks/huntress/data/conf.yaml.example').split('\ninstances:', 1)[1]
    return set(re.findall(r'^    ## @param (\w+) ', example, re.M))


def check_config(text, where):
    config = yaml.safe_load(text)
    assert set(config) <= {'cluster_check', 'init_config', 'instances'}, where
    assert config['instances'], where
    return config


def kubernetes_check_configs():
    helm = yaml.safe_load(read(HELM))
    operator = yaml.safe_load(read(OPERATOR))
    return {
        HELM: check_config(helm['clusterAgent']['confd']['huntress.yaml'], HELM),
        OPERATOR: check_config(
            operator['spec']['override']['clusterAgent']['extraConfd']['configDataMap']['huntress.yaml'], OPERATOR
        ),
    }


def all_instances():
    configs = {CONF: check_config(read(CONF), CONF), **kubernetes_check_configs()}
    return [(where, instance) for where, config in configs.items() for instance in config['instances']]


def test_dockerfile_installs_the_universal_wheel_from_dist_on_the_agent_7_image():
    built = stages()
    assert list(built) == ['check', 'configured'], 'the default target is the last stage, the one with an instance'
    check = built['check']
    assert check[0] == ('FROM', 'gcr.io/datadoghq/agent:7')
    args = dict(a.split('=', 1) for i, a in check if i == 'ARG')
    assert args['HUNTRESS_WHEEL'] == universal_wheel_name()
    copies = [shlex.split(a) for i, a in check if i == 'COPY']
    assert copies == [['dist/${HUNTRESS_WHEEL}', '/tmp/${HUNTRESS_WHEEL}']]
    runs = [a for i, a in check if i == 'RUN']
    assert len(runs) == 1
    install = shlex.split(runs[0].split('&&')[0])
    assert install == ['agent', 'integration', 'install', '-r', '-w', '/tmp/${HUNTRESS_WHEEL}']


def test_the_build_scripts_write_the_wheel_the_dockerfile_copies():
    """scripts/build-wheel.sh and scripts/build-universal.sh put the wheels in dist/, named <dist>-<version>-<tag>."""
    assert 'mkdir -p dist' in read('scripts/build-wheel.sh')
    assert "parser.add_argument('--out', default='dist'" in read('scripts/universal_wheel.py')
    assert "-py3-none-any.whl" in read('scripts/universal_wheel.py')


def test_the_check_target_holds_no_instance_and_the_default_target_holds_conf_yaml():
    built = stages()
    assert not any('conf.d' in a for i, a in built['check'] if i == 'COPY')
    configured = built['configured']
    assert configured[0] == ('FROM', 'check')
    copies = [shlex.split(a) for i, a in configured if i == 'COPY']
    assert copies == [[CONF, '/etc/datadog-agent/conf.d/huntress.d/conf.yaml']]
    assert os.path.isfile(os.path.join(ROOT, CONF))


@pytest.mark.parametrize('where, instance', all_instances(), ids=lambda v: v if isinstance(v, str) else '')
def test_instances_keep_the_keys_in_secret_handles(where, instance):
    unknown = set(instance) - documented_option_names()
    assert not unknown, f'{where}: options not in conf.yaml.example: {sorted(unknown)}'
    for key in ('huntress_api_key', 'huntress_secret_key'):
        assert re.fullmatch(r'ENC\[[^\]]+\]', instance[key]), f'{where}: {key} is not an ENC[] handle'


@pytest.mark.parametrize('where, instance', all_instances(), ids=lambda v: v if isinstance(v, str) else '')
def test_instances_are_accepted_by_the_check(datadog_agent, where, instance):
    """The check's constructor validates the instance with the configuration models, then with the core, as the
    Agent's loading of the instance does (the Agent has resolved the ENC[] handles by then: any string will do)."""
    datadog_agent._config['api_key'] = AGENT_API_KEY
    check = HuntressCheck('huntress', {}, [dict(instance)])
    assert check.config.huntress_api_key == instance['huntress_api_key']
    assert [q.name for q in check.config.log_queries] == [q['name'] for q in instance['log_queries']]


@pytest.mark.parametrize('where', [HELM, OPERATOR])
def test_kubernetes_files_run_a_cluster_check_with_readable_secrets(where):
    document = yaml.safe_load(read(where))
    if where == HELM:
        secret_backend = document['datadog']['secretBackend']
        assert document['datadog']['clusterChecks']['enabled'] is True
        assert document['clusterAgent']['enabled'] is True
        image = document['agents']['image']['repository']
    else:
        assert (document['apiVersion'], document['kind']) == ('datadoghq.com/v2alpha1', 'DatadogAgent')
        secret_backend = document['spec']['global']['secretBackend']
        features = document['spec']['features']['clusterChecks']
        assert features == {'enabled': True, 'useClusterChecksRunners': False}
        image = document['spec']['override']['nodeAgent']['image']['name']
    assert 'datadog-agent-huntress' in image, 'the node Agents run the image with the check installed'
    assert secret_backend['command'] == '/readsecret_multiple_providers.sh'
    allowed = {(role['namespace'], secret) for role in secret_backend['roles'] for secret in role['secrets']}
    config = kubernetes_check_configs()[where]
    assert config['cluster_check'] is True
    for instance in config['instances']:
        for key in ('huntress_api_key', 'huntress_secret_key'):
            handle = K8S_HANDLE.match(instance[key])
            assert handle, f'{where}: {key} is not a k8s_secret handle'
            assert (handle['namespace'], handle['secret']) in allowed, f'{where}: the Agents may not read {handle[0]}'

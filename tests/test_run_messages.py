"""What a run says: each warning once in the Agent log, and a failed run that
names every query that failed."""

import pytest

from datadog_checks.base import AgentCheck

from .conftest import recent_events

NO_KEEP = 'returns rows with only uuid and organization_id'


def test_the_keep_warning_is_logged_once_and_is_on_the_service_check(make_check, dd_run_check, aggregator, huntress, instance, caplog):
    huntress.add_events(recent_events(10, seed=7))
    instance['log_queries'] = [{'name': 'bare', 'esql_query': 'FROM logs'}]
    caplog.set_level('INFO')
    dd_run_check(make_check(instance))
    assert caplog.text.count(NO_KEEP) == 1, caplog.text
    aggregator.assert_service_check('huntress.siem.can_connect', AgentCheck.WARNING)
    assert NO_KEEP in aggregator.service_checks('huntress.siem.can_connect')[0].message


def test_a_run_where_every_query_fails_names_each_query(make_check, dd_run_check, huntress, instance):
    instance['huntress_secret_key'] = 'wrong-secret-value-123'
    instance['log_queries'] = [
        {'name': 'windows', 'esql_query': 'FROM logs | KEEP @timestamp, uuid'},
        {'name': 'm365', 'esql_query': 'FROM logs | KEEP @timestamp, uuid, message'},
    ]
    with pytest.raises(Exception) as error:
        dd_run_check(make_check(instance))
    message = str(error.value)
    assert 'query "windows"' in message and 'query "m365"' in message, message
    assert message.count('credentials rejected') == 2, message

"""Type stub for the Rust core of the Huntress check."""

from typing import Any, Callable, Literal, Optional, TypedDict

__version__: str

class HuntressCoreError(Exception): ...
class ConfigError(HuntressCoreError): ...
class ApiError(HuntressCoreError): ...
class IntakeError(HuntressCoreError): ...
class CacheError(HuntressCoreError): ...
class DeadlineError(HuntressCoreError): ...
class InternalError(HuntressCoreError): ...

MetricRow = tuple[Literal['gauge', 'count'], str, float, list[str]]
ServiceCheckRow = tuple[str, int, list[str], Optional[str]]
LogRow = tuple[Literal['debug', 'info', 'warning', 'error'], str]

class Report(TypedDict):
    metrics: list[MetricRow]
    service_checks: list[ServiceCheckRow]
    events: list[dict[str, Any]]
    logs: list[LogRow]
    fatal: Optional[str]

class Collector:
    """One check instance. Raises ConfigError, naming the key, for an invalid instance.

    `agent`: `api_key`, `site`, `proxy`, `min_collection_interval`, and `logs_config`,
    the Agent's logs settings as JSON text keyed by their name under `logs_config`."""

    def __init__(self, instance_json: str, agent: dict[str, Any]) -> None: ...
    @property
    def cache_id(self) -> str: ...
    def run(self, read_cache: Callable[[str], str], write_cache: Callable[[str, str], None]) -> Report:
        """Runs every query once, with the GIL released during network work."""

def _inject_panic(point: Literal['new', 'run', 'query', 'feed']) -> None:
    """Test hook: the next `Collector()` ('new'), `run` ('run'), SIEM query ('query')
    or REST feed ('feed') panics once.
    Not part of the check's interface; no option or environment variable arms it."""

"""Local test servers for the datadog-huntress integration.

* HuntressSimulator - fake Huntress REST + SIEM query API
* IntakeSink / EchoServer - fake Datadog Logs intake and a header recorder
* fixtures - deterministic realistic data generators
"""

from . import fixtures
from .huntress_sim import HuntressSimulator
from .intake_sink import EchoServer, IntakeSink

__all__ = ["HuntressSimulator", "IntakeSink", "EchoServer", "fixtures"]

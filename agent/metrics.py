"""The Prometheus endpoint ([metrics]): read at scrape time, nothing on the line path.

A custom collector asks the running agent for its counters when scraped, so
the reader, the fix loop and the sender never touch a metric object.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agent.config import Metrics
from agent.errors import StateError
from agent.policy import OPEN, Status

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger("logmend.metrics")

LOOPBACK = ("127.", "::1", "localhost", "[::1]")


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        lines = CounterMetricFamily("logmend_lines_read", "Lines read", labels=["source"])
        for path, count in list(agent.lines_by_source.items()):
            lines.add_metric([path], count)
        yield lines
        size = CounterMetricFamily("logmend_bytes_read", "Bytes read", labels=["source"])
        for path, count in list(agent.bytes_by_source.items()):
            size.add_metric([path], count)
        yield size
        matches = CounterMetricFamily(
            "logmend_matches", "Lines matched per pattern", labels=["pack", "pattern"]
        )
        timeouts = CounterMetricFamily(
            "logmend_regex_timeouts",
            "Regex searches past their timeout",
            labels=["pack", "pattern"],
        )
        for matcher in {id(m): m for m in agent.matchers}.values():
            for pattern, stats in matcher.pattern_stats():
                matches.add_metric([pattern.pack, pattern.id], stats.matches)
                timeouts.add_metric([pattern.pack, pattern.id], stats.timeouts)
        yield matches
        yield timeouts
        fixes = CounterMetricFamily("logmend_fixes", "Fixes by outcome", labels=["outcome"])
        fixes.add_metric(["resolved"], agent.counters.resolved)
        fixes.add_metric(["failed"], agent.counters.failed)
        yield fixes
        sender = agent.sender
        escalations = CounterMetricFamily(
            "logmend_escalations", "Escalation deliveries by result", labels=["result"]
        )
        if sender is not None:
            escalations.add_metric(["sent"], sender.stats.sent)
            escalations.add_metric(["failed"], sender.stats.failures)
            escalations.add_metric(["parked"], sender.stats.parked)
        yield escalations
        reloads = CounterMetricFamily("logmend_reloads", "Reloads by result", labels=["result"])
        for result, count in agent.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        lag = GaugeMetricFamily("logmend_file_lag_bytes", "Bytes behind the end", labels=["path"])
        for followed in list(agent.tailer.files.values()):
            try:
                lag.add_metric(
                    [followed.path], max(0, os.fstat(followed.fd).st_size - followed.offset)
                )
            except OSError:
                continue
        yield lag
        yield from self._from_state()

    def _from_state(self) -> Iterator[Metric]:
        store = self.agent.store
        try:
            by_status = store.incidents_by_status()
            spool: dict[str, Any] = store.spool_summary()
        except StateError as exc:
            log.warning("metrics without state: %s", exc)
            return
        incidents = GaugeMetricFamily("logmend_incidents", "Incidents by state", labels=["state"])
        for status in (*OPEN, Status.RESOLVED, Status.ESCALATED, Status.FAILED):
            incidents.add_metric([status], by_status.get(status, 0))
        yield incidents
        yield GaugeMetricFamily("logmend_spool_depth", "Escalations queued", value=spool["queued"])
        yield GaugeMetricFamily(
            "logmend_spool_parked", "Escalations parked (refused for good)", value=spool["parked"]
        )
        oldest = spool["oldest"]
        age = max(0.0, self.agent.clock() - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "logmend_spool_oldest_age_seconds", "Age of the oldest queued escalation", value=age
        )
        yield GaugeMetricFamily(
            "logmend_spool_dropped",
            "Escalations dropped by a full spool, not yet reported",
            value=spool["dropped"],
        )


def serve_metrics(agent: Agent, config: Metrics) -> Any:
    """Start the endpoint on its own thread; returns the server (for shutdown)."""
    host, _, port = config.listen.rpartition(":")
    host = host.strip("[]")
    if not host.startswith(LOOPBACK):
        log.warning("metrics listen on %s, which is not loopback", config.listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    server, _thread = start_http_server(int(port), addr=host, registry=registry)
    agent.metrics_port = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, agent.metrics_port)
    return server

"""The Prometheus endpoint ([metrics]): read at scrape time, nothing on the line path.

A custom collector asks for a read-only `Snapshot` when scraped, so the
reader, the fix loop and the sender never touch a metric object, and this
module knows nothing of the agent that builds the snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agent.config import Metrics
from agent.policy import OPEN, Status
from agent.snapshot import Snapshot

log = logging.getLogger("logmend.metrics")

LOOPBACK = ("127.", "::1", "localhost", "[::1]")


JOURNAL_METRICS: dict[str, tuple[Any, str, str]] = {  # status key -> family, name, help
    "running": (GaugeMetricFamily, "running", "1 while the source's journalctl runs"),
    "restarts": (CounterMetricFamily, "restarts", "journalctl exits, each restarted"),
    "entries": (CounterMetricFamily, "entries", "Journal entries read"),
    "bytes": (CounterMetricFamily, "read_bytes", "Bytes of journalctl output read"),
    "lost": (CounterMetricFamily, "lost_entries", "Entries vacuumed before they were read"),
    "garbage": (CounterMetricFamily, "garbage_entries", "Entries binary or past the limit"),
    "held": (GaugeMetricFamily, "held_events", "Multiline events waiting for their end"),
}


class AgentCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        lines = CounterMetricFamily("logmend_lines_read", "Lines read", labels=["source"])
        for path, count in snap.lines_by_source.items():
            lines.add_metric([path], count)
        yield lines
        size = CounterMetricFamily("logmend_bytes_read", "Bytes read", labels=["source"])
        for path, count in snap.bytes_by_source.items():
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
        for pack, pattern, matched, timed_out in snap.patterns:
            matches.add_metric([pack, pattern], matched)
            timeouts.add_metric([pack, pattern], timed_out)
        yield matches
        yield timeouts
        fixes = CounterMetricFamily("logmend_fixes", "Fixes by outcome", labels=["outcome"])
        fixes.add_metric(["resolved"], snap.fixes_resolved)
        fixes.add_metric(["failed"], snap.fixes_failed)
        yield fixes
        escalations = CounterMetricFamily(
            "logmend_escalations", "Escalation deliveries by result", labels=["result"]
        )
        for result, count in (snap.deliveries or {}).items():
            escalations.add_metric([result], count)
        yield escalations
        reloads = CounterMetricFamily("logmend_reloads", "Reloads by result", labels=["result"])
        for result, count in snap.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        packs = GaugeMetricFamily("logmend_packs", "Packs by state", labels=["state"])
        packs.add_metric(["running"], snap.packs_running)
        packs.add_metric(["broken"], len(snap.broken_packs))
        yield packs
        broken = GaugeMetricFamily(
            "logmend_pack_broken", "1 for each pack that does not run here", labels=["pack"]
        )
        for name in snap.broken_packs:
            broken.add_metric([name], 1)
        yield broken
        templates = GaugeMetricFamily(
            "logmend_unknown_templates",
            "Templates of error lines no pattern matched, kept per owner",
            labels=["owner"],
        )
        grouped = CounterMetricFamily(
            "logmend_unknown_lines", "Error lines no pattern matched, grouped", labels=["owner"]
        )
        for owner, held, seen in snap.unknown:
            templates.add_metric([owner], held)
            grouped.add_metric([owner], seen)
        yield templates
        yield grouped
        yield from self._journals(snap)
        lag = GaugeMetricFamily("logmend_file_lag_bytes", "Bytes behind the end", labels=["path"])
        for path, behind in snap.lag:
            lag.add_metric([path], behind)
        yield lag
        yield from self._from_state(snap)

    def _journals(self, snap: Snapshot) -> Iterator[Metric]:
        """Each journal source: its journalctl up or not, restarted, read, lost."""
        families = {
            key: kind(f"logmend_journal_{name}", text, labels=["source"])
            for key, (kind, name, text) in JOURNAL_METRICS.items()
        }
        for source, status in snap.journals.items():
            for key, family in families.items():
                family.add_metric([source], float(status[key]))
        yield from families.values()

    def _from_state(self, snap: Snapshot) -> Iterator[Metric]:
        if snap.incidents_by_status is None:
            return
        incidents = GaugeMetricFamily("logmend_incidents", "Incidents by state", labels=["state"])
        for status in (*OPEN, Status.RESOLVED, Status.ESCALATED, Status.FAILED):
            incidents.add_metric([status], snap.incidents_by_status.get(status, 0))
        yield incidents
        spool = snap.spool
        yield GaugeMetricFamily("logmend_spool_depth", "Escalations queued", value=spool["queued"])
        yield GaugeMetricFamily(
            "logmend_spool_parked", "Escalations parked (refused for good)", value=spool["parked"]
        )
        oldest = spool["oldest"]
        age = max(0.0, snap.now - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "logmend_spool_oldest_age_seconds", "Age of the oldest queued escalation", value=age
        )
        yield GaugeMetricFamily(
            "logmend_spool_dropped",
            "Escalations dropped by a full spool, not yet reported",
            value=spool["dropped"],
        )


def serve_metrics(snapshot: Callable[[], Snapshot], config: Metrics) -> tuple[Any, int]:
    """Start the endpoint on its own thread; returns the server (for shutdown) and its port."""
    host, _, port = config.listen.rpartition(":")
    host = host.strip("[]")
    if not host.startswith(LOOPBACK):
        log.warning("metrics listen on %s, which is not loopback", config.listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(snapshot))
    server, _thread = start_http_server(int(port), addr=host, registry=registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound

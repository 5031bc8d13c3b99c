"""Prometheus metrics of coderd, rendered in the text exposition format.

Kept in process as plain counters (no client library): API request latency
histograms by route, provisioner jobs by state, provisioner daemons and
coordinator connections, and the embedded relay's DERP counters.  Served on
their own listener (``--prometheus-address``), never on the API port.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

# Seconds: from sub-millisecond cache hits to slow archive uploads.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """One histogram per label set: cumulative bucket counts, sum and count."""

    buckets: tuple[float, ...] = BUCKETS
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.buckets) + 2)  # buckets, sum, count
        i = bisect.bisect_left(self.buckets, value)
        for j in range(i, len(self.buckets)):
            s[j] += 1
        s[-2] += value
        s[-1] += 1


@dataclass
class CoderdMetrics:
    """Counters owned by one coderd replica (bumped by the router and endpoints)."""

    api_latency: Histogram = field(default_factory=Histogram)
    coordinator_connections: Counter[str] = field(default_factory=Counter)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def render(
    metrics: CoderdMetrics,
    *,
    jobs_by_status: Mapping[str, int],
    daemons_connected: int,
    derp: Mapping[str, object] | None = None,
    web: Mapping[str, int] | None = None,
    uptime: float = 0.0,
) -> str:
    """The whole exposition text."""
    out: list[str] = []
    name = "burrow_api_request_duration_seconds"
    out += [f"# HELP {name} API request latency by route.", f"# TYPE {name} histogram"]
    label_names = ("method", "route", "code")
    for labels, s in sorted(metrics.api_latency.series.items()):
        for bound, count in zip(metrics.api_latency.buckets, s, strict=False):
            le = 'le="' + f"{bound:g}" + '"'
            out.append(f"{name}_bucket{_labels(label_names, labels, le)} {count:g}")
        inf = 'le="+Inf"'
        out.append(f"{name}_bucket{_labels(label_names, labels, inf)} {s[-1]:g}")
        out.append(f"{name}_sum{_labels(label_names, labels)} {s[-2]:.6f}")
        out.append(f"{name}_count{_labels(label_names, labels)} {s[-1]:g}")
    out += ["# HELP burrow_provisioner_jobs Provisioner jobs by state.",
            "# TYPE burrow_provisioner_jobs gauge"]
    for status, n in sorted(jobs_by_status.items()):
        out.append(f'burrow_provisioner_jobs{{status="{_escape(status)}"}} {n}')
    out += ["# HELP burrow_provisioner_daemons_connected Provisioner daemons connected here.",
            "# TYPE burrow_provisioner_daemons_connected gauge",
            f"burrow_provisioner_daemons_connected {daemons_connected}"]
    out += ["# HELP burrow_coordinator_connections Coordinator WebSockets open, by role.",
            "# TYPE burrow_coordinator_connections gauge"]
    for role in ("agent", "client"):
        out.append(f'burrow_coordinator_connections{{role="{role}"}} '
                   f"{metrics.coordinator_connections[role]}")
    out += ["# TYPE burrow_uptime_seconds gauge", f"burrow_uptime_seconds {uptime:.1f}"]
    for key, value in sorted((derp or {}).items()):
        metric = f"burrow_derp_{key}"
        if isinstance(value, dict):
            out.append(f"# TYPE {metric} counter")
            for reason, n in sorted(value.items()):
                out.append(f'{metric}{{reason="{_escape(str(reason))}"}} {n}')
        elif isinstance(value, int | float) and not isinstance(value, bool):
            kind = "gauge" if key in ("clients_connected", "mesh_peers", "mesh_links") else \
                "counter"
            out += [f"# TYPE {metric} {kind}", f"{metric} {value}"]
    for key, n in sorted((web or {}).items()):  # the front door's refusals and gauges
        metric = f"burrow_web_{key}"
        kind = "gauge" if key in ("connections_open", "body_bytes_buffered") else "counter"
        out += [f"# TYPE {metric} {kind}", f"{metric} {n}"]
    return "\n".join(out) + "\n"

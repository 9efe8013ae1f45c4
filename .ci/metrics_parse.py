"""Parses a datastack node's /metrics with the Prometheus project's Python parsers (run by
.ci/interop): the classic text format 0.0.4, served by default, and OpenMetrics 1.0, served
when the scraper prefers it. Counters must come out as families with samples, which the
classic parser does not produce from OpenMetrics text."""

import os
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_classic

URL = os.environ["DATASTACK_URL"] + "/metrics"
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def scrape(accept=None):
    req = urllib.request.Request(URL, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req) as r:
        return r.headers["Content-Type"], r.read().decode()


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


content_type, text = scrape()
check(content_type.startswith("text/plain; version=0.0.4"), f"default content type ({content_type})")
families = {f.name: f for f in parse_classic(text)}
requests = families.get("datastack_http_requests")
check(requests is not None and requests.type == "counter", "the classic parser reads the request counter")
check(any(s.name == "datastack_http_requests_total" for s in requests.samples), "with its samples")
histogram = families.get("datastack_http_request_duration_seconds")
check(histogram is not None and histogram.type == "histogram"
      and any(s.name.endswith("_bucket") for s in histogram.samples), "and the latency histogram")

content_type, text = scrape(PROMETHEUS_ACCEPT)
check(content_type.startswith("application/openmetrics-text; version=1.0.0"), f"Prometheus's Accept gets OpenMetrics ({content_type})")
families = {f.name: f for f in parse_openmetrics(text)}
check(families["datastack_http_requests"].type == "counter"
      and len(families["datastack_http_requests"].samples) > 0, "the OpenMetrics parser reads the request counter")

#!/usr/bin/env python3
"""Writes deploy/observability/infergate.dashboard.json (Grafana) from the panel list below, and
with --check verifies that the committed file is what this script writes and that every
panel's PromQL parses (through `promtool check rules` on a throw-away rules file).

usage: dashboard.py [--check]
"""
import json
import os
import subprocess
import sys
import tempfile

OUT = "deploy/observability/infergate.dashboard.json"
SERVER_ERRORS = 'outcome=~"internal|overloaded|deadline_exceeded|not_ready"'

# (title, unit, [(legend, expr)], width)
PANELS = [
    ("Requests per second by model and outcome", "reqps",
     [("{{model}} {{outcome}}", 'sum by (model, outcome) (rate(infergate_requests_total{instance=~"$instance"}[$__rate_interval]))')], 12),
    ("Server error ratio (SLO 99.9%)", "percentunit",
     [("errors", f'sum(rate(infergate_requests_total{{{SERVER_ERRORS}, instance=~"$instance"}}[$__rate_interval])) / clamp_min(sum(rate(infergate_requests_total{{instance=~"$instance"}}[$__rate_interval])), 1e-9)')], 12),
    ("Request latency p50 / p99 by model", "s",
     [("p50 {{model}}", 'histogram_quantile(0.5, sum by (le, model) (rate(infergate_request_duration_seconds_bucket{outcome="success", instance=~"$instance"}[$__rate_interval])))'),
      ("p99 {{model}}", 'histogram_quantile(0.99, sum by (le, model) (rate(infergate_request_duration_seconds_bucket{outcome="success", instance=~"$instance"}[$__rate_interval])))')], 12),
    ("Queue wait and compute p99 by model", "s",
     [("queue {{model}}", 'histogram_quantile(0.99, sum by (le, model) (rate(infergate_queue_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))'),
      ("compute {{model}}", 'histogram_quantile(0.99, sum by (le, model) (rate(infergate_compute_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))')], 12),
    ("Queue depth and requests in flight", "short",
     [("queued {{instance}}", 'infergate_queued_requests{instance=~"$instance"}'),
      ("in flight {{instance}}", 'infergate_inflight_requests{instance=~"$instance"}')], 8),
    ("Average batch size by model", "short",
     [("{{model}}", 'sum by (model) (rate(infergate_batch_size_sum{instance=~"$instance"}[$__rate_interval])) / clamp_min(sum by (model) (rate(infergate_batch_size_count{instance=~"$instance"}[$__rate_interval])), 1e-9)')], 8),
    ("Cache hit rate by model", "percentunit",
     [("{{model}}", 'sum by (model) (rate(infergate_cache_lookups_total{result="hit", instance=~"$instance"}[$__rate_interval])) / clamp_min(sum by (model) (rate(infergate_cache_lookups_total{instance=~"$instance"}[$__rate_interval])), 1e-9)')], 8),
    ("Load shed by cause", "reqps",
     [("{{model}} {{cause}}", 'sum by (model, cause) (rate(infergate_rejected_requests_total{instance=~"$instance"}[$__rate_interval]))')], 8),
    ("Shadow agreement by route (share of rows whose top-1 agrees)", "percentunit",
     [("{{route}}", '1 - sum by (route) (rate(infergate_shadow_requests_total{result="disagreed", instance=~"$instance"}[$__rate_interval])) / clamp_min(sum by (route) (rate(infergate_shadow_requests_total{result="compared", instance=~"$instance"}[$__rate_interval])), 1e-9)'),
      ("dropped {{route}}", 'sum by (route) (rate(infergate_shadow_requests_total{result="dropped", instance=~"$instance"}[$__rate_interval]))')], 8),
    ("Models: loaded, unavailable, swaps", "short",
     [("loaded {{instance}}", 'infergate_loaded_model_versions{instance=~"$instance"}'),
      ("unavailable {{instance}}", 'infergate_unavailable_model_versions{instance=~"$instance"}'),
      ("swaps/min {{instance}}", 'rate(infergate_default_version_swaps_total{instance=~"$instance"}[$__rate_interval]) * 60')], 8),
    ("Memory: resident and model weights", "bytes",
     [("resident {{instance}}", 'infergate_process_resident_memory_bytes{instance=~"$instance"}'),
      ("weights {{instance}}", 'sum by (instance) (infergate_model_weight_bytes{instance=~"$instance"})')], 12),
    ("Input drift (PSI of the last window, threshold 0.2)", "short",
     [("{{model}}:{{version}} {{kind}}", 'max by (model, version, kind) (infergate_drift_psi{kind=~"max_feature|class", instance=~"$instance"})')], 12),
    ("CPU (cores used)", "short",
     [("{{instance}}", 'rate(infergate_process_cpu_seconds_total{instance=~"$instance"}[$__rate_interval])')], 12),
]


def dashboard():
    panels, x, y, row_h = [], 0, 0, 8
    for i, (title, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + row_h
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": width, "h": row_h},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [
                {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                for j, (legend, expr) in enumerate(targets)
            ],
        })
        x += width
    return {
        "title": "infergate",
        "uid": "infergate",
        "tags": ["infergate", "inference"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "instance", "type": "query", "label": "Instance",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(infergate_process_cpu_seconds_total, instance)",
             "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }


def render():
    return json.dumps(dashboard(), indent=2) + "\n"


def check():
    with open(OUT) as f:
        if f.read() != render():
            sys.exit(f"{OUT} is stale: run scripts/dashboard.py")
    # Grafana's variables are not PromQL: give them values before promtool parses the queries.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{i}:{j}",
         "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for i, (_, _, targets, _) in enumerate(PANELS)
        for j, (_, expr) in enumerate(targets)
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(rules, f)
    try:
        subprocess.run(["promtool", "check", "rules", f.name], check=True)
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        check()
    else:
        with open(OUT, "w") as f:
            f.write(render())
        print(f"wrote {OUT}")

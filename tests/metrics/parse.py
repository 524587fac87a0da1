#!/usr/bin/env python3
"""Parses Prometheus text (stdin) with the Prometheus project's own Python parser and prints
every sample as JSON: [{"name", "labels", "value", "family", "type"}]. A text the parser
refuses makes it exit non-zero, so the test sees the format is wrong."""
import json, sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({
            "name": s.name,
            "labels": s.labels,
            "value": s.value,
            "family": family.name,
            "type": family.type,
            "help": family.documentation,
        })
json.dump(samples, sys.stdout)

"""Render docker/prometheus-rules.yml (the one copy of the alerting rules) as the
prometheus-operator PrometheusRule in base/prometheusrule.yaml.

    python deploy/kubernetes/render_rules.py          # rewrite base/prometheusrule.yaml
    python deploy/kubernetes/render_rules.py --check  # exit 1 if it is out of date

A Prometheus rule file's `groups` is exactly a PrometheusRule's `spec.groups`, so this only
wraps it; tests/test_kubernetes.py fails when the two drift apart.
"""
import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "docker" / "prometheus-rules.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"
HEADER = ("# GENERATED from docker/prometheus-rules.yml by deploy/kubernetes/render_rules.py: edit\n"
          "# that file, then run the script. Like the ServiceMonitor, the Prometheus must select\n"
          "# this object (kube-prometheus-stack: label `release: <its release>`).\n")


class Literal(str):
    """A multi-line string written as a `|` block, so the PromQL stays readable."""


yaml.SafeDumper.add_representer(
    Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|"))


def literal_blocks(value):
    if isinstance(value, dict):
        return {key: literal_blocks(item) for key, item in value.items()}
    if isinstance(value, list):
        return [literal_blocks(item) for item in value]
    return Literal(value) if isinstance(value, str) and "\n" in value else value


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "bert-sentiment", "labels": {"app.kubernetes.io/name": "bert-sentiment"}},
        "spec": {"groups": literal_blocks(groups)},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the file is current")
    args = parser.parse_args()
    text = render()
    if args.check:
        if TARGET.is_file() and TARGET.read_text() == text:
            return 0
        print(f"{TARGET} is out of date: run python deploy/kubernetes/render_rules.py",
              file=sys.stderr)
        return 1
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checks of the chart as rendered, for scripts/chart (run with its tools' venv).

    check_rendered.py RENDERED.yaml --builtin-out FILE [--require-digest]
                      [--salesflow BIN --repo DIR]
    check_rendered.py --partitions VALUES.yaml TOPICS.toml

For one `helm template` output it
- counts the resources by kind;
- writes the resources of Kubernetes' own kinds to --builtin-out, for
  `kubernetes-validate --strict`, which knows no CRD (it only warns on them);
- validates the CRD kinds (KEDA ScaledObject, prometheus-operator PodMonitor) against
  JSON Schemas made from the CRDs' models (cloudcoil-models-keda and
  cloudcoil-models-prometheus-operator, generated from each project's CRDs), made strict:
  an object with declared properties takes no other, as the API server's strict field
  validation does. Any other kind fails;
- checks what the chart promises of every Deployment: probes on /health/live and
  /health/ready, terminationGracePeriodSeconds longer than the preStop pause plus
  server.shutdown_grace, and (--require-digest) images pinned by digest;
- with --salesflow, runs `salesflow check` on the rendered pipeline.toml once per
  Deployment, with that container's arguments and environment (Secrets' values replaced
  by placeholders): salesflow rejects an unknown key or an unreadable value, so every
  variable and --set the chart gives is one salesflow reads.

--partitions checks that the chart's kafka.topicPartitions are schemas/kafka/topics.toml's.
Exits non-zero on any finding.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import yaml

FAILURES = []


def fail(message):
    FAILURES.append(message)
    print(f"FAIL {message}")


def strict(node):
    """Closes every object schema that declares properties, in place."""
    if isinstance(node, dict):
        if node.get("properties") and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


def crd_validators():
    from cloudcoil.models.keda.v1alpha1 import ScaledObject
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor

    return {
        ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
        ("monitoring.coreos.com/v1", "PodMonitor"): PodMonitor,
    }


BUILTIN_GROUPS = re.compile(
    r"^(v1|apps/v1|policy/v1|autoscaling/v2|networking\.k8s\.io/v1|batch/v1|rbac\.authorization\.k8s\.io/v1)$"
)


def deepest(error):
    """The most specific error under anyOf/oneOf, for a readable message."""
    while error.context:
        error = max(error.context, key=lambda e: len(list(e.absolute_path)))
    return error


def check_crds(docs):
    models = crd_validators()
    schemas = {}
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if key not in models:
            fail(f"{name}: {key[0]} {key[1]} is neither a Kubernetes kind nor a CRD this check knows")
            continue
        if key not in schemas:
            schema = strict(models[key].model_json_schema())
            schemas[key] = jsonschema.Draft202012Validator(schema)
        errors = sorted(schemas[key].iter_errors(doc), key=lambda e: list(e.absolute_path))
        for error in errors:
            error = deepest(error)
            path = ".".join(str(p) for p in error.absolute_path)
            fail(f"{name} ({key[0]}): {path}: {error.message}")
        if not errors:
            print(f"INFO {name} ({key[0]}) passed against its CRD schema")


def env_of(container):
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            # A placeholder as a Secret would hold one: an API key takes 16 characters.
            env[item["name"]] = "placeholder-secret-0123456789"
        else:
            fail(f"env {item['name']}: only values and secretKeyRef are expected")
    return env


def check_deployments(deployments, require_digest):
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        for probe, path in (
            ("startupProbe", "/health/live"),
            ("livenessProbe", "/health/live"),
            ("readinessProbe", "/health/ready"),
        ):
            got = container.get(probe, {}).get("httpGet", {}).get("path")
            if got != path:
                fail(f"{name}: {probe} on {got}, not {path}")
        env = env_of(container)
        grace = env.get("SALESFLOW__SERVER__SHUTDOWN_GRACE", "")
        match = re.fullmatch(r"(\d+)s", grace)
        if not match:
            fail(f"{name}: SALESFLOW__SERVER__SHUTDOWN_GRACE is {grace!r}, not N s")
            continue
        pause = 0
        command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        if command:
            pause = int(command[1]) if command[0] == "sleep" else -1
        total = pod.get("terminationGracePeriodSeconds", 30)
        if pause < 0 or total <= pause + int(match.group(1)):
            fail(f"{name}: terminationGracePeriodSeconds {total} does not exceed the preStop "
                 f"pause {pause} s plus the drain {match.group(1)} s")
        else:
            print(f"INFO {name}: terminationGracePeriodSeconds {total} > preStop {pause} s "
                  f"+ shutdown_grace {match.group(1)} s")
        if require_digest and "@sha256:" not in container["image"]:
            fail(f"{name}: image {container['image']} is not pinned by digest")


def salesflow_check(docs, deployments, binary, repo):
    configs = [d for d in docs if d["kind"] == "ConfigMap" and "pipeline.toml" in d.get("data", {})]
    if len(configs) != 1:
        fail(f"expected one ConfigMap with pipeline.toml, found {len(configs)}")
        return
    with tempfile.TemporaryDirectory(prefix="salesflow-chart-") as app:
        # The image's /app: the mounted pipeline.toml beside schemas/.
        config = os.path.join(app, "pipeline.toml")
        with open(config, "w") as f:
            f.write(configs[0]["data"]["pipeline.toml"])
        os.symlink(os.path.join(repo, "schemas"), os.path.join(app, "schemas"))
        for deployment in deployments:
            name = deployment["metadata"]["name"]
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            args = list(container["args"])
            if "run" not in args:
                fail(f"{name}: no `run` in {args}")
                continue
            args = args[: args.index("run")]
            args = [config if a == "/app/pipeline.toml" else a for a in args]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": app}
            env.update(env_of(container))
            result = subprocess.run(
                [binary, *args, "check"], env=env, cwd=app, capture_output=True, text=True, timeout=60
            )
            if result.returncode != 0:
                fail(f"{name}: salesflow check refused its configuration:\n{result.stdout}{result.stderr}")
            else:
                print(f"INFO {name}: salesflow check: {result.stdout.splitlines()[0].split(': ', 1)[1]}")


def check_partitions(values_path, topics_path):
    with open(values_path) as f:
        chart = yaml.safe_load(f)["kafka"]["topicPartitions"]
    with open(topics_path, "rb") as f:
        declared = {t["name"]: t["partitions"] for t in tomllib.load(f)["topic"]}
    for topic, partitions in chart.items():
        if declared.get(topic) != partitions:
            fail(f"values kafka.topicPartitions.{topic} is {partitions}, "
                 f"schemas/kafka/topics.toml declares {declared.get(topic)}")
    if not FAILURES:
        print(f"INFO kafka.topicPartitions match schemas/kafka/topics.toml: {chart}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered", nargs="?")
    parser.add_argument("--builtin-out")
    parser.add_argument("--require-digest", action="store_true")
    parser.add_argument("--salesflow")
    parser.add_argument("--repo")
    parser.add_argument("--partitions", nargs=2, metavar=("VALUES", "TOPICS"))
    args = parser.parse_args()

    if args.partitions:
        check_partitions(*args.partitions)
        return 1 if FAILURES else 0

    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = collections.Counter(d["kind"] for d in docs)
    print(f"RENDERED {len(docs)} resources: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))

    builtin = [d for d in docs if BUILTIN_GROUPS.match(d.get("apiVersion", ""))]
    custom = [d for d in docs if not BUILTIN_GROUPS.match(d.get("apiVersion", ""))]
    with open(args.builtin_out, "w") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    check_crds(custom)

    deployments = [d for d in docs if d["kind"] == "Deployment"]
    check_deployments(deployments, args.require_digest)
    if args.salesflow:
        salesflow_check(docs, deployments, args.salesflow, args.repo)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())

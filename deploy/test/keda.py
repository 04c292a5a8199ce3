"""What deploy/test/run needs to stand in for KEDA and to check the worker against its manifest.

  keda.py plan RENDERED        the worker's ScaledObject trigger, resolved through the rendered
                               Service to the aggregator's container port:
                               `PORT PATH METRIC TARGET`
  keda.py value METRIC         the value KEDA's metrics-api scaler (format: prometheus) reads
                               from the /metrics text on stdin: the first sample of that family
  keda.py security RENDERED DEPLOYMENT INSPECT.json
                               checks that the running container (`podman inspect`) has the
                               securityContext the Deployment declares; prints each difference
"""

import json
import sys
from urllib.parse import urlsplit

import yaml


def load(rendered: str) -> list:
    with open(rendered, encoding="utf-8") as f:
        return [o for o in yaml.safe_load_all(f) if o]


def find(objects: list, kind: str, name: str) -> dict:
    for o in objects:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise SystemExit(f"no {kind} {name} in the rendered objects")


def plan(rendered: str) -> int:
    objects = load(rendered)
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    if len(scaled) != 1:
        raise SystemExit(f"expected one ScaledObject, found {len(scaled)}")
    (trigger,) = scaled[0]["spec"]["triggers"]
    meta = trigger["metadata"]
    if trigger["type"] != "metrics-api" or meta.get("format") != "prometheus":
        raise SystemExit(f"the trigger is not metrics-api with format prometheus: {trigger}")
    url = urlsplit(meta["url"])
    service_name, namespace = url.hostname.split(".")[:2]
    service = find(objects, "Service", service_name)
    if service["metadata"].get("namespace") != namespace:
        raise SystemExit(f"{url.hostname}: Service {service_name} is not in {namespace}")
    port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
    selector = service["spec"]["selector"]
    deployment = next(
        o for o in objects
        if o["kind"] == "Deployment"
        and all(o["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
    )
    container_port = None
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports", []):
            if port["targetPort"] in (p.get("name"), p["containerPort"]):
                container_port = p["containerPort"]
    if container_port is None:
        raise SystemExit(f"Service {service_name}: targetPort {port['targetPort']} is no container port")
    print(container_port, url.path, meta["valueLocation"], meta["targetValue"])
    return 0


def value(metric: str) -> int:
    # Prometheus' text format as KEDA's parser (expfmt) reads it: `# HELP`/`# TYPE` lines,
    # other `#` lines are comments, then `name{labels} value [timestamp]`.
    for line in sys.stdin.read().splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, sample = line.rsplit(" ", 1) if "}" not in line else line.rsplit("} ", 1)
        name = name_labels.split("{", 1)[0]
        if name == metric:
            print(int(float(sample.split()[0])))
            return 0
    raise SystemExit(f"metric {metric} not found")


def host_capabilities() -> set:
    """The capabilities this host's processes may hold (its bounding set), by name."""
    names = [
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
        "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
        "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
        "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
        "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
        "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
    ]
    with open("/proc/self/status", encoding="utf-8") as f:
        bounding = next(int(l.split()[1], 16) for l in f if l.startswith("CapBnd:"))
    return {"CAP_" + n for i, n in enumerate(names) if bounding >> i & 1}


def security(rendered: str, deployment: str, inspect_path: str) -> int:
    spec = find(load(rendered), "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    declared = container.get("securityContext", {})
    with open(inspect_path, encoding="utf-8") as f:
        (running,) = json.load(f)
    host = running["HostConfig"]
    wrong, notes = [], []
    effective = set(running.get("EffectiveCaps") or [])
    if declared.get("privileged") and not host.get("Privileged"):
        wrong.append("not privileged, declared privileged: true")
    if not declared.get("privileged") and host.get("Privileged"):
        wrong.append("privileged, declared otherwise")
    caps = declared.get("capabilities", {})
    if "ALL" in caps.get("drop", []):
        expected = {"CAP_" + c for c in caps.get("add", [])}
        # What the host itself lacks no runtime can grant; that is said, not failed.
        missing_here = expected - host_capabilities()
        if missing_here:
            notes.append(f"this host cannot grant {sorted(missing_here)}")
        if effective != expected - missing_here:
            wrong.append(f"capabilities {sorted(effective)}, declared {sorted(expected)}")
    seccomp = declared.get("seccompProfile", {}).get("type")
    if seccomp == "Unconfined" and not host.get("Privileged") \
            and "seccomp=unconfined" not in host.get("SecurityOpt", []):
        wrong.append(f"seccomp is confined ({host.get('SecurityOpt')}), declared Unconfined")
    user = str(declared.get("runAsUser", ""))
    if user and running["Config"].get("User", "") not in (user, f"{user}:{user}"):
        wrong.append(f"user {running['Config'].get('User')!r}, declared {user}")
    userns = host.get("UsernsMode", "")
    if spec.get("hostUsers") is False and userns in ("", "host"):
        wrong.append("runs in the host's user namespace, declared hostUsers: false")
    if spec.get("hostUsers") is not False and userns not in ("", "host"):
        wrong.append(f"runs in user namespace {userns}, declared the host's")
    for line in wrong:
        print(f"deploy-test: k8s: {deployment}: {line}")
    if not wrong:
        print(
            f"deploy-test: k8s: {deployment} runs as declared: {json.dumps(declared, sort_keys=True)}, "
            f"hostUsers {spec.get('hostUsers', True)}"
            + "".join(f"; {n}" for n in notes)
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit({"plan": plan, "value": value, "security": security}[command](*args))

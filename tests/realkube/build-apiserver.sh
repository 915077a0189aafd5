#!/usr/bin/env bash
# Builds kube-apiserver from Debian's own `kubernetes` source package, once per machine,
# and prints the path of the cached binary on stdout (progress goes to stderr).
#
#   bash tests/realkube/build-apiserver.sh
#
# Cache: ${KUBEGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubegate}/kube-apiserver/
#        <source version>-r<recipe>-<arch>/kube-apiserver
# keyed by the source package version apt would fetch and by RECIPE below (bump it when
# the steps change), so a later run on the same machine only checks the key (~1 s).
#
# Everything comes from Debian packages (run as root; it installs what is missing):
# golang-go builds the upstream tree offline (GOPROXY=off, vendored modules), etcd-server
# runs it, and three problems of the pristine v1.20 tree under Go 1.19 are fixed:
#   1. vendor/modules.txt: Go 1.19 misreads the Go 1.15 order, where a `# M => R v`
#      replacement line comes after its module's `# M v` block; those lines are moved in
#      front of the blocks (no line added or removed). The upstream `make` builds in
#      GOPATH mode and does not read the file, but with the fix `go build -mod=vendor`
#      works on the tree too;
#   2. the generated OpenAPI definitions, missing from the tarball, are produced by the
#      upstream `make` (its generated_files step; needs make and rsync);
#   3. the vendored json-iterator 1.1.10 / reflect2 1.0.1, which panic at run time under
#      Go >= 1.18, are replaced by Debian's 1.1.12 / 1.0.2 (golang-github-json-iterator-go-
#      dev, golang-github-modern-go-reflect2-dev), as upstream did in kubernetes PR #104949,
#      with go.mod and vendor/modules.txt bumped to match.
# A machine without deb-src entries gets one derived from its existing apt sources.
set -euo pipefail

RECIPE=1
SRC_PKG=kubernetes
BUILD_DEPS=(golang-go make rsync dpkg-dev openssl python3
  golang-github-json-iterator-go-dev golang-github-modern-go-reflect2-dev)
RUN_DEPS=(etcd-server openssl python3)
DEB_SRC_FILE=/etc/apt/sources.list.d/kubegate-deb-src

home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${KUBEGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$home/.cache}/kubegate}
# Wait for another apt/dpkg run (say, unattended upgrades) instead of failing.
APT_OPTS=(-o DPkg::Lock::Timeout=600)
log() { echo "[build-apiserver] $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else die "needs root to run: $*"; fi
}

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get "${APT_OPTS[@]}" update -qq >&2 || die "apt-get update failed"
    apt_updated=1
  fi
}

# Installs the packages in "$@" that are not installed yet.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  apt_update
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y -qq \
    --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
}

# Prints deb-src entries for every enabled `deb` entry of the machine's own apt sources
# whose suite is the release codename (so no mirror name is written here).
derive_deb_src() {
  local codename=$1 format=$2 f
  if [ "$format" = sources ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
      if [ ! -f "$f" ] || [ "$f" = "$DEB_SRC_FILE.sources" ]; then continue; fi
      awk -v cn="$codename" '
        function flush() {
          if (n > 0 && isdeb && hassuite) { for (i = 1; i <= n; i++) print lines[i]; print "" }
          n = 0; isdeb = 0; hassuite = 0; off = 0
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        {
          line = $0; key = tolower($1)
          if (key == "types:") {
            for (i = 2; i <= NF; i++) if ($i == "deb") isdeb = 1
            line = "Types: deb-src"
          } else if (key == "suites:") {
            for (i = 2; i <= NF; i++) if ($i == cn) hassuite = 1
            line = "Suites: " cn
          } else if (key == "enabled:" && tolower($2) == "no") {
            isdeb = 0
          }
          lines[++n] = line
        }
        END { flush() }
      ' "$f"
    done
  else
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      if [ ! -f "$f" ] || [ "$f" = "$DEB_SRC_FILE.list" ]; then continue; fi
      awk -v cn="$codename" '
        $1 == "deb" {
          j = 2
          if ($2 ~ /^\[/) { while (j <= NF && $j !~ /\]$/) j++; j++ }
          if ($(j + 1) == cn) { sub(/^deb/, "deb-src"); print }
        }' "$f"
    done
  fi
}

# Prints the source version apt would fetch, or nothing.
source_version() {
  apt-get source --print-uris -qq "$SRC_PKG" 2>/dev/null |
    awk -v p="$SRC_PKG" '{ f = $2; if (f ~ "^" p "_.*\\.dsc$") { sub("^" p "_", "", f); sub("\\.dsc$", "", f); print f; exit } }'
}

ensure_deb_src() {
  local v
  v=$(source_version)
  if [ -z "$v" ]; then
    apt_update
    v=$(source_version)
  fi
  if [ -z "$v" ]; then
    local codename
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')
    [ -n "$codename" ] || die "cannot tell the release codename from /etc/os-release"
    log "no deb-src entries: deriving them from the apt sources for '$codename'"
    derive_deb_src "$codename" sources >"$DEB_SRC_FILE.sources.new"
    derive_deb_src "$codename" list >"$DEB_SRC_FILE.list.new"
    local f
    for f in sources list; do
      if [ -s "$DEB_SRC_FILE.$f.new" ]; then
        as_root mv "$DEB_SRC_FILE.$f.new" "$DEB_SRC_FILE.$f"
      else
        rm -f "$DEB_SRC_FILE.$f.new"
      fi
    done
    [ -e "$DEB_SRC_FILE.sources" ] || [ -e "$DEB_SRC_FILE.list" ] ||
      die "found no 'deb' entry for '$codename' in the apt sources to derive deb-src from"
    apt_updated=0
    apt_update
    v=$(source_version)
  fi
  [ -n "$v" ] || die "apt cannot find the source package '$SRC_PKG'"
  echo "$v"
}

# Go 1.19 reads vendor/modules.txt line by line: a wildcard replacement line `# M => R v`
# starts a new (package-less) module, so the package lines of the module above it that
# follow it (Go 1.15 wrote them after it) are attributed to M. Moving every such line in
# front of the module blocks keeps exactly the same lines and gives each package back to
# its module.
fix_modules_txt() {
  local f=vendor/modules.txt
  { grep -E '^# [^ ]+ => ' "$f" || true; grep -vE '^# [^ ]+ => ' "$f"; } >"$f.new"
  [ "$(sort "$f" | md5sum)" = "$(sort "$f.new" | md5sum)" ] || die "modules.txt fix changed lines"
  mv "$f.new" "$f"
}

# Replaces a vendored module by Debian's packaged source and bumps its version.
use_debian_module() {
  local mod=$1 old=$2 new=$3 src=/usr/share/gocode/src/$1
  [ -d "$src" ] || die "$src missing (Debian package not installed?)"
  rm -rf "vendor/$mod"
  mkdir -p "vendor/$mod"
  find "$src" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name 'LICENSE*' \) \
    ! -name '*_test.go' -exec cp {} "vendor/$mod/" \;
  local q=${mod//./\\.}
  sed -i -E "s#^(\s*${q}) v${old//./\\.}\$#\1 v${new}#; s#(=> ${q}) v${old//./\\.}\$#\1 v${new}#" go.mod
  sed -i -E "s#^(\# ${q}) v${old//./\\.}( |\$)#\1 v${new}\2#; s#(=> ${q}) v${old//./\\.}\$#\1 v${new}#" \
    vendor/modules.txt
  grep -q "$mod v$old" go.mod vendor/modules.txt && die "could not bump $mod in go.mod/modules.txt"
  return 0
}

build() {
  local version=$1 out=$2 work
  ensure_packages "${BUILD_DEPS[@]}"
  mkdir -p "$CACHE/tmp"
  work=$(mktemp -d "$CACHE/tmp/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "fetching source package $SRC_PKG $version"
  (cd "$work" && apt-get source --download-only -qq "$SRC_PKG=$version" >&2 2>/dev/null) ||
    (cd "$work" && apt-get source --download-only "$SRC_PKG=$version" >&2) ||
    die "apt-get source $SRC_PKG=$version failed"
  log "unpacking"
  (cd "$work" && dpkg-source -q -x ./*.dsc src >&2) || die "dpkg-source -x failed"
  cd "$work/src"
  log "patching the tree (modules.txt order, json-iterator 1.1.12, reflect2 1.0.2)"
  fix_modules_txt
  use_debian_module github.com/json-iterator/go 1.1.10 1.1.12
  use_debian_module github.com/modern-go/reflect2 1.0.1 1.0.2
  log "building cmd/kube-apiserver with $(go version) (a few minutes)"
  local started=$SECONDS
  # The upstream make: generated files (OpenAPI definitions included), version stamps
  # from the release tarball, a static binary. Offline: everything is vendored.
  env GOPROXY=off GOTOOLCHAIN=local GOFLAGS= CGO_ENABLED=0 GO111MODULE=off \
    HOME="$work/home" GOCACHE="$work/gocache" \
    make WHAT=cmd/kube-apiserver >&2 || die "make WHAT=cmd/kube-apiserver failed"
  log "built in $((SECONDS - started)) s"
  local bin
  bin=_output/local/bin/linux/$(go env GOARCH)/kube-apiserver
  [ -x "$bin" ] || bin=_output/bin/kube-apiserver
  [ -x "$bin" ] || die "kube-apiserver binary not found after the build"
  "$bin" --version >&2
  mkdir -p "$(dirname "$out")"
  cp "$bin" "$out.tmp"
  mv "$out.tmp" "$out"
  cd /
  rm -rf "$work"
  trap - EXIT
}

main() {
  command -v apt-get >/dev/null || die "this needs a Debian machine (apt-get)"
  # One run at a time on this machine, packages included: two test binaries started
  # together (nextest runs them in parallel) would otherwise race for apt's locks, which
  # `apt-get update` does not wait for. Whoever waited finds the work done.
  mkdir -p "$CACHE"
  exec 9>"$CACHE/build.lock"
  if ! flock -n 9; then
    log "another run is installing or building; waiting for it"
    flock 9
  fi
  ensure_packages "${RUN_DEPS[@]}" dpkg-dev
  local version arch key out
  version=$(ensure_deb_src)
  arch=$(dpkg --print-architecture)
  key="${version}-r${RECIPE}-${arch}"
  out="$CACHE/kube-apiserver/$key/kube-apiserver"
  if [ ! -x "$out" ]; then
    log "no cached kube-apiserver for $SRC_PKG $version (recipe $RECIPE): building it once"
    local started=$SECONDS
    (build "$version" "$out")
    log "kube-apiserver cached at $out ($((SECONDS - started)) s in all)"
  fi
  exec 9>&-
  echo "$out"
}

main "$@"

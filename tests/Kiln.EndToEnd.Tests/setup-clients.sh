#!/usr/bin/env bash
# Builds the Nix client chroots the end-to-end tests run real Nix in, one per version, from Debian's own nix-bin
# packages (see ../../../shared/docs/environment.md): bullseye 2.3.7, bookworm 2.8.0, trixie 2.26.3, sid 2.34.8.
# Cached under /var/cache/kiln-test/<suite> and rebuilt only when missing. Needs root and debootstrap.
# A suite whose perl/dbd configure step fails still has working nix binaries, so success is judged by nix itself.
set -uo pipefail
cache="${KILN_TEST_CACHE:-/var/cache/kiln-test}"
mkdir -p "$cache"
if ! command -v debootstrap > /dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap < /dev/null > /dev/null
fi

build() {
  local suite="$1" dir="$cache/$1"
  if [ -x "$dir/usr/bin/nix-store" ]; then
    return 0
  fi
  echo "building the $suite Nix client chroot (about a minute)..."
  rm -rf "$dir.tmp"
  debootstrap --variant=minbase --include=nix-bin,openssh-client,libdbi-perl "$suite" "$dir.tmp" http://deb.debian.org/debian \
    > "$cache/$suite.log" 2>&1 || true
  if [ -x "$dir.tmp/usr/bin/nix-store" ]; then
    mv "$dir.tmp" "$dir"
  else
    echo "debootstrap of $suite failed; see $cache/$suite.log" >&2
    return 1
  fi
}

# The reference Nix of the fidelity tests runs its builds as build users, as a stock multi-user install does.
if ! getent group nixbld > /dev/null; then
  groupadd --system nixbld
  for i in 1 2 3 4; do
    useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin --gid nixbld --groups nixbld "nixbld$i"
  done
fi

# Workspaces and keys the tests remove themselves, except when a run was killed: whatever is older than any run
# could be goes now, so the cached chroots cannot grow run after run (they once held 77 GiB and filled CI's disk).
for scratch in "$cache"/*/tmp/kiln-e2e "$cache"/*/tmp/kiln-e2e-ssh /tmp/kiln-e2e-ssh; do
  [ -d "$scratch" ] && find "$scratch" -mindepth 1 -maxdepth 1 -mmin +180 -exec rm -rf --one-file-system {} +
done

status=0
for suite in bullseye bookworm trixie sid; do
  build "$suite" &
done
wait || status=$?
for suite in bullseye bookworm trixie sid; do
  [ -x "$cache/$suite/usr/bin/nix-store" ] || status=1
done
exit $status

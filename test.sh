#!/usr/bin/env bash
# Runs every test: unit and component tests, the comparisons against the real Nix (Debian's nix-bin 2.8, installed
# here when missing and running as root), and the end-to-end tests with Nix 2.3, 2.8, 2.26 and 2.34 clients
# against a running kiln serve (their chroots are built on first use, about a minute each).
# Ends with one line: "N passed, N failed, N skipped".
# Usage: ./test.sh [extra dotnet test arguments, e.g. --filter FullyQualifiedName~Nar]
set -euo pipefail
repo="$(cd "$(dirname "$0")" && pwd)"
cd "$repo"

if ! command -v nix-store > /dev/null || ! command -v bwrap > /dev/null || [ ! -x /bin/busybox ] || ! command -v setfattr > /dev/null || ! command -v ssh-keygen > /dev/null || [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing nix-bin (the reference Nix), bubblewrap (Kiln's sandbox), busybox-static (the test builds' shell), attr (setfattr) and openssh-server (sshd, ssh-keygen)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin bubblewrap busybox-static attr openssh-server > /dev/null
  else
    echo "the tests need the real Nix, bubblewrap and a static busybox: run 'sudo apt-get install nix-bin bubblewrap busybox-static attr openssh-server' first" >&2
    exit 1
  fi
fi

# The live comparisons must not silently skip when Nix is missing.
export KILN_REQUIRE_NIX=1

# The end-to-end tests run real Nix 2.3, 2.8, 2.26 and 2.34 in chroots (built once, cached); that needs root.
if [ "$(id -u)" = 0 ]; then
  "$repo/tests/Kiln.EndToEnd.Tests/setup-clients.sh"
  export KILN_REQUIRE_E2E=1
else
  echo "not root: the end-to-end tests with real Nix clients will be skipped" >&2
fi

results="$repo/artifacts/test-results"
rm -rf "$results"
status=0
# One run per test project, each with its own result file (tests inside a project run in parallel).
for project in "$repo"/tests/*/*.csproj; do
  name="$(basename "$project" .csproj)"
  dotnet test "$project" --logger "trx;LogFileName=$name.trx" --results-directory "$results" "$@" || status=$?
done

passed=0 failed=0 skipped=0 total=0
for trx in "$results"/*.trx; do
  [ -e "$trx" ] || continue
  counters="$(grep -o '<Counters [^>]*>' "$trx")"
  value() { echo "$counters" | sed -n "s/.* $1=\"\\([0-9]*\\)\".*/\\1/p"; }
  total=$((total + $(value total)))
  passed=$((passed + $(value passed)))
  failed=$((failed + $(value failed)))
done
skipped=$((total - passed - failed))
if [ "$total" = 0 ]; then
  echo "no test results were produced" >&2
  failed=1
fi
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$status" != 0 ] || [ "$failed" != 0 ]; then
  exit 1
fi

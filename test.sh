#!/usr/bin/env bash
# Runs every test: unit and component tests, the comparisons against the real Nix (Debian's nix-bin 2.8, installed
# here when missing and running as root), and the end-to-end tests with Nix 2.3, 2.8, 2.26 and 2.34 clients
# against a running kiln serve (their chroots are built on first use, about a minute each).
# Ends with one line: "N passed, N failed, N skipped".
# Usage: ./test.sh [extra dotnet test arguments, e.g. --filter FullyQualifiedName~Nar]
set -euo pipefail
repo="$(cd "$(dirname "$0")" && pwd)"
cd "$repo"

# The reference Nix, Kiln's sandbox, the test builds' shell, setfattr, sshd and ssh-keygen, compression tools for the
# decoder tests, nginx for the fake upstream cache, clang and zlib1g-dev for the NativeAOT kiln-bridge, and PostgreSQL's
# server binaries for the metadata tests' private clusters; prometheus (and promtool) for the metrics tests; chromium and chromium-driver for the dashboard's browser tests;
# radosgw and a Ceph monitor and OSD for the S3 tests that need a server which checks signatures (tests/radosgw).
packages="nix-bin bubblewrap busybox-static attr openssh-server xz-utils zstd bzip2 nginx clang zlib1g-dev slirp4netns postgresql chromium chromium-driver"
plain="prometheus radosgw ceph-mon ceph-osd ceph-common" # without their recommends
if ! dpkg -s $packages $plain > /dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing $packages $plain..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $plain > /dev/null
  else
    echo "the tests need these packages: run 'sudo apt-get install $packages' and 'sudo apt-get install --no-install-recommends $plain' first" >&2
    exit 1
  fi
fi

# s3rver (npm): the S3-speaking server the S3 blob-store tests start on loopback.
if ! command -v s3rver > /dev/null; then
  if [ "$(id -u)" = 0 ]; then
    command -v npm > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm > /dev/null
    npm install -g --silent s3rver@3.7.1 > /dev/null
  else
    echo "the S3 tests need s3rver: run 'sudo npm install -g s3rver@3.7.1' first" >&2
    exit 1
  fi
fi

# The live comparisons must not silently skip when Nix is missing, nor the PostgreSQL and S3 tests without their servers.
export KILN_REQUIRE_NIX=1 KILN_REQUIRE_POSTGRES=1 KILN_REQUIRE_S3=1
# radosgw's cluster is started as root, as the end-to-end tests are; without root those tests skip.
[ "$(id -u)" = 0 ] && export KILN_REQUIRE_RGW=1

# The end-to-end tests run real Nix 2.3, 2.8, 2.26 and 2.34 in chroots (built once, cached); that needs root.
if [ "$(id -u)" = 0 ]; then
  "$repo/tests/Kiln.EndToEnd.Tests/setup-clients.sh"
  export KILN_REQUIRE_E2E=1
else
  echo "not root: the end-to-end tests with real Nix clients will be skipped" >&2
fi

# kiln as ./kiln publishes it: the native kiln (NativeAOT; kiln key …, kiln token …, kiln account create | list | set)
# with the managed kiln beside it.
# The CLI tests check it against the managed kiln, and run the account and cache command tests through it again below.
# (Without clang, and not root to install it, ./kiln is the managed kiln alone and those tests skip.)
"$repo/kiln" --version > /dev/null
[ -x "$repo/artifacts/kiln/kiln-managed" ] && export KILN_NATIVE_KILN="$repo/artifacts/kiln/kiln"
[ "$(id -u)" = 0 ] && export KILN_REQUIRE_NATIVE=1

results="$repo/artifacts/test-results"
rm -rf "$results"
status=0
sdk_mark="$(mktemp)"
# kiln serve keeps the files its sshd runs under /run/kiln-ssh (tmpfs, so memory) while it runs: what a test leaves
# there is reported below.
runtime_before="$(ls /run/kiln-ssh 2> /dev/null || true)"
# One run per test project, each with its own result file (tests inside a project run in parallel).
for project in "$repo"/tests/*/*.csproj; do
  name="$(basename "$project" .csproj)"
  dotnet test "$project" --logger "trx;LogFileName=$name.trx" --results-directory "$results" "$@" || status=$?
done
if [ -n "${KILN_NATIVE_KILN:-}" ]; then
  KILN_TEST_KILN="$KILN_NATIVE_KILN" dotnet test "$repo/tests/Kiln.Cli.Tests/Kiln.Cli.Tests.csproj" --logger "trx;LogFileName=Kiln.Cli.Tests.native.trx" \
    --results-directory "$results" --filter "FullyQualifiedName~AccountCommandTests|FullyQualifiedName~CacheCommandTests" "$@" || status=$?
fi
# Each dotnet test leaves two empty directories of the .NET SDK's own in the temporary directory (six random letters,
# mode 700; Microsoft.DotNet.InternalAbstractions makes them): those made during this run go.
find "$(dirname "$sdk_mark")" -maxdepth 1 -regextype posix-extended -regex '.*/[A-Za-z0-9]{6}' -type d -empty -perm 700 \
  -user "$(id -u)" -newer "$sdk_mark" -exec rmdir {} + 2> /dev/null || true
rm -f "$sdk_mark"
left="$(comm -13 <(echo "$runtime_before" | sort) <(ls /run/kiln-ssh 2> /dev/null | sort) | tr '\n' ' ')"
[ -z "${left// /}" ] || echo "warning: these kiln serve runtime directories appeared in /run/kiln-ssh during the tests (left by a test, or made by a server outside them): $left" >&2

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

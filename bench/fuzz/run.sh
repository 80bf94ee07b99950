#!/usr/bin/env bash
# A longer fuzzing run than CI's (20.4): every fuzz target (NAR, narinfo, .drv, the five decompressors, the worker
# and serve protocol sessions, the HTTP cache's paths) for ITERATIONS mutations each, from SEED (default: the time).
# Inputs that fail are written to bench/fuzz/crashes/; commit one under tests/Kiln.Nix.Tests/Fuzz/corpus/TARGET/ to
# make it a regression case CI runs every time.
#   bench/fuzz/run.sh [ITERATIONS] [SEED]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
export KILN_FUZZ_ITERATIONS="${1:-200000}" KILN_FUZZ_SEED="${2:-$(date +%s)}" KILN_FUZZ_CRASHES="$repo/bench/fuzz/crashes"
echo "fuzzing: $KILN_FUZZ_ITERATIONS iterations per target, seed $KILN_FUZZ_SEED; failing inputs go to $KILN_FUZZ_CRASHES"
dotnet build Kiln.sln -m:1 -v:q -nologo
status=0
for project in Kiln.Nix.Tests Kiln.Protocol.Tests Kiln.Http.Tests; do
  dotnet test "tests/$project" --no-build --filter "FullyQualifiedName~FuzzTests" --logger "console;verbosity=normal" || status=1
done
exit $status

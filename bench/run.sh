#!/usr/bin/env bash
# Runs the NAR benchmark (Kiln vs stock Nix) on a ReadyToRun-published kiln, the way it would be installed.
# Usage: bench/run.sh [--size-mib N] [--runs N]      Needs nix-bin (apt-get install nix-bin).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/bench/out"
dotnet publish "$repo/src/Kiln.Cli" -c Release -r linux-x64 --self-contained false -p:PublishReadyToRun=true -o "$out/kiln" -v quiet -nologo
dotnet build "$repo/bench/Kiln.Bench" -c Release -v quiet -nologo
dotnet "$repo/bench/Kiln.Bench/bin/Release/net10.0/Kiln.Bench.dll" --kiln "$out/kiln/kiln" "$@"

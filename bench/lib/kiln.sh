# Sourced by bench scripts: publish_kiln WORK publishes kiln with ReadyToRun (as it would be installed) into
# WORK/kiln-bin and sets kiln to its executable; when KILN_BENCH_KILN names one already published (bench/speed/run.sh
# publishes once for all), that one. Also brings in median and summary (stats.sh).
source "$(dirname "${BASH_SOURCE[0]}")/stats.sh"
publish_kiln() {
  if [ -n "${KILN_BENCH_KILN:-}" ]; then
    kiln="$KILN_BENCH_KILN"
    return
  fi
  echo "building kiln (ReadyToRun)..."
  dotnet publish "$repo/src/Kiln.Cli" -c Release -r linux-x64 --self-contained false -p:PublishReadyToRun=true \
    -o "$1/kiln-bin" -v quiet -nologo > /dev/null
  kiln="$1/kiln-bin/kiln"
}

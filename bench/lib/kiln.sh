# Sourced by bench scripts: publish_kiln WORK publishes kiln with ReadyToRun (as it would be installed) into
# WORK/kiln-bin and sets kiln to its executable.
publish_kiln() {
  dotnet publish "$repo/src/Kiln.Cli" -c Release -r linux-x64 --self-contained false -p:PublishReadyToRun=true \
    -o "$1/kiln-bin" -v quiet -nologo > /dev/null
  kiln="$1/kiln-bin/kiln"
}

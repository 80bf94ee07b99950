# Sourced by bench scripts: the stock anchor's front door. plain_sshd DIR PORT HOST_KEY COMMAND PUBLIC_KEY writes
# DIR/sshd_config for a plain sshd on 127.0.0.1:PORT that lets root in with PUBLIC_KEY only to run COMMAND (as a
# stock Nix remote forces `nix-daemon --stdio`); start it with `/usr/sbin/sshd -D -e -f DIR/sshd_config`.
plain_sshd() {
  mkdir -p "$1" /run/sshd
  echo "command=\"$4\",restrict $5" > "$1/authorized_keys"
  cat > "$1/sshd_config" <<CONF
Port $2
ListenAddress 127.0.0.1
HostKey $3
PidFile $1/sshd.pid
AuthorizedKeysFile $1/authorized_keys
StrictModes no
PermitRootLogin forced-commands-only
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
LogLevel ERROR
CONF
}

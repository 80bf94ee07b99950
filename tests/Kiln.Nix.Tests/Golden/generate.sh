#!/usr/bin/env bash
# Regenerates the golden data in this directory with the real Nix (Debian's nix-bin 2.8.0).
# Run as root on a machine with nix-bin installed:  ./generate.sh
# See README.md for what each file is. Output is deterministic: rerunning it changes nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export NIX_CONFIG=$'experimental-features = nix-command\nbuild-users-group = \nsandbox = false'
nix_version="$(nix --version)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "using $nix_version"

# 1. NARs of the trees make-trees.sh builds, and their hashes as nix-hash prints them.
rm -rf "$here/nar" && mkdir -p "$here/nar"
"$here/make-trees.sh" "$work/trees"
: > "$here/nar/hashes.txt"
for entry in $(cd "$work/trees" && ls -A | LC_ALL=C sort); do
  nix-store --dump "$work/trees/$entry" > "$here/nar/$entry.nar"
  printf '%s %s %s %s\n' "$entry" \
    "$(nix-hash --type sha256 --base32 "$work/trees/$entry")" \
    "$(nix-hash --type sha256 "$work/trees/$entry")" \
    "$(stat -c %s "$here/nar/$entry.nar")" >> "$here/nar/hashes.txt"
done

# 2. Derivations: instantiate exprs.nix and keep every .drv of the closure with its `nix show-derivation` JSON.
rm -rf "$here/drv/store" && mkdir -p "$here/drv/store"
: > "$here/drv/instantiated.txt"
for attr in $(nix-instantiate --eval --json -E "builtins.attrNames (import $here/drv/exprs.nix)" | tr -d '[]"' | tr ',' ' '); do
  drv="$(nix-instantiate "$here/drv/exprs.nix" -A "$attr" 2>/dev/null | sed 's/!.*//')"
  printf '%s %s\n' "$attr" "$drv" >> "$here/drv/instantiated.txt"
done
: > "$here/drv/sources.txt"
for path in $(nix-store -qR $(cut -d' ' -f2 "$here/drv/instantiated.txt") | LC_ALL=C sort); do
  base="$(basename "$path")"
  case "$base" in
    *.drv)
      cp "$path" "$here/drv/store/$base"
      nix show-derivation "$path" > "$here/drv/store/$base.json"
      ;;
    *)
      # Sources: their NAR hash (for recomputing their paths) and the references nix recorded.
      printf '%s %s %s\n' "$path" "$(nix-store -q --hash "$path")" \
        "$(nix-store -q --references "$path" | tr '\n' ' ')" >> "$here/drv/sources.txt"
      ;;
  esac
done

# 3. narinfo: a file:// binary cache written by `nix copy`, signed by `nix store sign` with the fixed test key
#    (seed 0x00..0x1f, name test-key-1).
rm -rf "$here/narinfo" && mkdir -p "$here/narinfo"
printf '%s' 'test-key-1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==' > "$work/secret.key"
nix key convert-secret-to-public < "$work/secret.key" > "$here/narinfo/test-key-1.public"
cp "$work/secret.key" "$here/narinfo/test-key-1.secret"
sources="$(awk '{print $1}' "$here/drv/sources.txt")"
nix copy --to "file://$work/cache?compression=none" $sources
nix store sign --store "file://$work/cache" --key-file "$work/secret.key" $sources
cp "$work"/cache/*.narinfo "$here/narinfo/"
cp "$work"/cache/nar/*.nar "$here/narinfo/"
cp "$work/cache/nix-cache-info" "$here/narinfo/"

echo "$nix_version" > "$here/nix-version.txt"
echo "done"

#!/usr/bin/env bash
# Builds the directory trees whose NARs are golden data. Used both by generate.sh (which archives them with the
# real nix-store --dump) and by the tests (which archive them with Kiln and compare). Deterministic: same trees
# on every run. Usage: make-trees.sh DIR   (DIR must not exist)
set -euo pipefail
root="$1"
mkdir -p "$root"
cd "$root"

# A single regular file, a single executable, a single symlink, an empty file.
printf 'hello\n' > hello.txt
printf '#!/bin/sh\necho hi\n' > script.sh && chmod 0755 script.sh
ln -s /nix/store/some-target symlink
: > empty-file

# The tree from the protocol notes (T8).
mkdir -p t8/sub
printf 'hello\n' > t8/a.txt
ln -s a.txt t8/link
printf '#!/bin/sh\necho hi\n' > t8/sub/run.sh && chmod 0755 t8/sub/run.sh

# Mixed: unicode names, names that sort differently as bytes and as text, empty files and directories,
# executables, symlinks (relative, absolute, dangling, to a directory), sizes around the 8-byte padding.
mkdir -p mixed/emptydir mixed/dir.d mixed/Zed mixed/zed mixed/ünïcödé/日本語 mixed/-dash mixed/.hidden
printf 'x' > mixed/one-byte
printf '12345678' > mixed/eight-bytes
printf '123456789' > mixed/nine-bytes
: > mixed/empty
printf 'data\n' > "mixed/ünïcödé/日本語/ファイル.txt"
printf 'emoji 🎉\n' > "mixed/ünïcödé/😀"
printf 'private use\n' > "mixed/ünïcödé/$(printf '\xee\x80\x80')"   # U+E000: sorts before the emoji as bytes, after it as UTF-16
printf 'a' > mixed/A && printf 'b' > mixed/a && printf 'c' > mixed/B && printf 'd' > mixed/_
printf '#!/bin/sh\n' > mixed/Zed/exec && chmod 0700 mixed/Zed/exec
printf 'not exec for owner\n' > mixed/zed/group-exec && chmod 0654 mixed/zed/group-exec
ln -s ../one-byte mixed/dir.d/rel-link
ln -s /etc/passwd mixed/dir.d/abs-link
ln -s does-not-exist mixed/dir.d/dangling
ln -s ../emptydir mixed/dir.d/dir-link
printf 'hidden\n' > mixed/.hidden/.file
printf 'with space\n' > "mixed/name with spaces"
printf 'quote\n' > "mixed/quote\"and'apostrophe"
printf 'newline\n' > "mixed/new
line"

# Deep nesting: 40 levels (below Nix's 64-level limit).
deep=deep
for i in $(seq 1 40); do deep="$deep/d$i"; done
mkdir -p "$deep" && printf 'bottom\n' > "$deep/leaf"

# Many small files and a few larger ones whose sizes straddle buffer boundaries.
mkdir -p sizes
for i in $(seq 0 63); do head -c "$i" /dev/zero | tr '\0' 'a' > "sizes/f$(printf %02d "$i")"; done
awk 'BEGIN { for (i = 0; i < 70000; i++) printf "%c", 32 + (i * 7) % 95 }' > sizes/big-70000
awk 'BEGIN { for (i = 0; i < 300001; i++) printf "%c", 48 + (i * 13) % 75 }' > sizes/bigger-300001
chmod 0755 sizes/bigger-300001

# A name that is not valid UTF-8 (Latin-1 "café"): file systems hold bytes, and so do NARs.
mkdir -p latin1
printf 'bytes\n' > "latin1/$(printf 'caf\xe9')"
printf 'x' > latin1/plain

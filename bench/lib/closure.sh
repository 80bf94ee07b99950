# Sourced by bench scripts: make_closure WORK CHAIN SIZE_MIB builds the benchmark closure in the client store
# local?root=WORK/source — a chain of CHAIN derivations, each with an incompressible file (SIZE_MIB in all) and a tree
# of 250 small files (0-800 bytes) — and sets top (the last .drv), count (paths) and bytes (NAR bytes) of its closure.
make_closure() {
  local work="$1" chain="$2" size_mib="$3"
  echo "making the closure: $chain derivations, $chain incompressible files, $chain trees of small files..."
  mkdir -p "$work/src"
  python3 - "$work/src" "$chain" "$((size_mib * 1024 / chain))" <<'PY'
import os, random, sys
src, chain, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(1, chain + 1):
    with open(f"{src}/big{i}", "wb") as f: f.write(os.urandom(kib * 1024))
    for d in "ab": os.makedirs(f"{src}/tree{i}/{d}", exist_ok=True)
    for j in range(1, 251):
        with open(f"{src}/tree{i}/{'a' if j % 2 == 0 else 'b'}/f{j}", "wb") as f: f.write(os.urandom(random.randrange(800)))
PY
  cat > "$work/closure.nix" <<NIX
let
  step = i: prev: derivation {
    name = "bench-\${toString i}";
    system = "x86_64-linux";
    builder = "/bin/sh";
    inherit prev;
    big = builtins.path { path = $work/src + "/big\${toString i}"; };
    tree = builtins.path { path = $work/src + "/tree\${toString i}"; };
  };
  go = i: prev: if i > $chain then prev else go (i + 1) (step i prev);
in go 1 ""
NIX
  top="$(nix-instantiate --store "local?root=$work/source" "$work/closure.nix" 2>/dev/null)"
  nix path-info --derivation --store "local?root=$work/source" -r "$top" > "$work/closure.paths"
  count="$(wc -l < "$work/closure.paths")"
  bytes="$(nix path-info --derivation --store "local?root=$work/source" -r --json "$top" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(p["narSize"] for p in (d if isinstance(d,list) else d.values())))')"
}

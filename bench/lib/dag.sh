# The benches' synthetic DAG. Source it; then `write_dag DIR LAYERS WIDTH` writes DIR/dag.nix: LAYERS layers of WIDTH
# derivations, each depending on 3 of the layer before, whose small outputs name (and so refer to) their inputs; the
# builder is a static busybox (DIR/bb) added to the store from the client.
write_dag() {
  local dir="$1" layers="$2" width="$3"
  mkdir -p "$dir/bb/bin"
  cp /bin/busybox "$dir/bb/bin/busybox" && ln -sf busybox "$dir/bb/bin/sh"
  cat > "$dir/dag.nix" <<NIX
let
  bb = ./bb;
  mk = l: i: deps: derivation {
    name = "dag-\${toString l}-\${toString i}";
    system = "x86_64-linux";
    builder = "\${bb}/bin/sh";
    inherit deps;
    args = [ "-c" "echo building layer \${toString l} item \${toString i}; \${bb}/bin/busybox mkdir \$out; echo \${toString l}-\${toString i} > \$out/id; for d in \$deps; do echo \$d >> \$out/deps; done" ];
  };
  pick = l: i: k: builtins.elemAt (builtins.elemAt layers (l - 1)) ((i + k * 7) - ((i + k * 7) / $width) * $width);
  layers = builtins.genList (l: builtins.genList (i: mk l i (if l == 0 then [] else map (pick l i) [ 0 1 2 ])) $width) $layers;
in builtins.elemAt layers ($layers - 1)
NIX
}

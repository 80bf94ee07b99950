# Derivations instantiated by generate.sh with the real nix-instantiate (Nix 2.8.0). Nothing here is built:
# the builders need not exist. Each attribute exercises a part of the .drv format or of hashDerivationModulo.
let
  system = "x86_64-linux";
  sh = "/bin/sh";

  simple = derivation {
    name = "simple";
    inherit system;
    builder = sh;
    args = [ "-c" "echo \"hi\\there\" > $out" ];
  };

  fodFlat = derivation {
    name = "fod-flat";
    inherit system;
    builder = sh;
    args = [ "-c" "echo hello > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
  };

  fodRecursive = derivation {
    name = "fod-recursive";
    inherit system;
    builder = sh;
    args = [ "-c" "mkdir $out" ];
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = "sha256-pQpattmS9VmO3ZIQUFn66az8GSmB4IvYhTTCFn6SUmo=";
  };

  fodSha1 = derivation {
    name = "fod-sha1";
    inherit system;
    builder = sh;
    args = [ "-c" "echo hello > $out" ];
    outputHashAlgo = "sha1";
    outputHash = "f572d396fae9206628714fb2ce00f72e94f2258f";
  };

  fodSha512Nar = derivation {
    name = "fod-sha512-nar";
    inherit system;
    builder = sh;
    args = [ "-c" "true" ];
    outputHashMode = "recursive";
    outputHash = "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==";
  };

  multi = derivation {
    name = "multi";
    inherit system;
    builder = sh;
    outputs = [ "out" "dev" "lib" "doc" ];
    args = [ "-c" "cat ${fodFlat} ${simple} > $out; touch $dev $lib $doc" ];
  };

  # Depends on a fixed-output drv, a multi-output drv (two of its outputs), sources and a toFile text path.
  dependent = derivation {
    name = "dependent";
    inherit system;
    builder = sh;
    src = ./src/hello.txt;
    tree = ./src/tree;
    script = builtins.toFile "script.sh" "cat ${./src/hello.txt}\n";
    args = [ "-c" "cat ${fodFlat} ${multi.dev} ${multi.lib} ${fodRecursive} > $out" ];
  };

  # Depends on the dependent one: hashes propagate through two levels.
  second = derivation {
    name = "second-level";
    inherit system;
    builder = "${dependent}/bin/tool";
    args = [ "${multi}" ];
  };

  passAsFile = derivation {
    name = "pass-as-file";
    inherit system;
    builder = sh;
    big = "a long value\nwith lines\n";
    other = "x";
    passAsFile = [ "big" "other" ];
    args = [ "-c" "cat $bigPath > $out" ];
  };

  structured = derivation {
    name = "structured";
    inherit system;
    builder = sh;
    __structuredAttrs = true;
    outputs = [ "out" "bin" ];
    list = [ 1 2 "three" { four = 4; } ];
    nested = { a.b.c = true; s = "quote \" backslash \\ tab \t"; };
    outputChecks.out.allowedReferences = [ ];
    args = [ "-c" "true" ];
  };

  escapes = derivation {
    name = "escapes";
    inherit system;
    builder = sh;
    quotes = "\"double\" 'single'";
    backslashes = "a\\b\\\\c\\n";
    whitespace = "tab\there\nnewline\r\ncrlf";
    unicode = "ünïcödé 日本語 😀 ";
    control = "no octal escapes in nix: \0 \x";
    dollar = "\${not interpolated} $out";
    empty = "";
    args = [ "-c" "printf '%s\\n' \"$quotes\"" "" "with space" ];
  };

  references = derivation {
    name = "references";
    inherit system;
    builder = sh;
    allowedReferences = [ ];
    disallowedReferences = [ simple ];
    allowedRequisites = [ simple ];
    exportReferencesGraph = [ "graph" simple ];
    impureEnvVars = [ "http_proxy" ];
    preferLocalBuild = true;
    args = [ "-c" "true" ];
  };

  # Output name ordering and a name with every allowed punctuation character.
  names = derivation {
    name = "a+b-c.d_e?f=g";
    inherit system;
    builder = sh;
    outputs = [ "zzz" "out" "aaa" "B" ];
    args = [ ];
  };
in
{
  inherit simple fodFlat fodRecursive fodSha1 fodSha512Nar multi dependent second passAsFile structured escapes references names;
}

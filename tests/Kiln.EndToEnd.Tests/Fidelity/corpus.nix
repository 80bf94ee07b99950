# Deterministic derivations built both by stock Nix 2.8 (sandbox = true) and by Kiln; the fidelity tests compare
# their outcomes (success or failure class) and, on success, every output's NAR hash and references.
# `bb` is a directory with a static busybox (bin/busybox, bin/sh -> busybox); `fetchBase` is a local HTTP server
# serving greeting.txt, whose flat SHA-256 is `fetchFlat` and whose directory holding only it hashes (recursively) to
# `fetchRecursive`.
{ bb, fetchBase ? "http://127.0.0.1:9", fetchFlat ? "", fetchRecursive ? "" }:
let
  sh = "${bb}/bin/sh";
  mk = name: script: attrs: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = sh;
    PATH = "${bb}/bin";
    args = [ "-c" script ];
  } // attrs);
  dep = mk "dep" "mkdir $out; echo dependency > $out/data" { };
  fetchurlWith = hash: derivation {
    name = "greeting.txt";
    system = "builtin";
    builder = "builtin:fetchurl";
    url = "${fetchBase}/greeting.txt";
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = hash;
  };
in {
  single = mk "single" "echo hi > $out" { };

  multi = mk "multi" ''
    mkdir $out $dev $doc
    echo $dev > $out/dev-ref
    echo $out > $out/self-ref
    echo $doc > $dev/doc-ref
    echo docs > $doc/readme
  '' { outputs = [ "out" "dev" "doc" ]; };

  multi-cycle = mk "multi-cycle" "mkdir $out $dev; echo $dev > $out/dev-ref; echo $out > $dev/out-ref" { outputs = [ "out" "dev" ]; };

  uses-dep = mk "uses-dep" "mkdir $out; cat ${dep}/data > $out/copy; echo ${dep} > $out/ref" { };

  pass-as-file = mk "pass-as-file" "cat $bigPath > $out; echo $bigPath >> $out" {
    passAsFile = [ "big" ];
    big = "a value passed as a file\nwith two lines";
  };

  structured = mk "structured" ''
    mkdir $out
    cat $NIX_BUILD_TOP/.attrs.json > $out/attrs.json
    cat $NIX_BUILD_TOP/.attrs.sh > $out/attrs.sh
  '' {
    __structuredAttrs = true;
    outputs = [ "out" ];
    aString = "it's \"quoted\"";
    aList = [ "a" 1 true ];
    anAttrset = { x = "y"; n = 3; };
    aNumber = 42;
  };

  graph = mk "graph" "cat refs > $out" {
    exportReferencesGraph = [ "refs" (mk "graph-input" "mkdir $out; echo ${dep} > $out/ref" { }) ];
  };

  modes = mk "modes" ''
    mkdir -p $out/sub
    echo x > $out/group-writable; chmod 0775 $out/group-writable
    echo y > $out/private; chmod 0600 $out/private
    echo z > $out/exec-only-owner; chmod 0700 $out/exec-only-owner
    ln -s group-writable $out/link
    chmod 0700 $out/sub
  '' { };

  # Nix's syscall filter refuses setuid and setgid modes (EPERM) but not the sticky bit; the log records what the
  # builder was allowed, so the NAR hashes differ if Kiln's sandbox allows more or less.
  setuid = mk "setuid" ''
    mkdir $out $out/dir
    echo x > $out/file
    for m in 4755 2755 6755 1755 0755; do
      chmod $m $out/file 2> /dev/null && echo "chmod $m ok" || echo "chmod $m refused"
    done > $out/log
    chmod g+s $out/dir 2> /dev/null && echo "dir g+s ok" >> $out/log || echo "dir g+s refused" >> $out/log
    chmod 4700 $out/dir 2> /dev/null && echo "dir 4700 ok" >> $out/log || echo "dir 4700 refused" >> $out/log
    stat -c '%a' $out/file $out/dir >> $out/log
  '' { };

  fixed-flat = mk "fixed-flat" "printf hello > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  };

  fixed-recursive = mk "fixed-recursive" "mkdir $out; printf hello > $out/greeting" {
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = "sha256-9VLMdp10BoYVr4jTwmoeA/pyMyeD5Fuqt2AhdPpT2ZU=";
  };

  fixed-wrong = mk "fixed-wrong" "printf goodbye > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  };

  # Nix's built-in fetcher (no sandbox process at all), right and wrong.
  fetchurl = fetchurlWith fetchFlat;
  fetchurl-wrong = fetchurlWith "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

  # A fixed-output derivation fetching with its own tools: it has the network, the others do not.
  fetch-shell = mk "fetch-shell" "mkdir $out; wget -q -O $out/greeting.txt ${fetchBase}/greeting.txt" {
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = fetchRecursive;
  };
  fetch-no-network = mk "fetch-no-network" "mkdir $out; wget -q -O $out/greeting.txt ${fetchBase}/greeting.txt" { };

  # Built with max-silent-time = 2 and timeout = 2 respectively.
  silent = mk "silent" "sleep 30; echo done > $out" { };
  slow = mk "slow" "while true; do echo still going; sleep 1; done" { };

  refs-allowed = mk "refs-allowed" "mkdir $out; echo ${dep} > $out/ref" { allowedReferences = [ dep ]; };

  refs-refused = mk "refs-refused" "mkdir $out; echo ${dep} > $out/ref" { allowedReferences = [ ]; };

  refs-disallowed = mk "refs-disallowed" "mkdir $out; echo ${dep} > $out/ref" { disallowedRequisites = [ dep ]; };

  fails = mk "fails" "echo about to fail; exit 3" { };

  # Built with max-build-log-size 1000: killed once the log passes it.
  loud = mk "loud" "i=0; while [ $i -lt 200 ]; do echo line $i of a builder that talks too much; i=$((i + 1)); done; mkdir $out" { };

  no-output = mk "no-output" "echo forgot to write the output" { };

  probe = mk "probe" ''
    {
      echo "== env"; env | sort | grep -v '^_=' | grep -v '^SHLVL=' | grep -v '^OLDPWD='
      echo "== id"; id
      echo "== hostname"; hostname
      echo "== pwd"; pwd
      echo "== tty"; [ -t 1 ] && echo stdout is a terminal; [ -t 0 ] || echo stdin is not a terminal
      echo "== etc"; for f in /etc/passwd /etc/group /etc/hosts; do echo "-- $f"; cat $f; done
      echo "== network"; sed 1,2d /proc/net/dev | cut -d: -f1 | tr -d ' '
      echo "== store"; ls /nix/store | sed 's/^[a-z0-9]*-//' | sort
      echo "== build"; ls -a /build | sort; stat -c '%a %u %g' /build
      echo "== inputs"; stat -c '%n %a %u %g' /nix/store; stat -c '%n %a %u %g %Y' $dep $dep/*
      touch $dep/new 2> /dev/null && echo wrote into an input || echo cannot write into an input
      chmod u+w $dep 2> /dev/null && echo changed an input || echo cannot change an input
      rm -rf $dep 2> /dev/null && echo removed an input || echo cannot remove an input
      for d in / /etc /nix /nix/store /tmp /build; do touch $d/kiln-probe 2> /dev/null && echo "can write $d" || echo "cannot write $d"; done
      echo "== tmp"; stat -c '%a' /tmp
      echo "== shm"; stat -f -c '%T' /dev/shm; stat -c '%a' /dev/shm; touch /dev/shm/probe && echo can write /dev/shm
      # Every node of /dev (but kvm, which Nix gives only where the host offers the kvm feature and Kiln does not).
      echo "== dev"; stat -c '%n %a %u %g' /dev /dev/pts; stat -f -c '%T' /dev/pts
      for f in /dev/* /dev/pts/*; do
        if [ "$f" = /dev/kvm ]; then :; elif [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else stat -c '%n %F %a %u %g %t,%T' "$f"; fi
      done
      # Open descriptors and how (the terminal's number depends on what else is running).
      echo "== fds"; ls -l /proc/self/fd | sed 1d | awk '{ print $1, $9, $10, $11 }' | sed -e 's/pipe:.*/pipe/' -e 's,/dev/pts/[0-9]*,/dev/pts/N,' | sort -n -k2
      echo "== pid"; echo $$
    } > $out
  '' { inherit dep; };
}

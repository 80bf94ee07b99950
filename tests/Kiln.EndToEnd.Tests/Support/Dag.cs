using System.Globalization;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// Test derivations that build with a static busybox from the store (no nixpkgs here): a DAG of
/// <c>depth</c> layers of <c>width</c> derivations, each depending on 3 of the layer before, whose small outputs
/// name their inputs (so they refer to them).
/// </summary>
public static class Dag
{
    /// <summary>Copies the host's static busybox into the workspace as <c>bb/bin/{busybox,sh}</c>.</summary>
    public static void WriteBusybox(NixClient client, string workspace)
    {
        var bin = client.HostPath($"{workspace}/bb/bin");
        if (File.Exists(Path.Combine(bin, "busybox")))
        {
            return;
        }

        Directory.CreateDirectory(bin);
        File.Copy("/bin/busybox", Path.Combine(bin, "busybox"));
        File.CreateSymbolicLink(Path.Combine(bin, "sh"), "busybox");
    }

    /// <summary>
    /// Writes <c>NAME.nix</c>, evaluating to the last layer; layers from <paramref name="saltFrom"/> on carry
    /// <paramref name="salt"/>, so two DAGs with different salts share exactly the layers below it.
    /// </summary>
    public static string Write(NixClient client, string workspace, string name, int depth = 10, int width = 20, string salt = "", int saltFrom = 0)
    {
        WriteBusybox(client, workspace);
        var text = $$"""
            let
              bb = ./bb;
              mk = l: i: deps: derivation {
                name = "dag-${toString l}-${toString i}";
                system = "x86_64-linux";
                builder = "${bb}/bin/sh";
                salt = if l >= {{saltFrom}} then "{{salt}}" else "";
                inherit deps;
                args = [ "-c" "echo building layer ${toString l} item ${toString i}; ${bb}/bin/busybox mkdir $out; echo ${toString l}-${toString i} > $out/id; for d in $deps; do echo $d >> $out/deps; done" ];
              };
              pick = l: i: k: builtins.elemAt (builtins.elemAt layers (l - 1)) ((i + k * 7) - ((i + k * 7) / {{width}}) * {{width}});
              layers = builtins.genList (l: builtins.genList (i: mk l i (if l == 0 then [] else map (pick l i) [ 0 1 2 ])) {{width}}) {{depth}};
            in builtins.elemAt layers ({{depth}} - 1)
            """;
        File.WriteAllText(client.HostPath($"{workspace}/{name}.nix"), text);
        return $"{workspace}/{name}.nix";
    }

    /// <summary>Writes <c>NAME.nix</c>: one derivation running <paramref name="script"/> with busybox's sh.</summary>
    public static string WriteSingle(NixClient client, string workspace, string name, string script)
    {
        WriteBusybox(client, workspace);
        var text = $$"""
            let bb = ./bb; in derivation {
              name = "{{name}}";
              system = "x86_64-linux";
              builder = "${bb}/bin/sh";
              PATH = "${bb}/bin";
              args = [ "-c" ''{{script}}'' ];
            }
            """;
        File.WriteAllText(client.HostPath($"{workspace}/{name}.nix"), text);
        return $"{workspace}/{name}.nix";
    }

    public static string Count(int n) => n.ToString(CultureInfo.InvariantCulture);
}

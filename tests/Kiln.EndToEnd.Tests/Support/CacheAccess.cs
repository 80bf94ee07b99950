namespace Kiln.EndToEnd.Tests.Support;

/// <summary>What tests of the HTTP cache share: a token Nix sends from a netrc file, and a small closure to push.</summary>
internal static class CacheAccess
{
    /// <summary>
    /// Creates a token for <paramref name="account"/> (which exists), writes it as <c>WORKSPACE/ACCOUNT.netrc</c>, and
    /// returns it with the options that make Nix send it.
    /// </summary>
    public static (string Token, string[] Options) Netrc(NixClient client, KilnProcess kiln, string workspace, string account, string permissions = "store:read,store:write")
    {
        var token = kiln.Cli("token", "create", account, "--permissions", permissions).Split('\n')[0];
        File.WriteAllText(client.HostPath($"{workspace}/{account}.netrc"), $"machine 127.0.0.1\nlogin {account}\npassword {token}\n");
        return (token, ["--option", "netrc-file", $"{workspace}/{account}.netrc"]);
    }

    /// <summary>A new two-path closure (b refers to a) in the client store <c>local?root=WORKSPACE/source</c>: that store, and b.</summary>
    public static (string Store, string Top) SmallClosure(NixClient client, KilnProcess kiln, string workspace)
    {
        var source = $"local?root={workspace}/source";
        var top = client.Ok(kiln, "nix-instantiate", "--store", source, "--read-write-mode", "--eval", "-E",
            $"builtins.toFile \"b\" \"${{builtins.toFile \"a\" \"{Guid.NewGuid():N}\"}}\"").StdoutText.Trim().Trim('"');
        return (source, top);
    }
}

using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>Package names as Nix's DrvName splits a name: the version starts at the first dash not followed by a letter.</summary>
public class PackageNameTests
{
    [Theory]
    [InlineData("hello-2.12", "hello")]
    [InlineData("hello", "hello")]
    [InlineData("firefox-bin-120.0.1", "firefox-bin")]
    [InlineData("python3.11-requests-2.31.0", "python3.11-requests")]
    [InlineData("linux-6.1.55-modules", "linux")]
    [InlineData("nix-2.34.8-man", "nix")]
    [InlineData("foo-", "foo-")]
    [InlineData("0ad-0.0.26", "0ad")]
    [InlineData("x-_y", "x")]
    [InlineData("ir8y0hhj6wm2xx3hm47ggk7jrc28h7sf-hello-2.12.drv", "hello")]
    [InlineData("/nix/store/ir8y0hhj6wm2xx3hm47ggk7jrc28h7sf-dag-3-12.drv", "dag")]
    public void The_name_ends_where_the_version_begins(string name, string package) => Assert.Equal(package, PackageNames.Of(name));
}

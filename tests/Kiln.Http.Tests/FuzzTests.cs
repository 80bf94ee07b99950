using System.Text;
using Kiln.Nix.Tests.Support;

namespace Kiln.Http.Tests;

/// <summary>
/// 20.4: the HTTP cache's path parsing, fed mutations of every kind of path it answers: each gets a 4xx or an
/// answer, never a 500 (an exception inside Kiln) and never a hang.
/// </summary>
public class FuzzTests : CacheFixture
{
    [Fact]
    public async Task Paths()
    {
        var hash = new string('a', 32);
        var nar = new string('0', 52);
        var seeds = new[]
        {
            "/nix-cache-info", $"/{hash}.narinfo", $"/nar/{nar}.nar", $"/nar/{nar}.nar.xz", $"/nar/{nar}.nar.zst",
            $"/log/{hash}-hello.drv", $"/log/{hash}", $"/{hash}.ls", "/", "/nar/", "/%2e%2e/kiln.db",
        }.Select(Encoding.UTF8.GetBytes);
        var corpus = Fuzzer.Corpus("http-path", seeds);
        await Fuzzer.RunAsync("http-path", corpus, async input =>
        {
            var path = "/" + Encoding.UTF8.GetString(input).TrimStart('/');
            try
            {
                _ = Microsoft.AspNetCore.Http.PathString.FromUriComponent(path);
            }
            catch (InvalidOperationException)
            {
                return; // a path that decodes to NUL: Kestrel answers 400 before Kiln sees it
            }
            var (status, body) = await GetAsync(path);
            Assert.True(status < 500, $"GET {path}: {status} {body}");
        }, _ => false, Fuzzer.Iterations(10000));
    }
}

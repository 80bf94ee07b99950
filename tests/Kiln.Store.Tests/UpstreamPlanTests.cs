using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Kiln.Store.Upstream;

namespace Kiln.Store.Tests;

public class UpstreamPlanTests
{
    private static readonly string Key = "cache.example-1:" + Convert.ToBase64String(new byte[32]);

    [Fact]
    public void The_accounts_caches_replace_the_default_its_keys_add_to_it_and_netrc_gives_credentials()
    {
        var options = new StoreOptions { DataDirectory = "/tmp/unused", DefaultSubstituters = ["https://default.example"], DefaultTrustedPublicKeys = [Key] };
        var warnings = new List<string>();
        var own = UpstreamPlan.Resolve(new UpstreamSettings("https://a.example/ http://b.example/sub ssh://nope", "other-1:" + Convert.ToBase64String(new byte[32]) + " broken",
            "machine b.example login u password p\ndefault login d password q"), options, warnings.Add);
        Assert.Equal(["https://a.example/", "http://b.example/sub/"], own.Caches.Select(c => c.Url.ToString()));
        Assert.Equal(("d", "q"), (own.Caches[0].Credentials!.UserName, own.Caches[0].Credentials!.Password));
        Assert.Equal(("u", "p"), (own.Caches[1].Credentials!.UserName, own.Caches[1].Credentials!.Password));
        Assert.Equal(["cache.example-1", "other-1"], own.TrustedKeys.Select(k => k.Name));
        Assert.Equal(2, warnings.Count); // ssh:// and the broken key

        var fallback = UpstreamPlan.Resolve(new UpstreamSettings("", "", ""), options, warnings.Add);
        Assert.Equal(["https://default.example/"], fallback.Caches.Select(c => c.Url.ToString()));
        Assert.True(fallback.Caches[0].IsPublic);
    }

    [Theory]
    [InlineData("90d", 90 * 24)]
    [InlineData("12h", 12)]
    [InlineData("2w", 14 * 24)]
    public void Token_expiry_durations_count_from_now(string text, int hours)
    {
        var now = DateTimeOffset.Parse("2026-11-21T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(now.AddHours(hours), AccessToken.ParseExpiry(text, now));
    }

    [Fact]
    public void Token_expiry_dates_never_and_bad_input()
    {
        var now = DateTimeOffset.Parse("2026-11-21T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Null(AccessToken.ParseExpiry("never", now));
        Assert.Equal(DateTimeOffset.Parse("2027-01-31T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture), AccessToken.ParseExpiry("2027-01-31", now));
        Assert.Throws<ArgumentException>(() => AccessToken.ParseExpiry("2020-01-01", now));
        Assert.Throws<ArgumentException>(() => AccessToken.ParseExpiry("soon", now));
        Assert.Throws<ArgumentException>(() => AccessToken.ParseExpiry("5x", now));
        var token = AccessToken.Generate();
        Assert.True(AccessToken.LooksValid(token));
        Assert.False(AccessToken.LooksValid(token.ToUpperInvariant()));
        Assert.NotEqual(AccessToken.Hash(token), AccessToken.Hash(AccessToken.Generate()));
    }
}

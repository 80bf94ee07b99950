using Kiln.Store.Accounts;

namespace Kiln.Store.Tests;

public class AccessTokenTests
{
    [Fact]
    public void Tokens_are_fresh_random_and_of_their_shape()
    {
        var tokens = Enumerable.Range(0, 100).Select(_ => AccessToken.Generate()).ToList();
        Assert.All(tokens, t => Assert.True(AccessToken.LooksValid(t), t));
        Assert.Equal(100, tokens.Distinct().Count());
        var agent = AgentToken.Generate();
        Assert.True(AgentToken.LooksValid(agent), agent);
        Assert.NotEqual(AgentToken.Hash(agent), AgentToken.Hash(AgentToken.Generate()));
    }

    [Fact]
    public void A_lock_another_user_holds_on_dev_urandom_does_not_stop_tokens()
    {
        // The attack: any local user may flock /dev/urandom (it is world-readable). A token made by opening it through
        // .NET (which takes a lock on every file it opens) would then fail. This process's own exclusive lock stands in
        // for the other user's: flock locks belong to the open file, so a second open here meets it the same way.
        using var held = new FileStream("/dev/urandom", FileMode.Open, FileAccess.Read, FileShare.None);
        Assert.True(AccessToken.LooksValid(AccessToken.Generate()));
        Assert.True(AgentToken.LooksValid(AgentToken.Generate()));
    }
}

using Kiln.EndToEnd.Tests.Support;
using OpenQA.Selenium;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The web dashboard in a real browser (headless chromium): a user logs in with a token, watches a build stock Nix
/// started over SSH appear in the queue and its log grow (colours rendered), opens the history, usage and account
/// pages; another account's login sees none of it; an operator's token sees the farm. Every page passes axe's WCAG 2
/// A/AA checks and fits a phone's width; screenshots of each go to artifacts/screenshots/.
/// </summary>
public sealed class DashboardTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Fact]
    public async Task A_user_follows_a_running_build_live_and_another_account_sees_none_of_it()
    {
        NixClient.RequireEndToEnd();
        Browser.Require();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true, http: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        kiln.Cli("account", "create", "bob");
        var aliceToken = kiln.Cli("token", "create", "alice", "--permissions", "store:read,build:read,build:write,account:write", "--description", "dashboard").Split('\n')[0];
        var bobToken = kiln.Cli("token", "create", "bob", "--permissions", "build:read,account:write").Split('\n')[0];
        var operatorToken = kiln.Cli("token", "create", "alice", "--permissions", "build:read,server:read").Split('\n')[0];
        var salt = Guid.NewGuid().ToString("N");
        var cancel = TestContext.Current.CancellationToken;
        var ui = kiln.HttpUrl + "/ui";

        // One build that failed already, for the history.
        Assert.NotEqual(0, client.Run(kiln, [.. alice.Environment, "nix-build", "--store", Store,
            Dag.WriteSingle(client, workspace, "dash-fails", $"echo {salt}; echo the tests failed; exit 1"), "--no-out-link"]).ExitCode);

        using var browser = new Browser();
        browser.Go(kiln.HttpUrl + "/");
        browser.Wait(d => d.Url.EndsWith("/ui/login", StringComparison.Ordinal), "the login page");
        CheckPage(browser, "login");
        browser.Find("#token").SendKeys("kiln_not-a-token");
        browser.Find("form button[type=submit]").Click();
        Assert.Contains("not valid", browser.Wait(d => d.FindElement(By.CssSelector("#login-error")), "the login error").Text, StringComparison.Ordinal);
        LogIn(browser, aliceToken);
        // The cookie holding the token is out of the page's scripts' reach.
        Assert.DoesNotContain("kiln_", (string)browser.Script("return document.cookie;")!, StringComparison.Ordinal);

        // A build that prints a coloured line, then a tick every 0.4 s: it appears in the queue, and its page's log grows.
        var ticking = Dag.WriteSingle(client, workspace, "dash-ticks",
            $"echo {salt}; printf '\\033[31mred alert\\033[0m plain\\n'; for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30; do echo tick $i; sleep 0.4; done; mkdir $out");
        var run = Task.Run(() => client.Run(kiln, [.. alice.Environment, "nix-build", "--store", Store, ticking, "--no-out-link"]), cancel);
        browser.Wait(d => d.FindElements(By.CssSelector("#queue-table a")).Any(a => a.Text == "dash-ticks"), "the running build in the queue");
        Assert.Contains("running", browser.Find("#queue-table").Text, StringComparison.Ordinal);
        CheckPage(browser, "queue");
        // The queue redraws its table every 2 s, so a link found earlier may be gone: find it and click it in one step.
        browser.Wait(d =>
        {
            var link = d.FindElements(By.CssSelector("#queue-table a")).FirstOrDefault(a => a.Text == "dash-ticks");
            link?.Click();
            return link is not null;
        }, "a click on the running build");
        browser.Wait(d => LastTick(d.FindElement(By.Id("log")).Text) > 0, "the log's first ticks");
        var firstTick = LastTick(browser.Find("#log").Text);
        // (12 s of ticks: a loaded CI machine has taken 5 s from the build's start to the page's first lines.)
        Assert.True(firstTick < 24, $"the build page showed its log only at tick {firstTick}");
        var linesEarly = browser.FindAll("#log .l").Count;
        browser.Wait(d => LastTick(d.FindElement(By.Id("log")).Text) >= firstTick + 2, "more ticks");
        Assert.True(browser.FindAll("#log .l").Count > linesEarly, "the log did not grow while the build ran");
        Assert.Equal("running", browser.Find("#build-status").Text);
        Assert.Equal("red alert", browser.Find("#log span.f1").Text);
        CheckPage(browser, "build-running");
        browser.Wait(d => d.FindElement(By.Id("build-status")).Text == "built", "the build's end", seconds: 90);
        Assert.Equal(0, (await run).ExitCode);
        var log = browser.Find("#log").Text;
        Assert.True(log.IndexOf("tick 29", StringComparison.Ordinal) < log.IndexOf("tick 30", StringComparison.Ordinal), "lines out of order");
        var buildPath = new Uri(browser.Driver.Url).AbsolutePath;

        // History, with its filters.
        browser.Go(ui + "/builds");
        Assert.Equal(2, browser.FindAll("#builds-table tbody tr").Count);
        CheckPage(browser, "builds");
        browser.Find("#f-status option[value=failed]").Click();
        browser.Find(".filters button[type=submit]").Click();
        browser.Wait(d => d.Url.Contains("status=failed", StringComparison.Ordinal), "the filtered history");
        Assert.Equal("dash-fails", Assert.Single(browser.FindAll("#builds-table tbody tr a")).Text);
        browser.Go(ui + "/builds?name=TICK");
        Assert.Equal("dash-ticks", Assert.Single(browser.FindAll("#builds-table tbody tr a")).Text);

        // Usage: this month's builds in the chart and the table.
        browser.Go(ui + "/usage");
        Assert.NotEmpty(browser.FindAll("#cpu-chart rect.bar"));
        // Storage over time: today's bar is the account's storage now (its built output).
        var today = DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Contains(today, (string)browser.Script("return document.querySelector('#storage-chart svg > title').textContent;")!, StringComparison.Ordinal);
        Assert.Contains("2", browser.Find("#usage-table tbody").Text, StringComparison.Ordinal);
        CheckPage(browser, "usage");
        // The same report from the operator's CLI and the account's shell.
        var report = kiln.Cli("usage", "alice", "--since", today);
        Assert.Contains("total: 2 builds started (1 succeeded)", report, StringComparison.Ordinal);
        Assert.Matches($@"\n{today}\s+2\s+1\s", report);
        // (The server counts bytes moved in memory and writes them every 5 s: the CLI, another process, reads what is
        // written, the shell what the server knows, so the two agree once the server has written.)
        var shell = SshTests.Shell(kiln, alice, null, "kiln", "usage", "--since", today).StdoutText.Trim();
        for (var deadline = DateTime.UtcNow.AddSeconds(20); shell != report.Trim() && DateTime.UtcNow < deadline;)
        {
            await Task.Delay(500, TestContext.Current.CancellationToken);
            report = kiln.Cli("usage", "alice", "--since", today);
            shell = SshTests.Shell(kiln, alice, null, "kiln", "usage", "--since", today).StdoutText.Trim();
        }

        Assert.Equal(report.Trim(), shell);

        // Account: tokens listed, and a new one made through the API with the session's CSRF token.
        browser.Go(ui + "/account");
        Assert.Contains("dashboard", browser.Find("#tokens-table").Text, StringComparison.Ordinal);
        browser.Find("#t-description").SendKeys("made in the browser");
        browser.Find("#new-token button[type=submit]").Click();
        Assert.StartsWith("kiln_", browser.Wait(d => d.FindElement(By.CssSelector("#new-token-result code")), "the new token").Text, StringComparison.Ordinal);
        Assert.Contains("made in the browser", kiln.Cli("token", "list", "alice"), StringComparison.Ordinal);
        CheckPage(browser, "account");
        Assert.Empty(browser.FindAll("nav a[href='/ui/farm']")); // not an operator's token

        // A phone-sized screen: the pages fit its width (tables scroll inside their box).
        browser.Resize(390, 844);
        foreach (var page in new[] { "/queue", "/builds", buildPath.Replace("/ui", "", StringComparison.Ordinal), "/usage", "/account" })
        {
            browser.Go(ui + page);
            var overflow = (long)browser.Script("return document.documentElement.scrollWidth - window.innerWidth;")!;
            Assert.True(overflow <= 1, $"{page} is {overflow} px wider than a phone's screen");
        }

        browser.Go(ui + "/queue");
        browser.Screenshot("dashboard-queue-phone");
        browser.Go(ui + buildPath.Replace("/ui", "", StringComparison.Ordinal));
        browser.Screenshot("dashboard-build-phone");
        browser.Resize(1280, 900);

        // Bob's login: none of Alice's builds, and her build's page does not exist for him.
        LogOut(browser);
        LogIn(browser, bobToken);
        browser.Wait(d => d.FindElement(By.Id("queue-summary")).Text.Contains("in line", StringComparison.Ordinal), "Bob's queue");
        Assert.Empty(browser.FindAll("#queue-table tbody tr"));
        Assert.Empty(browser.FindAll("#recent-table tbody tr"));
        browser.Go(ui + "/builds");
        Assert.Empty(browser.FindAll("#builds-table tbody tr"));
        browser.Go(kiln.HttpUrl + buildPath);
        Assert.Equal("Not found", browser.Find("h1").Text);
        Assert.DoesNotContain("dash-ticks", browser.Find("body").Text, StringComparison.Ordinal);
        browser.Go(ui + "/farm");
        Assert.Equal("Not found", browser.Find("h1").Text);

        // An operator's token (server:read) sees the farm: the embedded agent and its slots.
        LogOut(browser);
        LogIn(browser, operatorToken);
        browser.Find("nav a[href='/ui/farm']").Click();
        browser.Wait(d => d.FindElements(By.CssSelector("#agents-table tbody tr")).Count > 0, "the farm's agents");
        Assert.Contains("agent", browser.Find("#agents-table tbody").Text, StringComparison.Ordinal);
        Assert.Contains("Slots busy", browser.Find("#farm-cards").Text, StringComparison.Ordinal);
        CheckPage(browser, "farm");
    }

    [Fact]
    public async Task A_50_MB_log_opens_without_freezing_the_browser_and_shows_its_end()
    {
        NixClient.RequireEndToEnd();
        Browser.Require();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true, http: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var token = kiln.Cli("token", "create", "alice", "--permissions", "build:read").Split('\n')[0];
        var cancel = TestContext.Current.CancellationToken;

        // 700,000 numbered lines of about 75 bytes: a 50 MB log.
        var chatty = Dag.WriteSingle(client, workspace, "dash-chatty",
            $"echo {Guid.NewGuid():N}; seq 1 700000 | sed 's/$/ of a long build log, padded out with words to be about seventy-five bytes/'; echo the very last line; mkdir $out");
        client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, chatty, "--no-out-link", "--quiet"]);
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };
        var id = (await ApiTests.GetJsonAsync(http, "/api/v1/builds?limit=1", token, cancel)).GetProperty("builds")[0].GetProperty("id").GetInt64();
        var bytes = (await ApiTests.GetStringAsync(http, $"/api/v1/builds/{id}/log", token, cancel)).Length;
        Assert.True(bytes > 50_000_000, $"the log has {bytes} bytes");

        using var browser = new Browser();
        browser.Go(kiln.HttpUrl + "/ui/login");
        LogIn(browser, token);
        browser.Go($"{kiln.HttpUrl}/ui/builds/{id}");
        // While the log streams in, the page keeps answering (a frozen main thread would not run this script).
        browser.Wait(d => d.FindElement(By.Id("log-state")).Text.Contains("lines", StringComparison.Ordinal), "the log starting to arrive");
        Assert.Equal("complete", (string)browser.Script("return document.readyState;")!);
        browser.Wait(d => d.FindElement(By.Id("log-state")).Text.Contains("The build ended: built", StringComparison.Ordinal), "the whole 50 MB log", seconds: 300);
        Assert.Contains("700,002 lines", browser.Find("#log-state").Text, StringComparison.Ordinal);
        // The page holds the end of the log, not all of it, and says where the rest is.
        Assert.True(browser.FindAll("#log .l").Count <= 5000, $"{browser.FindAll("#log .l").Count} lines in the page");
        Assert.Equal("the very last line", (string)browser.Script("return document.getElementById('log').lastElementChild.textContent;")!);
        Assert.Contains("are not shown here", browser.Find("#log-hidden").Text, StringComparison.Ordinal);
        browser.Screenshot("dashboard-build-50mb-log");
    }

    // The last "tick N" in the log shown (0: none yet).
    private static int LastTick(string log) =>
        log.Split('\n').Select(l => l.StartsWith("tick ", StringComparison.Ordinal) && int.TryParse(l[5..], out var n) ? n : 0).DefaultIfEmpty(0).Max();

    internal static void LogIn(Browser browser, string token)
    {
        browser.Find("#token").Clear();
        browser.Find("#token").SendKeys(token);
        browser.Find("form button[type=submit]").Click();
        browser.Wait(d => d.Url.EndsWith("/ui/queue", StringComparison.Ordinal), "the queue after logging in");
    }

    private static void LogOut(Browser browser)
    {
        browser.Find("form.logout button").Click();
        browser.Wait(d => d.Url.EndsWith("/ui/login", StringComparison.Ordinal), "the login page after logging out");
    }

    // Every page: a screenshot, and no WCAG 2 A/AA violation axe can find.
    private static void CheckPage(Browser browser, string name)
    {
        browser.Screenshot("dashboard-" + name);
        var violations = browser.Accessibility();
        Assert.True(violations.Count == 0, $"{name}: " + string.Join("\n", violations));
    }
}

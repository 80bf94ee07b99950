using System.Reflection;
using System.Text.Json;
using Kiln.Nix.Tests.Support;
using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using OpenQA.Selenium.Support.UI;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A real, headless browser: Debian's chromium driven through its chromedriver (Selenium), with its own profile in a
/// temporary directory. Screenshots go to <c>artifacts/screenshots/</c> for anyone to look at; <see cref="Accessibility"/>
/// runs axe-core's WCAG 2 A/AA rules (contrast, labels, names) on the page shown.
/// </summary>
public sealed class Browser : IDisposable
{
    private const string Chromium = "/usr/bin/chromium";
    private const string DriverPath = "/usr/bin/chromedriver";

    private readonly TempDir _profile = new();
    private readonly ChromeDriverService _service;

    public Browser()
    {
        _service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(DriverPath)!, Path.GetFileName(DriverPath));
        _service.HideCommandPromptWindow = true;
        _service.SuppressInitialDiagnosticInformation = true;
        var options = new ChromeOptions { BinaryLocation = Chromium };
        options.AddArguments("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
            "--no-first-run", "--disable-extensions", "--user-data-dir=" + _profile.Path);
        Driver = new ChromeDriver(_service, options, TimeSpan.FromSeconds(60));
    }

    public IWebDriver Driver { get; }

    /// <summary>Whether this machine has the browser (CI installs it; elsewhere the dashboard tests are skipped).</summary>
    public static void Require()
    {
        if (!File.Exists(Chromium) || !File.Exists(DriverPath))
        {
            if (Environment.GetEnvironmentVariable("KILN_REQUIRE_E2E") == "1")
            {
                throw new InvalidOperationException($"KILN_REQUIRE_E2E=1 but {Chromium} or {DriverPath} is missing (apt-get install chromium chromium-driver)");
            }

            Assert.Skip("chromium and chromium-driver are not installed");
        }
    }

    public void Go(string url) => Driver.Navigate().GoToUrl(url);

    public IWebElement Find(string css) => Driver.FindElement(By.CssSelector(css));

    public IReadOnlyList<IWebElement> FindAll(string css) => Driver.FindElements(By.CssSelector(css));

    /// <summary>Waits until <paramref name="condition"/> holds (the page updates itself), failing with <paramref name="what"/>.</summary>
    public T Wait<T>(Func<IWebDriver, T> condition, string what, int seconds = 60)
    {
        var wait = new WebDriverWait(Driver, TimeSpan.FromSeconds(seconds)) { PollingInterval = TimeSpan.FromMilliseconds(100) };
        wait.IgnoreExceptionTypes(typeof(NoSuchElementException), typeof(StaleElementReferenceException));
        try
        {
            return wait.Until(condition);
        }
        catch (WebDriverTimeoutException)
        {
            throw new Xunit.Sdk.XunitException($"timed out waiting for {what}; the page at {Driver.Url} shows:\n{Driver.FindElement(By.TagName("body")).Text}");
        }
    }

    public object? Script(string script, params object[] arguments) => ((IJavaScriptExecutor)Driver).ExecuteScript(script, arguments);

    /// <summary>Saves what the browser shows as artifacts/screenshots/NAME.png (the whole page's height).</summary>
    public string Screenshot(string name)
    {
        var directory = Path.Combine(Repo.Root, "artifacts", "screenshots");
        Directory.CreateDirectory(directory);
        var file = Path.Combine(directory, name + ".png");
        ((ITakesScreenshot)Driver).GetScreenshot().SaveAsFile(file);
        return file;
    }

    public void Resize(int width, int height) => Driver.Manage().Window.Size = new System.Drawing.Size(width, height);

    /// <summary>axe-core's WCAG 2 A and AA violations on the page shown, one line each (empty: none).</summary>
    public IReadOnlyList<string> Accessibility()
    {
        Script(AxeSource.Value);
        var result = (string?)((IJavaScriptExecutor)Driver).ExecuteAsyncScript("""
            const done = arguments[arguments.length - 1];
            axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa"] } })
              .then(r => done(JSON.stringify(r.violations.map(v => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map(n => n.target.join(" ")).join("; ")}`))))
              .catch(e => done(JSON.stringify(["axe failed: " + e])));
            """);
        return JsonSerializer.Deserialize<string[]>(result ?? "[]") ?? [];
    }

    // axe-core as the Deque.AxeCore.Commons package carries it.
    private static readonly Lazy<string> AxeSource = new(() =>
    {
        using var stream = Assembly.Load("Deque.AxeCore.Commons").GetManifestResourceStream("Deque.AxeCore.Commons.Resources.axe.min.js")
            ?? throw new InvalidOperationException("axe.min.js is not in Deque.AxeCore.Commons");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    });

    public void Dispose()
    {
        try
        {
            Driver.Quit();
        }
        finally
        {
            Driver.Dispose();
            _service.Dispose();
            _profile.Dispose();
        }
    }
}

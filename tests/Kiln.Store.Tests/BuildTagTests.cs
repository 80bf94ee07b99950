using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

public sealed class BuildTagTests
{
    [Fact]
    public void Tags_come_from_KILN_TAG_variables_with_names_lower_cased_and_bad_ones_left_out()
    {
        var environment = new Dictionary<string, string>
        {
            ["KILN_TAG_CI_RUN"] = "123",
            ["KILN_TAG_Branch"] = "main",
            ["KILN_TAG_"] = "no name",
            ["KILN_TAG_BAD!"] = "x",
            ["KILN_TAG_CONTROL"] = "a\nb",
            ["KILN_TAG_LONG"] = new string('v', BuildTag.MaxLength + 1),
            ["KILN_MAX_CPU"] = "8",
        };
        Assert.Equal([new("branch", "main"), new("ci-run", "123")], BuildTag.FromEnvironment(environment));
        var many = Enumerable.Range(0, 40).ToDictionary(i => $"KILN_TAG_T{i:00}", i => "v");
        Assert.Equal(BuildTag.MaxTags, BuildTag.FromEnvironment(many).Count);
    }

    [Fact]
    public void A_tag_parses_as_name_equals_value()
    {
        Assert.Equal(new BuildTag("ci-run", "1=2"), BuildTag.Parse("ci-run=1=2"));
        Assert.Equal(new BuildTag("x", ""), BuildTag.Parse("x="));
        foreach (var bad in new[] { "", "=1", "novalue", "sp ace=1", "x=a\tb" })
        {
            Assert.Throws<FormatException>(() => BuildTag.Parse(bad));
        }
    }
}

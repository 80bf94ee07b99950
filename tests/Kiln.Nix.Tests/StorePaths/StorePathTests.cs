using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Tests.StorePaths;

public class StorePathTests
{
    private const string Hash = "i9pmrzmpshapij2kin22pff6fc2adavx";

    [Theory]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", "hello.txt")]
    [InlineData("/nix/store/vqm00w9nlspmnalbdqji73r67w91yi7r-a+b-c.d_e?f=g.drv", "a+b-c.d_e?f=g.drv")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-.hidden", ".hidden")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-...", "...")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx--", "-")]
    public void Parses_valid_paths(string path, string name)
    {
        var storePath = StorePath.Parse(path);
        Assert.Equal(name, storePath.Name);
        Assert.Equal(path, storePath.FullPath);
        Assert.Equal(path[11..43], storePath.HashPart);
    }

    [Theory]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt/")]
    [InlineData("/nix//store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")]
    [InlineData("/nix/store/./i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")]
    [InlineData("/nix/var/../store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")]
    public void Canonicalises_like_nix_parse_store_path(string path) =>
        Assert.Equal("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", StorePath.Parse(path).FullPath);

    [Fact]
    public void Accepts_names_of_exactly_211_characters_and_not_212()
    {
        Assert.True(StorePath.TryParse($"/nix/store/{Hash}-{new string('a', 211)}", out _));
        Assert.False(StorePath.TryParse($"/nix/store/{Hash}-{new string('a', 212)}", out _, out var error));
        Assert.Contains("no longer than 211", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx", "too short")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-", "must not be empty")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavxhello", "not followed by a '-'")]
    [InlineData("/nix/store/e9pmrzmpshapij2kin22pff6fc2adavx-x", "illegal base-32 character 'e'")]
    [InlineData("/nix/store/I9pmrzmpshapij2kin22pff6fc2adavx-x", "illegal base-32 character 'I'")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-a b", "illegal character ' '")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-ü", "illegal character")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-.", "is not valid")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-..", "is not valid")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-.-x", "must not be '.'")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-..-x", "must not be '..'")]
    [InlineData("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-x/y", "inside one")]
    [InlineData("/nix/store2/i9pmrzmpshapij2kin22pff6fc2adavx-x", "not in the Nix store")]
    [InlineData("/nix/store", "not in the Nix store")]
    [InlineData("i9pmrzmpshapij2kin22pff6fc2adavx-x", "not in the Nix store")]
    [InlineData("", "not in the Nix store")]
    public void Refuses_invalid_paths_with_nix_reasons(string path, string reason)
    {
        var error = Assert.Throws<BadStorePathException>(() => StorePath.Parse(path));
        Assert.Contains(reason, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Orders_by_base_name_bytewise()
    {
        var paths = new[]
        {
            StorePath.Parse("/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-a"),
            StorePath.Parse("/nix/store/00000000000000000000000000000000-b"),
            StorePath.Parse("/nix/store/00000000000000000000000000000000-B"),
        };
        Assert.Equal(["00000000000000000000000000000000-B", "00000000000000000000000000000000-b", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-a"],
            paths.Order().Select(p => p.BaseName));
    }

    // T5–T8 of docs/nix-protocols.md, produced by nix-store --add / --add-fixed (Nix 2.8).
    [Fact]
    public void Computes_source_and_fixed_paths()
    {
        var hello = "hello\n"u8;
        var narHash = NixHash.ParseAnyPrefixed("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw");
        Assert.Equal("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt",
            StorePathComputer.MakeFixedOutputPath("hello.txt", ContentAddressMethod.Recursive, narHash).FullPath);
        Assert.Equal("/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt",
            StorePathComputer.MakeFixedOutputPath("hello.txt", ContentAddressMethod.Flat, NixHash.Compute(NixHashAlgorithm.Sha256, hello)).FullPath);
        Assert.Equal("/nix/store/svdva85yi507g9vncgsaxvnd1r808h4w-hello.txt",
            StorePathComputer.MakeFixedOutputPath("hello.txt", ContentAddressMethod.Flat, NixHash.Compute(NixHashAlgorithm.Sha1, hello)).FullPath);
        Assert.Equal("/nix/store/l5z6nq5vqxlzf7xrgs4irdigsz8s3i4i-dir",
            StorePathComputer.MakeFixedOutputPath("dir", ContentAddressMethod.Recursive,
                NixHash.ParseAnyPrefixed("sha256:1z6lc24y87d2fvdvij404yddclby8qbcmybm61w8ckrxb86617mb")).FullPath);
    }

    [Fact]
    public void Computes_text_paths_with_references_as_nix_did_for_builtins_toFile()
    {
        // Golden/drv/sources.txt: builtins.toFile "script.sh" "cat ${./src/hello.txt}\n".
        var contents = "cat /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\n";
        var path = StorePathComputer.MakeTextPath("script.sh", NixHash.Compute(NixHashAlgorithm.Sha256, contents),
            [StorePath.Parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")]);
        Assert.Equal("/nix/store/bzj23iw9rh8fbiagnrf8q351npvrdlbi-script.sh", path.FullPath);
    }

    [Fact]
    public void Fixed_outputs_other_than_nar_sha256_cannot_have_references()
    {
        var hash = NixHash.Compute(NixHashAlgorithm.Sha256, "x"u8);
        var reference = StorePath.Parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");
        Assert.Throws<NixFormatException>(() => StorePathComputer.MakeFixedOutputPath("x", ContentAddressMethod.Flat, hash, [reference]));
        var withSelf = StorePathComputer.MakeFixedOutputPath("x", ContentAddressMethod.Recursive, hash, [reference], self: true);
        var withoutSelf = StorePathComputer.MakeFixedOutputPath("x", ContentAddressMethod.Recursive, hash, [reference]);
        Assert.NotEqual(withSelf, withoutSelf);
    }

    [Theory]
    [InlineData("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", ContentAddressMethod.Recursive)]
    [InlineData("fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq", ContentAddressMethod.Flat)]
    [InlineData("text:sha256:1ywdwazv0wg67s0di9qh729bca24bbbw29dinn6s9gnz7qd33ns4", ContentAddressMethod.Text)]
    [InlineData("fixed:git:sha1:vw46m23bizj4n8afrc0fj19wrp7mj3c0", ContentAddressMethod.Git)]
    public void Content_addresses_round_trip(string text, ContentAddressMethod method)
    {
        var ca = ContentAddress.Parse(text);
        Assert.Equal(method, ca.Method);
        Assert.Equal(text, ca.ToString());
    }

    [Theory]
    [InlineData("text:sha256", ContentAddressMethod.Text, NixHashAlgorithm.Sha256)]
    [InlineData("fixed:r:sha256", ContentAddressMethod.Recursive, NixHashAlgorithm.Sha256)]
    [InlineData("fixed:sha1", ContentAddressMethod.Flat, NixHashAlgorithm.Sha1)]
    [InlineData("fixed:git:sha1", ContentAddressMethod.Git, NixHashAlgorithm.Sha1)]
    public void Cam_strings_parse(string text, ContentAddressMethod method, NixHashAlgorithm algorithm)
    {
        var parsed = ContentAddressMethodAndAlgorithm.ParseCamString(text);
        Assert.Equal(new ContentAddressMethodAndAlgorithm(method, algorithm), parsed);
        Assert.Equal(text, parsed.ToCamString());
    }

    [Theory]
    [InlineData("r:sha256")]
    [InlineData("sha256")]
    [InlineData("sha256:abc")]
    [InlineData("fixed:r:blake3:abc")]
    [InlineData("text:sha1:vw46m23bizj4n8afrc0fj19wrp7mj3c0")]
    public void Malformed_content_addresses_are_refused(string text) =>
        Assert.ThrowsAny<NixFormatException>(() => ContentAddress.Parse(text));
}

using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Signing;

/// <summary>narinfo files written by nix copy --to file:// and signed by nix store sign (Nix 2.8) with test-key-1.</summary>
public class NarInfoTests
{
    public static TheoryData<string> GoldenNarInfos() =>
        new(Directory.GetFiles(Repo.Golden("narinfo"), "*.narinfo").Select(Path.GetFileName).Order()!);

    private static string Read(string file) => File.ReadAllText(Repo.Golden("narinfo", file));

    private static SecretKey TestKey() => SecretKey.Parse(Read("test-key-1.secret"));

    [Fact]
    public void Key_from_a_known_seed_matches_nix()
    {
        // T12 of docs/nix-protocols.md: seed 0x00..0x1f.
        var seed = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var key = SecretKey.FromSeed("test-key-1", seed);
        Assert.Equal(Read("test-key-1.secret"), key.ToString());
        Assert.Equal(Read("test-key-1.public").Trim(), key.PublicKey.ToString());
        Assert.Equal(Read("test-key-1.public").Trim(), TestKey().PublicKey.ToString());
    }

    [Theory]
    [MemberData(nameof(GoldenNarInfos))]
    public void Prints_back_exactly_what_nix_wrote(string file)
    {
        var text = Read(file);
        Assert.Equal(text, NarInfo.Parse(text).ToString());
    }

    [Theory]
    [MemberData(nameof(GoldenNarInfos))]
    public void Signs_exactly_as_nix_store_sign(string file)
    {
        var info = NarInfo.Parse(Read(file));
        var nixSignature = Assert.Single(info.Signatures);
        var unsigned = new NarInfo
        {
            StorePath = info.StorePath,
            Url = info.Url,
            Compression = info.Compression,
            FileHash = info.FileHash,
            FileSize = info.FileSize,
            NarHash = info.NarHash,
            NarSize = info.NarSize,
            References = info.References,
            Deriver = info.Deriver,
            ContentAddress = info.ContentAddress,
        };
        Assert.Equal(nixSignature, Assert.Single(unsigned.WithSignature(TestKey()).Signatures));
        Assert.True(info.IsSignedByAny([TestKey().PublicKey]));
    }

    [Theory]
    [MemberData(nameof(GoldenNarInfos))]
    public void Describes_the_nar_beside_it(string file)
    {
        var info = NarInfo.Parse(Read(file));
        var nar = File.ReadAllBytes(Repo.Golden("narinfo", Path.GetFileName(info.Url)));
        Assert.Equal(info.NarSize, nar.Length);
        Assert.Equal(info.NarHash, NixHash.Compute(NixHashAlgorithm.Sha256, nar));
        Assert.Equal(info.ContentAddress!.Value.Method == ContentAddressMethod.Recursive, info.ContentAddress.Value.Hash == info.NarHash);
    }

    [Fact]
    public void Fingerprint_is_nix_format_with_full_sorted_reference_paths()
    {
        // T13 of docs/nix-protocols.md.
        var info = NarInfo.Parse(Read("i9pmrzmpshapij2kin22pff6fc2adavx.narinfo"));
        Assert.Equal("1;/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;", info.Fingerprint());
        var script = NarInfo.Parse(Read("bzj23iw9rh8fbiagnrf8q351npvrdlbi.narinfo"));
        Assert.EndsWith(";176;/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", script.Fingerprint(), StringComparison.Ordinal);
    }

    [Fact]
    public void Tampering_breaks_the_signature()
    {
        var info = NarInfo.Parse(Read("i9pmrzmpshapij2kin22pff6fc2adavx.narinfo"));
        var tampered = NarInfo.Parse(Read("i9pmrzmpshapij2kin22pff6fc2adavx.narinfo").Replace("NarSize: 120", "NarSize: 121", StringComparison.Ordinal));
        Assert.True(info.IsSignedByAny([TestKey().PublicKey]));
        Assert.False(tampered.IsSignedByAny([TestKey().PublicKey]));
        Assert.False(info.IsSignedByAny([SecretKey.Generate("test-key-1").PublicKey]));
        Assert.False(info.IsSignedByAny([SecretKey.FromSeed("other-name", new byte[32]).PublicKey]));
    }

    [Fact]
    public void Generated_keys_sign_and_verify()
    {
        var key = SecretKey.Generate("cache.example.org-1");
        var parsed = SecretKey.Parse(key.ToString());
        var signature = parsed.Sign("message");
        Assert.StartsWith("cache.example.org-1:", signature, StringComparison.Ordinal);
        Assert.True(PublicKey.Parse(key.PublicKey.ToString()).Verify("message", signature));
        Assert.False(key.PublicKey.Verify("other message", signature));
        Assert.False(key.PublicKey.Verify("message", "cache.example.org-1:not-base64!"));
        Assert.False(key.PublicKey.Verify("message", "no-colon"));
    }

    [Theory]
    [InlineData("")]
    [InlineData("no-colon")]
    [InlineData(":AAAA")]
    [InlineData("name:")]
    [InlineData("name:!!!")]
    [InlineData("name:AAAA")]
    public void Malformed_keys_are_refused(string text)
    {
        Assert.Throws<BadKeyException>(() => SecretKey.Parse(text));
        Assert.Throws<BadKeyException>(() => PublicKey.Parse(text));
    }

    [Theory]
    [InlineData("evil\nSig")]
    [InlineData("two words")]
    [InlineData("bell\u0007")]
    public void A_key_whose_name_would_break_a_narinfo_line_is_refused(string name)
    {
        // An imported key's name goes into every Sig: line it makes: a line break would forge fields after it.
        var good = SecretKey.Generate("good-1").ToString();
        Assert.Throws<BadKeyException>(() => SecretKey.Parse(name + good[good.IndexOf(':', StringComparison.Ordinal)..]));
        var pub = SecretKey.Generate("good-1").PublicKey.ToString();
        Assert.Throws<BadKeyException>(() => PublicKey.Parse(name + pub[pub.IndexOf(':', StringComparison.Ordinal)..]));
        Assert.Throws<BadKeyException>(() => SecretKey.Generate(name));
    }

    [Fact]
    public void A_secret_key_whose_public_half_does_not_match_is_refused()
    {
        var bytes = Convert.FromBase64String(Read("test-key-1.secret").Split(':')[1]);
        bytes[^1] ^= 1;
        var error = Assert.Throws<BadKeyException>(() => SecretKey.Parse("test-key-1:" + Convert.ToBase64String(bytes)));
        Assert.Contains("public half", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("URL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120\n")]
    [InlineData("StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 0\n")]
    [InlineData("StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar\nNarHash: sha256:nothash\nNarSize: 120\n")]
    [InlineData("StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: -1\n")]
    [InlineData("StorePath: /etc/passwd\nURL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120\n")]
    [InlineData("StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120\nReferences: ../../etc\n")]
    [InlineData("StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120")]
    [InlineData("garbage without colon\n")]
    public void Corrupt_narinfo_is_refused(string text) =>
        Assert.Throws<NarInfoFormatException>(() => NarInfo.Parse(text));

    [Fact]
    public void References_and_ca_lines_follow_nix_rules()
    {
        const string Head = "StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120\n";
        Assert.Null(NarInfo.Parse(Head + "CA: \n").ContentAddress);
        Assert.Throws<NarInfoFormatException>(() => NarInfo.Parse(Head + "CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nCA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n"));
        Assert.Single(NarInfo.Parse(Head + "References: \nReferences: i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\n").References);
        Assert.Throws<NarInfoFormatException>(() => NarInfo.Parse(Head + "References: i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nReferences: \n"));
    }

    [Fact]
    public void Missing_compression_means_bzip2_and_unknown_keys_are_ignored()
    {
        var info = NarInfo.Parse("StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt\nURL: nar/x.nar.bz2\nNarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\nNarSize: 120\nFutureKey: whatever\nDeriver: unknown-deriver\n");
        Assert.Equal("bzip2", info.Compression);
        Assert.Null(info.Deriver);
    }
}

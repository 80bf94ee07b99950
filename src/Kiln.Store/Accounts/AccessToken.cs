using System.Runtime.InteropServices;
using System.Text;
using Kiln.Nix.Hashing;

namespace Kiln.Store.Accounts;

/// <summary>
/// HTTP access tokens: <c>kiln_</c> and 48 hex digits (192 random bits), shown once when created. Kiln keeps only
/// their SHA-256, so a copy of the database gives no usable token.
/// </summary>
public static class AccessToken
{
    public const string Prefix = "kiln_";

    internal static readonly System.Buffers.SearchValues<char> HexDigits = System.Buffers.SearchValues.Create("0123456789abcdef");

    public static string Generate() => Prefix + Convert.ToHexStringLower(KernelRandom(24));

    // The kernel's random bytes, asked for directly (getrandom(2)): .NET's RandomNumberGenerator is OpenSSL's here, and
    // its first use loads libssl and libcrypto (about 4 ms of the native kiln's `token create`). Not /dev/urandom through
    // a FileStream: .NET takes an advisory lock on every file it opens, so any local user holding an exclusive flock on
    // the device would make every token fail; nor a file at all (none in a chroot, and before the kernel's pool is ready
    // at boot getrandom waits where the device would not).
    internal static byte[] KernelRandom(int count)
    {
        var bytes = new byte[count];
        var filled = 0;
        while (filled < count)
        {
            var chunk = new byte[count - filled];
            var got = GetRandom(chunk, (nuint)chunk.Length, 0);
            if (got < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                switch (errno)
                {
                    case Eintr:
                        continue;
                    case Enosys: // a kernel older than 3.17, or a seccomp filter refusing the call
                        System.Security.Cryptography.RandomNumberGenerator.Fill(bytes.AsSpan(filled));
                        return bytes;
                    default:
                        throw new IOException($"the kernel gave no random bytes: {Marshal.GetPInvokeErrorMessage(errno)}");
                }
            }

            chunk.AsSpan(0, (int)got).CopyTo(bytes.AsSpan(filled));
            filled += (int)got;
        }

        return bytes;
    }

    private const int Eintr = 4;
    private const int Enosys = 38;

    [DllImport("libc", EntryPoint = "getrandom", SetLastError = true)]
    private static extern nint GetRandom(byte[] buffer, nuint length, uint flags);

    /// <summary>What is stored and looked up: the SHA-256 of the token, in hex.</summary>
    public static string Hash(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return Convert.ToHexStringLower(ShortSha256.Hash(Encoding.UTF8.GetBytes(token)));
    }

    /// <summary>Whether <paramref name="text"/> has a token's shape (anything else is refused without a lookup).</summary>
    public static bool LooksValid(string text) =>
        text.Length == Prefix.Length + 48 && text.StartsWith(Prefix, StringComparison.Ordinal) && text.AsSpan(Prefix.Length).ContainsAnyExcept(HexDigits) is false;

    /// <summary>
    /// Parses an expiry: a duration from <paramref name="now"/> (<c>90d</c>, <c>12h</c>, <c>30m</c>, <c>2w</c>, <c>1y</c>), a
    /// date or time (<c>2027-01-31</c>, ISO 8601), or <c>never</c> (null).
    /// </summary>
    /// <exception cref="ArgumentException">It is none of these, or not in the future.</exception>
    public static DateTimeOffset? ParseExpiry(string text, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = text.Trim();
        if (text is "never" or "")
        {
            return null;
        }

        DateTimeOffset at;
        if (text.Length >= 2 && char.IsAsciiLetter(text[^1]) && long.TryParse(text[..^1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var count) && count < 100_000)
        {
            at = text[^1] switch
            {
                'm' => now.AddMinutes(count),
                'h' => now.AddHours(count),
                'd' => now.AddDays(count),
                'w' => now.AddDays(7 * count),
                'y' => now.AddYears((int)count),
                _ => throw new ArgumentException($"unknown unit in expiry '{text}' (use m, h, d, w or y)"),
            };
        }
        else if (!DateTimeOffset.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AssumeUniversal, out at))
        {
            throw new ArgumentException($"cannot read expiry '{text}' (a duration such as 90d, a date such as 2027-01-31, or never)");
        }

        return at > now ? at : throw new ArgumentException($"expiry '{text}' is not in the future");
    }
}

/// <summary>
/// Agent tokens (<c>kiln agent --token</c>): <c>kiln-agent_</c> and 48 hex digits, shown once, stored as SHA-256 like
/// access tokens but in their own table, so no account token is ever an agent's and no agent token opens an account.
/// </summary>
public static class AgentToken
{
    public const string Prefix = "kiln-agent_";

    public static string Generate() => Prefix + Convert.ToHexStringLower(AccessToken.KernelRandom(24));

    public static string Hash(string token) => AccessToken.Hash(token);

    public static bool LooksValid(string text) =>
        text is not null && text.Length == Prefix.Length + 48 && text.StartsWith(Prefix, StringComparison.Ordinal) &&
        text.AsSpan(Prefix.Length).ContainsAnyExcept(AccessToken.HexDigits) is false;
}

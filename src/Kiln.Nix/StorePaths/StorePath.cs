using Kiln.Nix.Hashing;

namespace Kiln.Nix.StorePaths;

/// <summary>
/// A store path, held as its base name <c>&lt;32-char Nix32 hash&gt;-&lt;name&gt;</c> and always under
/// <see cref="StoreDir"/>. Validation follows Nix's <c>src/libstore/path.cc</c>: the hash part is 32
/// Nix32 digits followed by <c>-</c>; the name is 1–211 characters of <c>[A-Za-z0-9+\-._?=]</c> and is
/// not <c>.</c>, <c>..</c>, nor starts with <c>.-</c> or <c>..-</c> (the newest Nix's rule).
/// Ordering is by base name, bytewise, as Nix's <c>std::set&lt;StorePath&gt;</c> orders them.
/// </summary>
public readonly record struct StorePath : IComparable<StorePath>
{
    /// <summary>The store directory; Kiln serves only the standard one.</summary>
    public const string StoreDir = "/nix/store";

    /// <summary>Length of the hash part in characters (160 bits in Nix32).</summary>
    public const int HashLength = 32;

    /// <summary>The longest name Nix accepts.</summary>
    public const int MaxNameLength = 211;

    private StorePath(string baseName) => BaseName = baseName;

    /// <summary><c>hash-name</c>, without the store directory.</summary>
    public string BaseName { get; }

    /// <summary>The 32-character Nix32 hash part.</summary>
    public string HashPart => BaseName[..HashLength];

    /// <summary>The name after the hash part and dash.</summary>
    public string Name => BaseName[(HashLength + 1)..];

    /// <summary>Whether the name ends in <c>.drv</c>.</summary>
    public bool IsDerivation => BaseName.EndsWith(".drv", StringComparison.Ordinal);

    /// <summary>The full path, <c>/nix/store/hash-name</c>.</summary>
    public string FullPath => $"{StoreDir}/{BaseName}";

    /// <summary>The full path.</summary>
    public override string ToString() => FullPath;

    /// <summary>Builds a store path from a 20-byte hash and a name.</summary>
    public static StorePath FromHash(ReadOnlySpan<byte> hash20, string name)
    {
        if (hash20.Length != 20)
        {
            throw new ArgumentException("a store path hash is 20 bytes", nameof(hash20));
        }

        ValidateName(name, name);
        return new StorePath($"{Nix32.Encode(hash20)}-{name}");
    }

    /// <summary>Parses a base name <c>hash-name</c>.</summary>
    /// <exception cref="BadStorePathException">It is not a valid store path base name.</exception>
    public static StorePath FromBaseName(string baseName)
    {
        ArgumentNullException.ThrowIfNull(baseName);
        if (TryValidateBaseName(baseName, out var error))
        {
            return new StorePath(baseName);
        }

        throw new BadStorePathException(error!);
    }

    /// <summary>Parses a full path <c>/nix/store/hash-name</c>.</summary>
    /// <exception cref="BadStorePathException">It is not a store path.</exception>
    public static StorePath Parse(string path)
    {
        if (TryParse(path, out var storePath, out var error))
        {
            return storePath;
        }

        throw new BadStorePathException(error!);
    }

    /// <summary>Parses a full path; false with a reason when it is not a valid store path.</summary>
    public static bool TryParse(string? path, out StorePath storePath) => TryParse(path, out storePath, out _);

    /// <summary>
    /// Parses a full path; false with a reason when it is not a valid store path. Like Nix's <c>parseStorePath</c>,
    /// the path is first made canonical (repeated and trailing slashes, <c>.</c> and <c>..</c> removed lexically).
    /// </summary>
    public static bool TryParse(string? path, out StorePath storePath, out string? error)
    {
        storePath = default;
        if (path is not null && (path.Contains("//", StringComparison.Ordinal) || path.Contains("/.", StringComparison.Ordinal) || path.EndsWith('/')))
        {
            path = Canonicalise(path);
        }

        if (path is null || !path.StartsWith(StoreDir + "/", StringComparison.Ordinal))
        {
            error = $"path '{path}' is not in the Nix store";
            return false;
        }

        var baseName = path[(StoreDir.Length + 1)..];
        if (baseName.Contains('/', StringComparison.Ordinal))
        {
            error = $"path '{path}' is not a store path (it is inside one)";
            return false;
        }

        if (!TryValidateBaseName(baseName, out error))
        {
            return false;
        }

        storePath = new StorePath(baseName);
        return true;
    }

    /// <summary>Whether <paramref name="baseName"/> is a valid <c>hash-name</c>.</summary>
    public static bool IsValidBaseName(string baseName) => TryValidateBaseName(baseName, out _);

    /// <summary>Whether <paramref name="text"/> is a store path's hash part: 32 nix32 digits.</summary>
    public static bool IsHashPart(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return text.Length == HashLength && text.All(Nix32.IsDigit);
    }

    // Nix's canonPath without symlink resolution.
    private static string Canonicalise(string path)
    {
        if (!path.StartsWith('/'))
        {
            return path;
        }

        var parts = new List<string>();
        foreach (var part in path.Split('/'))
        {
            if (part is "" or ".")
            {
                continue;
            }

            if (part == "..")
            {
                if (parts.Count > 0)
                {
                    parts.RemoveAt(parts.Count - 1);
                }

                continue;
            }

            parts.Add(part);
        }

        return "/" + string.Join('/', parts);
    }

    private static bool TryValidateBaseName(string baseName, out string? error)
    {
        if (baseName.Length < HashLength + 1)
        {
            error = $"'{baseName}' is too short to be a valid store path";
            return false;
        }

        if (baseName[HashLength] != '-')
        {
            error = $"'{baseName}' can't name a store path because the hash part is not followed by a '-'";
            return false;
        }

        for (var i = 0; i < HashLength; i++)
        {
            if (!Nix32.IsDigit(baseName[i]))
            {
                error = $"store path '{baseName}' contains illegal base-32 character '{baseName[i]}'";
                return false;
            }
        }

        error = CheckName(baseName.AsSpan(HashLength + 1));
        if (error is not null)
        {
            error = $"path '{baseName}' is not a valid store path: {error}";
            return false;
        }

        return true;
    }

    /// <summary>Checks a store path name; throws <see cref="BadStorePathException"/> naming <paramref name="context"/> if invalid.</summary>
    public static void ValidateName(string name, string context)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (CheckName(name) is { } error)
        {
            throw new BadStorePathException(context == name ? error : $"'{context}': {error}");
        }
    }

    /// <summary>Whether <paramref name="name"/> is a valid store path name.</summary>
    public static bool IsValidName(ReadOnlySpan<char> name) => CheckName(name) is null;

    // Returns null when valid, else Nix's message for the first problem.
    private static string? CheckName(ReadOnlySpan<char> name)
    {
        if (name.IsEmpty)
        {
            return "name must not be empty";
        }

        if (name.Length > MaxNameLength)
        {
            return $"name '{name}' must be no longer than {MaxNameLength} characters";
        }

        if (name[0] == '.')
        {
            if (name.Length == 1 || (name[1] == '.' && name.Length == 2))
            {
                return $"name '{name}' is not valid";
            }

            if (name[1] == '-' || (name[1] == '.' && name[2] == '-'))
            {
                return $"name '{name}' is not valid: first dash-separated component must not be '{(name[1] == '-' ? "." : "..")}'";
            }
        }

        foreach (var c in name)
        {
            if (!IsNameChar(c))
            {
                return $"name '{name}' contains illegal character '{c}'";
            }
        }

        return null;
    }

    private static bool IsNameChar(char c) =>
        char.IsAsciiLetterOrDigit(c) || c is '+' or '-' or '.' or '_' or '?' or '=';

    public int CompareTo(StorePath other) => string.CompareOrdinal(BaseName, other.BaseName);

    public static bool operator <(StorePath left, StorePath right) => left.CompareTo(right) < 0;

    public static bool operator >(StorePath left, StorePath right) => left.CompareTo(right) > 0;

    public static bool operator <=(StorePath left, StorePath right) => left.CompareTo(right) <= 0;

    public static bool operator >=(StorePath left, StorePath right) => left.CompareTo(right) >= 0;
}

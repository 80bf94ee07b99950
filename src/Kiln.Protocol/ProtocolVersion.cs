namespace Kiln.Protocol;

/// <summary>
/// A protocol version <c>major.minor</c>, sent on the wire as <c>(major &lt;&lt; 8) | minor</c>. Worker 1.21 is Nix 2.3,
/// 1.34 Nix 2.8–2.14, 1.35 Nix 2.15–2.19 and Lix, 1.37 Nix 2.20–2.23, 1.38 Nix 2.24 and later; serve 2.5 is Nix 2.3,
/// 2.7 Nix 2.4 onwards.
/// </summary>
public readonly record struct ProtocolVersion(int Major, int Minor) : IComparable<ProtocolVersion>
{
    public static ProtocolVersion FromWire(ulong value) => new((int)((value >> 8) & 0xff), (int)(value & 0xff));

    public ulong ToWire() => ((ulong)(uint)Major << 8) | (uint)Minor;

    public int CompareTo(ProtocolVersion other) => Major != other.Major ? Major.CompareTo(other.Major) : Minor.CompareTo(other.Minor);

    public static bool operator <(ProtocolVersion a, ProtocolVersion b) => a.CompareTo(b) < 0;

    public static bool operator >(ProtocolVersion a, ProtocolVersion b) => a.CompareTo(b) > 0;

    public static bool operator <=(ProtocolVersion a, ProtocolVersion b) => a.CompareTo(b) <= 0;

    public static bool operator >=(ProtocolVersion a, ProtocolVersion b) => a.CompareTo(b) >= 0;

    public static ProtocolVersion Min(ProtocolVersion a, ProtocolVersion b) => a <= b ? a : b;

    /// <summary>Whether this worker version is at least <c>1.minor</c>.</summary>
    public bool AtLeast(int minor) => Major > 1 || (Major == 1 && Minor >= minor);

    public override string ToString() => $"{Major}.{Minor}";
}

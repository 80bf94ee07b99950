using Kiln.Nix.StorePaths;

namespace Kiln.Agent;

/// <summary>Walks over store paths and their references, and checks the file system the way builds need.</summary>
internal static class StorePathGraph
{
    /// <summary>
    /// <paramref name="start"/> and every path reachable from it through <paramref name="references"/> (null: a path
    /// whose references are not known, which is kept but not followed). Iterative, so long chains cannot overflow.
    /// </summary>
    public static HashSet<StorePath> Closure(StorePath start, Func<StorePath, IEnumerable<StorePath>?> references)
    {
        var closure = new HashSet<StorePath>();
        var pending = new Stack<StorePath>([start]);
        while (pending.TryPop(out var next))
        {
            if (closure.Add(next) && references(next) is { } referenced)
            {
                foreach (var reference in referenced)
                {
                    pending.Push(reference);
                }
            }
        }

        return closure;
    }

    /// <summary>Whether anything is at <paramref name="path"/>, a dangling symlink included.</summary>
    public static bool ExistsNoFollow(string path) => Path.Exists(path) || new FileInfo(path).LinkTarget is not null;
}

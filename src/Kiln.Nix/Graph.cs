namespace Kiln.Nix;

/// <summary>Graph orders over store paths and their references, or derivations and their inputs.</summary>
public static class Graph
{
    /// <summary>
    /// A depth-first order of <paramref name="nodes"/> in which every node comes after the nodes
    /// <paramref name="before"/> names for it (those outside <paramref name="nodes"/> are ignored). Iterative, so
    /// deep reference chains cannot overflow the stack; a cycle is broken where it is first met.
    /// </summary>
    public static List<T> Order<T>(IEnumerable<T> nodes, Func<T, IEnumerable<T>> before, ISet<T> members)
        where T : notnull
    {
        ArgumentNullException.ThrowIfNull(members);
        return Order(nodes, before, members.Contains);
    }

    /// <summary>As above, with membership decided by <paramref name="isMember"/> (asked of each node not yet placed as it is met).</summary>
    public static List<T> Order<T>(IEnumerable<T> nodes, Func<T, IEnumerable<T>> before, Func<T, bool> isMember)
        where T : notnull
    {
        ArgumentNullException.ThrowIfNull(nodes);
        ArgumentNullException.ThrowIfNull(before);
        ArgumentNullException.ThrowIfNull(isMember);
        var order = new List<T>();
        var seen = new HashSet<T>();
        foreach (var root in nodes)
        {
            var stack = new Stack<(T Node, bool Expanded)>();
            stack.Push((root, false));
            while (stack.TryPop(out var item))
            {
                if (item.Expanded)
                {
                    order.Add(item.Node);
                    continue;
                }

                if (!seen.Add(item.Node))
                {
                    continue;
                }

                stack.Push((item.Node, true));
                foreach (var next in before(item.Node))
                {
                    if (!seen.Contains(next) && isMember(next))
                    {
                        stack.Push((next, false));
                    }
                }
            }
        }

        return order;
    }
}

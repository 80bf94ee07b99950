namespace Kiln.Store;

/// <summary>Graph orders the store needs over paths and their references.</summary>
internal static class Graph
{
    /// <summary>
    /// A depth-first order of <paramref name="nodes"/> in which every node comes after the nodes
    /// <paramref name="before"/> names for it (those outside <paramref name="nodes"/> are ignored). Iterative, so
    /// deep reference chains cannot overflow the stack; a cycle is broken where it is first met.
    /// </summary>
    public static List<T> Order<T>(IEnumerable<T> nodes, Func<T, IEnumerable<T>> before, ISet<T> members)
        where T : notnull
    {
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
                    if (members.Contains(next) && !seen.Contains(next))
                    {
                        stack.Push((next, false));
                    }
                }
            }
        }

        return order;
    }
}

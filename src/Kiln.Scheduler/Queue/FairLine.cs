namespace Kiln.Scheduler.Queue;

/// <summary>
/// Jobs waiting for an agent, fair between accounts: first come, first served within an account, and round-robin
/// between accounts — each account with work waiting gets the next free slot in turn, so one account's 5,000-derivation
/// evaluation does not stall another's single build (it waits for at most one job per other account). Round-robin
/// needs no weights to tune and cannot starve anyone; weighted shares can replace the turn order later without
/// changing the queue. Not thread-safe (the queue calls it under its lock).
/// </summary>
internal sealed class FairLine<T>(Func<T, long> accountOf)
    where T : class
{
    private readonly Dictionary<long, LinkedList<T>> _byAccount = [];
    private readonly LinkedList<long> _turns = new(); // accounts with jobs waiting, whose turn is next first
    private readonly Dictionary<T, LinkedListNode<T>> _nodes = new(ReferenceEqualityComparer.Instance);

    public int Count => _nodes.Count;

    /// <summary>Every waiting job, in no particular order.</summary>
    public IEnumerable<T> Items => _nodes.Keys;

    public bool Contains(T item) => _nodes.ContainsKey(item);

    /// <summary>How many of the item's account's jobs wait ahead of it (0 when it is not waiting).</summary>
    public int Ahead(T item)
    {
        var ahead = 0;
        for (var node = _nodes.TryGetValue(item, out var own) ? own.Previous : null; node is not null; node = node.Previous)
        {
            ahead++;
        }

        return ahead;
    }

    public void AddLast(T item)
    {
        var account = accountOf(item);
        if (!_byAccount.TryGetValue(account, out var line))
        {
            _byAccount[account] = line = new LinkedList<T>();
            _turns.AddLast(account);
        }

        _nodes[item] = line.AddLast(item);
    }

    public bool Remove(T item)
    {
        if (!_nodes.Remove(item, out var node))
        {
            return false;
        }

        var line = node.List!;
        line.Remove(node);
        if (line.Count == 0)
        {
            var account = accountOf(item);
            _byAccount.Remove(account);
            _turns.Remove(account);
        }

        return true;
    }

    /// <summary>
    /// The first job <paramref name="wanted"/> accepts, in turn order: the account whose turn it is first, its oldest
    /// job first; that account's turn then passes to the back of the line.
    /// </summary>
    public T? TakeFirst(Func<T, bool> wanted)
    {
        for (var turn = _turns.First; turn is not null; turn = turn.Next)
        {
            for (var node = _byAccount[turn.Value].First; node is not null; node = node.Next)
            {
                if (!wanted(node.Value))
                {
                    continue;
                }

                var item = node.Value;
                var account = turn.Value;
                Remove(item);
                if (_byAccount.ContainsKey(account))
                {
                    _turns.Remove(account);
                    _turns.AddLast(account);
                }

                return item;
            }
        }

        return null;
    }
}

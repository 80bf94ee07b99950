using Kiln.Protocol.Wire;

namespace Kiln.Protocol.Worker;

/// <summary>
/// The daemon's side of the log channel (Nix's <c>TunnelLogger</c>): between <see cref="StartWork"/> and
/// <see cref="StopWork()"/> messages go to the client at once; outside that window they wait until the next operation
/// starts, because the client only reads log messages while it waits for a reply. An operation ends with
/// STDERR_LAST or STDERR_ERROR, in the pre-1.26 form (message, status) or the structured one.
/// </summary>
internal sealed class ClientLogger(WireOutput output, ProtocolVersion version) : IClientLog
{
    private readonly List<string> _pending = [];

    /// <summary>Whether messages can be sent now (an operation is in progress).</summary>
    public bool CanSend { get; private set; }

    public void StartWork()
    {
        CanSend = true;
        foreach (var message in _pending)
        {
            WriteNext(message);
        }

        _pending.Clear();
    }

    public void StopWork()
    {
        CanSend = false;
        output.WriteU64(StderrTag.Last);
    }

    /// <summary>Ends the operation with an error instead of a reply.</summary>
    public void StopWork(string message, int status)
    {
        CanSend = false;
        output.WriteU64(StderrTag.Error);
        if (version.AtLeast(26))
        {
            // Structured error: type, level, (removed) name, message, no position, no traces.
            output.WriteString("Error");
            output.WriteU64(0);
            output.WriteString("Error");
            output.WriteString(message);
            output.WriteU64(0);
            output.WriteU64(0);
        }
        else
        {
            output.WriteString(message);
            output.WriteU64((ulong)status);
        }
    }

    /// <summary>A line for the client's terminal (STDERR_NEXT).</summary>
    public void Log(string message)
    {
        if (CanSend)
        {
            WriteNext(message);
        }
        else
        {
            _pending.Add(message);
        }
    }

    /// <summary>STDERR_START_ACTIVITY; fields are <see cref="long"/> (int) or <see cref="string"/>.</summary>
    public void StartActivity(ulong id, ulong level, ulong type, string text, IReadOnlyList<object> fields, ulong parent)
    {
        output.WriteU64(StderrTag.StartActivity);
        output.WriteU64(id);
        output.WriteU64(level);
        output.WriteU64(type);
        output.WriteString(text);
        WriteFields(fields);
        output.WriteU64(parent);
    }

    public void StopActivity(ulong id)
    {
        output.WriteU64(StderrTag.StopActivity);
        output.WriteU64(id);
    }

    /// <summary>STDERR_RESULT for an activity that was started and not yet stopped.</summary>
    public void Result(ulong id, ulong type, IReadOnlyList<object> fields)
    {
        output.WriteU64(StderrTag.Result);
        output.WriteU64(id);
        output.WriteU64(type);
        WriteFields(fields);
    }

    private void WriteFields(IReadOnlyList<object> fields)
    {
        output.WriteU64((ulong)fields.Count);
        foreach (var field in fields)
        {
            if (field is string text)
            {
                output.WriteU64(1);
                output.WriteString(text);
            }
            else
            {
                output.WriteU64(0);
                output.WriteU64((ulong)Convert.ToInt64(field, System.Globalization.CultureInfo.InvariantCulture));
            }
        }
    }

    private void WriteNext(string message)
    {
        output.WriteU64(StderrTag.Next);
        output.WriteString(message.EndsWith('\n') ? message : message + "\n");
    }
}

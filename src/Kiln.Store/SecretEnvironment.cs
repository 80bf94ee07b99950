using System.Diagnostics;

namespace Kiln.Store;

/// <summary>
/// Environment variables that carry the service's secrets (the database password, S3 credentials). Kiln reads them;
/// the programs it starts that have no use for them (sshd and what sshd runs, ssh-keygen) do not inherit them.
/// </summary>
public static class SecretEnvironment
{
    public static readonly IReadOnlyList<string> Names =
        ["KILN_DATABASE_PASSWORD", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

    public static void RemoveFrom(ProcessStartInfo start)
    {
        ArgumentNullException.ThrowIfNull(start);
        foreach (var name in Names)
        {
            start.Environment.Remove(name);
        }
    }
}

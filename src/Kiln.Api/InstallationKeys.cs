using System.Security.Cryptography;
using Kiln.Store;

namespace Kiln.Api;

/// <summary>
/// Keys of this installation for the API's HMACs (signed log links, the dashboard's CSRF tokens): kept with the server
/// secrets, so every front door on one database uses the same; made on first use.
/// </summary>
internal static class InstallationKeys
{
    public static async Task<byte[]> GetAsync(KilnStore store, string name) =>
        Convert.FromHexString(await store.Settings.GetOrAddServerSecretAsync(name, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)), CancellationToken.None)
            .ConfigureAwait(false));
}

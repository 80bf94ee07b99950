using System.Security.Cryptography;
using System.Text;
using Kiln.Nix;
using Kiln.Nix.Compression;
using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Blobs;

namespace Kiln.Http;

/// <summary>
/// Uploads as Nix's HTTP binary cache store makes them: first a PUT of <c>nar/FILEHASH.nar[.xz…]</c>, then a PUT of
/// the <c>.narinfo</c> that describes it. The NAR waits in a staging directory (per account, so one account cannot
/// complete another's upload) until its narinfo arrives; then it is decompressed and goes through exactly the checks
/// a worker-protocol upload does (NAR hash and size, well-formed NAR, content address, references valid in the
/// view) before anything is registered. A narinfo whose NAR is already in the caller's view (Nix skips uploading a
/// NAR the cache says it has) is registered from the blob.
/// </summary>
internal sealed class NarUploads
{
    private const int MaxNarInfoSize = 1 << 20;

    private readonly BinaryCacheOptions _options;

    // Bytes of uploads being received now, per account (their .part files), beside what is staged already.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<long, long> _receiving = new();

    public NarUploads(BinaryCacheOptions options)
    {
        _options = options;
        // Nothing staged survives a restart: the narinfo that would have completed it can be sent again.
        if (Directory.Exists(options.StagingDirectory))
        {
            Directory.Delete(options.StagingDirectory, recursive: true);
        }

        Directory.CreateDirectory(options.StagingDirectory);
    }

    // The staged (complete) files of one account; a file deleted meanwhile (committed, expired) counts as nothing.
    private static long StagedBytes(string directory)
    {
        long bytes = 0;
        foreach (var file in new DirectoryInfo(directory).EnumerateFiles())
        {
            try
            {
                bytes += file.Name.EndsWith(".part", StringComparison.Ordinal) ? 0 : file.Length;
            }
            catch (FileNotFoundException)
            {
            }
        }

        return bytes;
    }

    private string StagedPath(long account, string file) => Path.Combine(_options.StagingDirectory, account.ToString(System.Globalization.CultureInfo.InvariantCulture), file);

    // nar/<52 Nix32 digits>.nar, optionally with a compression extension Kiln can read.
    internal static bool IsNarFileName(string file)
    {
        var dot = file.IndexOf('.', StringComparison.Ordinal);
        if (dot != Nix32.EncodedLength(32) || !file.AsSpan(0, dot).ToString().All(Nix32.IsDigit))
        {
            return false;
        }

        var extension = file[dot..];
        return extension == ".nar" || Decompression.Methods.Any(m => extension == ".nar" + Decompression.Extension(m));
    }

    public async Task StageAsync(long account, string file, Stream body, CancellationToken cancellationToken)
    {
        if (!IsNarFileName(file))
        {
            throw new KilnException(ErrorKind.Invalid, $"'nar/{file}' is not a NAR file name Kiln takes (nar/<nix32 sha256>.nar[.xz|.zst|.bz2|.br|.gz])");
        }

        RemoveExpired();
        var target = StagedPath(account, file);
        var directory = Path.GetDirectoryName(target)!;
        Directory.CreateDirectory(directory);
        var temp = $"{target}.{Guid.NewGuid():N}.part";
        // One account's NARs waiting for their narinfos are bounded, so it cannot fill the disk with uploads it never
        // completes (each would otherwise stay until it expires). What is staged already is counted again every
        // 16 MiB: an upload that completed meanwhile leaves the receiving count and must be seen in the directory.
        var staged = StagedBytes(directory);
        long total = 0;
        try
        {
            await using (var output = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, useAsync: false))
            {
                var buffer = new byte[1 << 16];
                int n;
                while ((n = await body.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                {
                    total += n;
                    var receiving = _receiving.AddOrUpdate(account, n, (_, bytes) => bytes + n);
                    if (total > _options.MaxUploadSize)
                    {
                        throw new KilnException(ErrorKind.TooLarge, $"the NAR is larger than Kiln takes ({_options.MaxUploadSize} bytes)");
                    }

                    if (total % (16 << 20) < n)
                    {
                        staged = StagedBytes(directory);
                    }

                    if (staged + receiving > _options.MaxStagedPerAccount && _options.MaxStagedPerAccount > 0)
                    {
                        throw new KilnException(ErrorKind.TooLarge,
                            $"this account's uploaded NARs waiting for their narinfo would exceed {_options.MaxStagedPerAccount} bytes: " +
                            $"PUT the narinfos of those uploaded before (each waits {_options.StagingLifetime.TotalMinutes:F0} minutes at most)");
                    }

                    await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                }
            }

            File.Move(temp, target, overwrite: true);
        }
        finally
        {
            _receiving.AddOrUpdate(account, 0, (_, bytes) => bytes - total);
            File.Delete(temp);
        }
    }

    public async Task<StorePath> CommitAsync(StoreView view, string hashPart, Stream body, CancellationToken cancellationToken)
    {
        var narInfo = await ReadNarInfoAsync(body, hashPart, cancellationToken).ConfigureAwait(false);
        if ((await view.QueryValidPathsAsync([narInfo.StorePath], cancellationToken).ConfigureAwait(false)).Contains(narInfo.StorePath))
        {
            return narInfo.StorePath; // already there: as Nix's stores, adding a valid path again changes nothing
        }

        var info = narInfo.ToValidPathInfo();
        var file = narInfo.Url[4..];
        var staged = StagedPath(view.AccountId, file);
        var isBlob = file == $"{narInfo.NarHash.ToNix32()}.nar";
        Stream nar;
        if (File.Exists(staged))
        {
            await CheckFileAsync(staged, file, narInfo, cancellationToken).ConfigureAwait(false);
            nar = Decompression.Open(narInfo.Compression, new FileStream(staged, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16));
        }
        else if (narInfo.Compression == "none" && isBlob
            && await view.OpenNarByHashAsync(narInfo.NarHash, cancellationToken).ConfigureAwait(false) is { } readable)
        {
            // A NAR this account can already read under another path (Nix skips uploading what the cache has).
            nar = new BlobStream(readable, await readable.OpenStreamAsync(cancellationToken).ConfigureAwait(false));
        }
        else
        {
            throw new KilnException(ErrorKind.Conflict, $"'{narInfo.Url}' has not been uploaded (PUT the NAR before its narinfo)");
        }

        await using (nar.ConfigureAwait(false))
        {
            try
            {
                await view.AddToStoreAsync(info, nar, repair: false, checkSignatures: true, cancellationToken).ConfigureAwait(false);
            }
            catch (KilnException e)
            {
                throw new KilnException(e.Kind, $"cannot add '{narInfo.StorePath}': {e.Message}", e);
            }
            catch (NixFormatException e)
            {
                throw new KilnException(ErrorKind.Invalid, $"cannot add '{narInfo.StorePath}': {e.Message}", e);
            }
        }

        // Kept as uploaded when it is not the blob itself: the uploader's narinfo cache names this file.
        if (File.Exists(staged) && !isBlob)
        {
            var kept = new FileStream(staged, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            await using (kept.ConfigureAwait(false))
            {
                await view.KeepNarFileAsync(file, narInfo.NarHash, narInfo.Compression, kept, cancellationToken).ConfigureAwait(false);
            }
        }

        File.Delete(staged);
        return narInfo.StorePath;
    }

    // A blob's stream that also closes the blob source.
    private sealed class BlobStream(BlobSource source, Stream inner) : Kiln.Nix.ReadOnlyStream
    {
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);

        public override async ValueTask DisposeAsync()
        {
            await source.DisposeAsync().ConfigureAwait(false);
            await base.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static async Task<NarInfo> ReadNarInfoAsync(Stream body, string hashPart, CancellationToken cancellationToken)
    {
        var buffer = new MemoryStream();
        var chunk = new byte[16 * 1024];
        int n;
        while ((n = await body.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + n > MaxNarInfoSize)
            {
                throw new KilnException(ErrorKind.TooLarge, "the narinfo is too large");
            }

            buffer.Write(chunk, 0, n);
        }

        NarInfo narInfo;
        try
        {
            narInfo = NarInfo.Parse(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length), $"{hashPart}.narinfo");
        }
        catch (NixFormatException e)
        {
            throw new KilnException(ErrorKind.Invalid, e.Message);
        }

        if (narInfo.StorePath.HashPart != hashPart)
        {
            throw new KilnException(ErrorKind.Invalid, $"'{hashPart}.narinfo' describes '{narInfo.StorePath}'");
        }

        if (!Decompression.IsKnown(narInfo.Compression))
        {
            throw new KilnException(ErrorKind.Invalid, $"Kiln cannot read NARs compressed with '{narInfo.Compression}' (it reads {string.Join(", ", Decompression.Methods)})");
        }

        if (!narInfo.Url.StartsWith("nar/", StringComparison.Ordinal) || !IsNarFileName(narInfo.Url[4..]))
        {
            throw new KilnException(ErrorKind.Invalid, $"the narinfo's URL '{narInfo.Url}' is not a NAR Kiln takes (nar/<nix32 sha256>.nar[.xz…])");
        }

        return narInfo;
    }

    // The staged file is the one its name and the narinfo say (FileHash, FileSize): a name is the SHA-256 of the file.
    private static async Task CheckFileAsync(string staged, string name, NarInfo narInfo, CancellationToken cancellationToken)
    {
        var length = new FileInfo(staged).Length;
        if (narInfo.FileSize is { } size && size != length)
        {
            throw new KilnException(ErrorKind.Invalid, $"'{narInfo.Url}' is {length} bytes, but the narinfo says {size}");
        }

        await using var file = new FileStream(staged, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var actual = new NixHash(NixHashAlgorithm.Sha256, await SHA256.HashDataAsync(file, cancellationToken).ConfigureAwait(false));
        if (narInfo.FileHash is { Algorithm: NixHashAlgorithm.Sha256 } expected && actual != expected)
        {
            throw new KilnException(ErrorKind.Invalid, $"'{narInfo.Url}' has hash {actual}, but the narinfo says {expected}");
        }

        if (!name.StartsWith(actual.ToNix32() + ".", StringComparison.Ordinal))
        {
            throw new KilnException(ErrorKind.Invalid, $"'{narInfo.Url}' is not named after its contents' SHA-256 ({actual.ToNix32()})");
        }
    }

    // Uploads whose narinfo never came: removed after a while, so staging cannot fill the disk.
    private void RemoveExpired()
    {
        var cutoff = DateTime.UtcNow - _options.StagingLifetime;
        foreach (var file in Directory.EnumerateFiles(_options.StagingDirectory, "*", SearchOption.AllDirectories))
        {
            if (File.GetLastWriteTimeUtc(file) < cutoff)
            {
                File.Delete(file);
            }
        }
    }
}

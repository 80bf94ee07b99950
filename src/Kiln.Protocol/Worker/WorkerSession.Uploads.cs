using System.IO.Pipelines;
using Kiln.Nix;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Wire;

namespace Kiln.Protocol.Worker;

// The operations that add paths. Each one makes sure its payload is consumed to the end even when the store
// refuses it half-way, so the connection stays in step and the client hears the error.
public sealed partial class WorkerSession
{
    private async Task AddToStoreAsync(CancellationToken ct)
    {
        if (_version.AtLeast(25))
        {
            var name = await _input.ReadStringAsync(StorePath.MaxNameLength + 1, ct).ConfigureAwait(false);
            var camString = await _input.ReadStringAsync(64, ct).ConfigureAwait(false);
            var references = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
            var repair = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
            _log.StartWork();
            var data = new FramedPayloadStream(_input);
            ValidPathInfo info;
            try
            {
                var method = ContentAddressMethodAndAlgorithm.ParseCamString(camString);
                info = await _store.AddContentAddressedAsync(name, method, data, references, repair, ct).ConfigureAwait(false);
            }
            finally
            {
                await data.DrainAsync(ct).ConfigureAwait(false);
            }

            _log.StopWork();
            WritePathInfo(info, includePath: true);
        }
        else
        {
            // Nix 2.3: the data is always a NAR, unframed; "fixed" false means a recursive sha256 source.
            var name = await _input.ReadStringAsync(StorePath.MaxNameLength + 1, ct).ConfigureAwait(false);
            var fixedOutput = await _input.ReadU64Async(ct).ConfigureAwait(false) != 0;
            var recursive = await _input.ReadU64Async(ct).ConfigureAwait(false);
            var algorithmName = await _input.ReadStringAsync(16, ct).ConfigureAwait(false);
            if (recursive > 1)
            {
                throw new NixErrorException($"unsupported FileIngestionMethod with value of {recursive}");
            }

            var method = fixedOutput
                ? new ContentAddressMethodAndAlgorithm(recursive == 1 ? ContentAddressMethod.Recursive : ContentAddressMethod.Flat, NixHashAlgorithms.Parse(algorithmName))
                : new ContentAddressMethodAndAlgorithm(ContentAddressMethod.Recursive, NixHashAlgorithm.Sha256);

            // As Nix's daemon: the NAR is read before the work starts, so an error in it closes the connection.
            PayloadStream data = method.Method == ContentAddressMethod.Recursive
                ? new DelimitedNarStream(_input)
                : new NarFileContentsStream(_input);
            _log.StartWork();
            ValidPathInfo info;
            try
            {
                info = await _store.AddContentAddressedAsync(name, method, data, new SortedSet<StorePath>(), repair: false, ct).ConfigureAwait(false);
            }
            finally
            {
                await data.DrainAsync(ct).ConfigureAwait(false);
            }

            _log.StopWork();
            _output.WriteStorePath(info.Path);
        }
    }

    private async Task AddTextToStoreAsync(CancellationToken ct)
    {
        var name = await _input.ReadStringAsync(StorePath.MaxNameLength + 1, ct).ConfigureAwait(false);
        var text = await _input.ReadStringAsync(_options.MaxTextSize, ct).ConfigureAwait(false);
        var references = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var data = new MemoryStream(NixString.Encode(text), writable: false);
        var info = await _store.AddContentAddressedAsync(name, new ContentAddressMethodAndAlgorithm(ContentAddressMethod.Text, NixHashAlgorithm.Sha256),
            data, references, repair: false, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStorePath(info.Path);
    }

    private async Task AddToStoreNarAsync(CancellationToken ct)
    {
        // The request is a ValidPathInfo in the ≥ 1.16 layout, then repair and dontCheckSigs.
        var info = await ReadValidPathInfoAsync(_input, ct).ConfigureAwait(false);
        var narSize = info.NarSize;
        var repair = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        var dontCheckSigs = await _input.ReadBoolAsync(ct).ConfigureAwait(false);

        _log.StartWork();
        PayloadStream nar = _version.AtLeast(23)
            ? new FramedPayloadStream(_input)
            : new PulledPayloadStream(_input, _output, narSize);
        try
        {
            await _store.AddToStoreAsync(info, nar, repair, checkSignatures: !dontCheckSigs, ct).ConfigureAwait(false);
        }
        finally
        {
            // A pulled payload is only sent on request: nothing to drain.
            if (nar is FramedPayloadStream)
            {
                await nar.DrainAsync(ct).ConfigureAwait(false);
            }
        }

        _log.StopWork();
    }

    private async Task AddMultipleToStoreAsync(CancellationToken ct)
    {
        var repair = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        var dontCheckSigs = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var framed = new FramedPayloadStream(_input);
        var inner = PipeReader.Create(framed, new StreamPipeReaderOptions(bufferSize: 64 * 1024, minimumReadSize: 16 * 1024, leaveOpen: true));
        try
        {
            var contents = new WireInput(inner, _options.Limits);
            var batch = _store.BeginUploads(repair, checkSignatures: !dontCheckSigs);
            await using (batch.ConfigureAwait(false))
            {
                var count = await contents.ReadU64Async(ct).ConfigureAwait(false);
                for (var i = 0UL; i < count; i++)
                {
                    var info = await ReadValidPathInfoAsync(contents, ct).ConfigureAwait(false);
                    var nar = new CountedPayloadStream(contents, info.NarSize);
                    await batch.AddAsync(info, nar, ct).ConfigureAwait(false);
                    await nar.DrainAsync(ct).ConfigureAwait(false);
                }

                // Only a request that arrived whole is registered: wait for the stream's terminator first.
                await framed.DrainAsync(ct).ConfigureAwait(false);
                await batch.CommitAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            await inner.CompleteAsync().ConfigureAwait(false);
            await framed.DrainAsync(ct).ConfigureAwait(false);
        }

        _log.StopWork();
    }

    /// <summary>ValidPathInfo in the ≥ 1.16 layout, which AddMultipleToStore always uses.</summary>
    internal static async Task<ValidPathInfo> ReadValidPathInfoAsync(WireInput input, CancellationToken ct)
    {
        var path = await input.ReadStorePathAsync(ct).ConfigureAwait(false);
        var deriver = await input.ReadOptionalStorePathAsync(ct).ConfigureAwait(false);
        var narHash = ParseNarHash(await input.ReadStringAsync(256, ct).ConfigureAwait(false));
        var references = await input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        var registrationTime = await input.ReadU64Async(ct).ConfigureAwait(false);
        var narSize = await input.ReadInt64Async(ct).ConfigureAwait(false);
        await input.ReadBoolAsync(ct).ConfigureAwait(false); // ultimate
        var signatures = await input.ReadStringsAsync(ct).ConfigureAwait(false);
        var ca = await input.ReadStringAsync(1024, ct).ConfigureAwait(false);
        return new ValidPathInfo
        {
            Path = path,
            Deriver = deriver,
            NarHash = narHash,
            NarSize = narSize,
            References = references,
            RegistrationTime = (long)Math.Min(registrationTime, long.MaxValue),
            Signatures = new SortedSet<string>(signatures, StringComparer.Ordinal),
            ContentAddress = ca.Length == 0 ? null : ContentAddress.Parse(ca),
        };
    }
}

/// <summary>
/// The contents of the single regular file in an unframed NAR (Nix 2.3's flat AddToStore sends a NAR even for
/// flat content): the NAR is parsed as it passes and only the file's bytes come out.
/// </summary>
internal sealed class NarFileContentsStream : PayloadStream
{
    private readonly WireInput _input;
    private readonly ContentsVisitor _visitor = new();
    private readonly NarParser _parser;

    public NarFileContentsStream(WireInput input)
    {
        _input = input;
        _parser = new NarParser(_visitor);
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (!_parser.IsComplete && !buffer.IsEmpty)
        {
            _visitor.Destination = buffer;
            _visitor.Written = 0;
            await _input.ConsumeRawAsync(sequence =>
            {
                // Feed no more than fits: the contents that come out are at most the bytes that go in.
                var piece = sequence.Slice(0, Math.Min(sequence.Length, buffer.Length));
                var used = 0;
                try
                {
                    foreach (var segment in piece)
                    {
                        used += _parser.Feed(segment.Span);
                        if (_parser.IsComplete)
                        {
                            break;
                        }
                    }
                }
                catch (NarException e)
                {
                    throw new ProtocolViolationException($"the NAR in the request is malformed: {e.Message}");
                }

                return (used, true);
            }, cancellationToken).ConfigureAwait(false);

            if (_visitor.NotAFile)
            {
                throw new NixErrorException("regular file expected");
            }

            if (_visitor.Written > 0)
            {
                return _visitor.Written;
            }
        }

        return 0;
    }

    private sealed class ContentsVisitor : NarVisitor
    {
        public Memory<byte> Destination { get; set; }

        public int Written { get; set; }

        public bool NotAFile { get; private set; }

        private int _depth;

        public override void Directory()
        {
            NotAFile = true;
            _depth++;
        }

        public override void Symlink(ReadOnlySpan<byte> target) => NotAFile |= _depth == 0;

        public override void Contents(ReadOnlySpan<byte> data)
        {
            data.CopyTo(Destination.Span[Written..]);
            Written += data.Length;
        }
    }
}

using Kiln.Agent;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Kiln's seccomp program, loaded by bubblewrap into a real kernel: setuid and setgid modes and extended attributes
/// are refused as in Nix's sandbox, and (beyond Nix) so is creating a file with such a mode; everything else is left
/// alone. (The fidelity corpus compares the chmod side with
/// stock Nix; Nix's sandbox has no setfattr to compare with, so the errors are checked here.)
/// </summary>
public class SyscallFilterTests
{
    // Each refusal is printed with its error text (the part after the last colon).
    private const string Script = """
        cd "$1"
        touch f; mkdir d
        for mode in 4755 2755 6755 1755 0755 0644; do
          chmod $mode f 2> err && echo "chmod $mode ok" || echo "chmod $mode: $(sed 's/.*: //' err)"
        done
        chmod g+s d 2> err && echo "dir g+s ok" || echo "dir g+s: $(sed 's/.*: //' err)"
        setfattr -n user.kiln -v 1 f 2> err && echo "setfattr ok" || echo "setfattr: $(sed 's/.*: //' err)"
        setfattr -h -n user.kiln -v 1 d 2> err && echo "setfattr -h ok" || echo "setfattr -h: $(sed 's/.*: //' err)"
        stat -c %a f
        # Creating with a mode (beyond Nix): open/openat with O_CREAT, creat, mknod; an open that creates nothing
        # is left alone whatever its mode argument holds.
        for mode in 4755 2755 0755; do
          perl -MFcntl -e 'sysopen(my $f, "o$ARGV[0]", O_CREAT|O_WRONLY, oct $ARGV[0]) or die "$!\n"' $mode 2> err && echo "open $mode ok" || echo "open $mode: $(cat err)"
          perl -e 'syscall(85, "c$ARGV[0]", oct $ARGV[0]) >= 0 or die "$!\n"' $mode 2> err && echo "creat $mode ok" || echo "creat $mode: $(cat err)"
          perl -e 'syscall(133, "n$ARGV[0]", 0100000 | oct $ARGV[0], 0) >= 0 or die "$!\n"' $mode 2> err && echo "mknod $mode ok" || echo "mknod $mode: $(cat err)"
        done
        perl -MFcntl -e 'sysopen(my $f, "f", O_RDONLY, 04755) or die "$!\n"' 2> err && echo "open existing ok" || echo "open existing: $(cat err)"
        perl -e 'my ($path, $how) = ("f", "\0" x 24); syscall(437, -100, $path, $how, 24) >= 0 or die "$!\n"' 2> err && echo "openat2 ok" || echo "openat2: $(cat err)"
        ls o* c* n* 2> /dev/null | while read -r name; do echo "$name $(stat -c %a "$name")"; done
        """;

    private static string[] Run(bool filtered)
    {
        NixClient.RequireEndToEnd();
        using var dir = new TempDir();
        var filter = Path.Combine(dir.Path, "filter.bpf");
        File.WriteAllBytes(filter, SyscallFilter.Program());
        var work = Directory.CreateDirectory(Path.Combine(dir.Path, "work")).FullName;
        var seccomp = filtered ? "--seccomp 9" : "";
        var result = Processes.Run("/bin/sh", ["-c",
            $"exec /usr/bin/bwrap {seccomp} --ro-bind / / --bind \"$2\" \"$2\" --dev /dev --proc /proc -- /bin/sh -c \"$3\" sh \"$2\" 9< \"$1\"",
            "sh", filter, work, Script]);
        Assert.True(result.ExitCode == 0, result.Stderr);
        return result.StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    [Fact]
    public void Setuid_and_setgid_modes_and_extended_attributes_are_refused_and_nothing_else()
    {
        Assert.Equal(
        [
            "chmod 4755: Operation not permitted",
            "chmod 2755: Operation not permitted",
            "chmod 6755: Operation not permitted",
            "chmod 1755 ok",
            "chmod 0755 ok",
            "chmod 0644 ok",
            "dir g+s: Operation not permitted",
            "setfattr: Operation not supported",
            "setfattr -h: Operation not supported",
            "644",
            "open 4755: Operation not permitted",
            "creat 4755: Operation not permitted",
            "mknod 4755: Operation not permitted",
            "open 2755: Operation not permitted",
            "creat 2755: Operation not permitted",
            "mknod 2755: Operation not permitted",
            "open 0755 ok",
            "creat 0755 ok",
            "mknod 0755 ok",
            "open existing ok",
            "openat2: Function not implemented",
            "c0755 755",
            "n0755 755",
            "o0755 755",
        ], Run(filtered: true));
    }

    [Fact]
    public void Without_the_filter_the_same_calls_succeed()
    {
        // The control: the refusals above come from the filter, not from the file system or bubblewrap.
        Assert.Equal(
        [
            "chmod 4755 ok", "chmod 2755 ok", "chmod 6755 ok", "chmod 1755 ok", "chmod 0755 ok", "chmod 0644 ok",
            "dir g+s ok", "setfattr ok", "setfattr -h ok", "644",
            "open 4755 ok", "creat 4755 ok", "mknod 4755 ok", "open 2755 ok", "creat 2755 ok", "mknod 2755 ok",
            "open 0755 ok", "creat 0755 ok", "mknod 0755 ok", "open existing ok", "openat2 ok",
            "c0755 755", "c2755 2755", "c4755 4755", "n0755 755", "n2755 2755", "n4755 4755", "o0755 755", "o2755 2755", "o4755 4755",
        ], Run(filtered: false));
    }
}

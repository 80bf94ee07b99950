using System.Buffers.Binary;

namespace Kiln.Agent;

/// <summary>
/// The seccomp filter every sandboxed build runs under, with Nix's rules (its <c>filter-syscalls</c>, on by default):
/// <c>chmod</c>, <c>fchmod</c>, <c>fchmodat</c> (and the newer <c>fchmodat2</c>) fail with EPERM when the mode has
/// the setuid or setgid bit, so a build can never leave a setuid file even for an instant; <c>setxattr</c>,
/// <c>lsetxattr</c>, <c>fsetxattr</c> fail with ENOTSUP, since a NAR cannot carry extended attributes or ACLs. Like
/// Nix on x86_64, the filter covers the 64-bit, i386 and x32 system-call tables and kills a process that uses any
/// other.
/// <para>
/// Kiln goes further than Nix, which leaves the calls that create a file with a mode alone: <c>open</c>,
/// <c>openat</c> and <c>creat</c> when they create (<c>O_CREAT</c> or <c>O_TMPFILE</c>), and <c>mknod</c>,
/// <c>mknodat</c>, also fail with EPERM for a setuid or setgid mode, so such a file cannot exist for an instant either
/// (<c>mkdir</c> needs no rule: the kernel drops those bits from its mode). <c>openat2</c> takes its mode in memory a
/// filter cannot read, so it answers ENOSYS and callers fall back to <c>openat</c>, as on kernels before 5.6.
/// </para>
/// <para>
/// The program is classic BPF as the kernel takes it (<c>struct sock_filter</c> records over
/// <c>struct seccomp_data</c>), handed to bubblewrap's <c>--seccomp FD</c>. Kiln writes it itself so that agents
/// need no libseccomp.
/// </para>
/// </summary>
public static class SyscallFilter
{
    private const uint AuditArchX86_64 = 0xC000003E;
    private const uint AuditArchI386 = 0x40000003;
    private const uint X32SyscallBit = 0x40000000;

    private const uint SetUidOrSetGid = 0x800 | 0x400; // S_ISUID | S_ISGID
    private const uint Eperm = 1;
    private const uint Enosys = 38;
    private const uint Enotsup = 95;

    private const uint CreatesFile = 0x40 | 0x400000; // O_CREAT | __O_TMPFILE

    private const uint RetAllow = 0x7FFF0000;
    private const uint RetErrno = 0x00050000;
    private const uint RetKillProcess = 0x80000000;

    // struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6] (little-endian here).
    private const uint OffsetNr = 0;
    private const uint OffsetArch = 4;

    private static uint OffsetArgLow(int index) => (uint)(16 + (8 * index));

    // Classic BPF opcodes.
    private const ushort LoadWordAbsolute = 0x20; // BPF_LD | BPF_W | BPF_ABS
    private const ushort AndConstant = 0x54;      // BPF_ALU | BPF_AND | BPF_K
    private const ushort JumpIfEqual = 0x15;      // BPF_JMP | BPF_JEQ | BPF_K
    private const ushort JumpIfAnyBit = 0x45;     // BPF_JMP | BPF_JSET | BPF_K
    private const ushort Return = 0x06;           // BPF_RET | BPF_K

    /// <summary>
    /// A rule: the system call, and the argument holding a mode (or -1: always refused); with a flags argument, the
    /// mode counts only when the flags ask to create a file (elsewhere the mode argument is not read by the kernel).
    /// </summary>
    private sealed record Rule(uint Number, int ModeArgument, uint Errno, int FlagsArgument = -1);

    // Numbers from the kernel's syscall tables. x32 shares the 64-bit numbers (with X32SyscallBit set).
    private static readonly Rule[] X86_64 =
    [
        new(90, 1, Eperm),   // chmod(path, mode)
        new(91, 1, Eperm),   // fchmod(fd, mode)
        new(268, 2, Eperm),  // fchmodat(dirfd, path, mode)
        new(452, 2, Eperm),  // fchmodat2(dirfd, path, mode, flags)
        new(188, -1, Enotsup), // setxattr
        new(189, -1, Enotsup), // lsetxattr
        new(190, -1, Enotsup), // fsetxattr
        new(2, 2, Eperm, FlagsArgument: 1),   // open(path, flags, mode)
        new(257, 3, Eperm, FlagsArgument: 2), // openat(dirfd, path, flags, mode)
        new(85, 1, Eperm),   // creat(path, mode)
        new(133, 1, Eperm),  // mknod(path, mode, dev)
        new(259, 2, Eperm),  // mknodat(dirfd, path, mode, dev)
        new(437, -1, Enosys), // openat2(dirfd, path, how, size)
    ];

    private static readonly Rule[] I386 =
    [
        new(15, 1, Eperm),
        new(94, 1, Eperm),
        new(306, 2, Eperm),
        new(452, 2, Eperm),
        new(226, -1, Enotsup),
        new(227, -1, Enotsup),
        new(228, -1, Enotsup),
        new(5, 2, Eperm, FlagsArgument: 1),
        new(295, 3, Eperm, FlagsArgument: 2),
        new(8, 1, Eperm),
        new(14, 1, Eperm),
        new(297, 2, Eperm),
        new(437, -1, Enosys),
    ];

    private readonly record struct Instruction(ushort Code, byte JumpTrue, byte JumpFalse, uint K);

    /// <summary>The filter program, ready for the kernel.</summary>
    public static byte[] Program()
    {
        var x86_64 = Table(X86_64, maskX32: true);
        var i386 = Table(I386, maskX32: false);
        var program = new List<Instruction>
        {
            new(LoadWordAbsolute, 0, 0, OffsetArch),
            new(JumpIfEqual, 2, 0, AuditArchX86_64),
            new(JumpIfEqual, (byte)(1 + x86_64.Count), 0, AuditArchI386),
            new(Return, 0, 0, RetKillProcess),
        };
        program.AddRange(x86_64);
        program.AddRange(i386);

        var bytes = new byte[program.Count * 8];
        for (var i = 0; i < program.Count; i++)
        {
            var span = bytes.AsSpan(i * 8, 8);
            BinaryPrimitives.WriteUInt16LittleEndian(span, program[i].Code);
            span[2] = program[i].JumpTrue;
            span[3] = program[i].JumpFalse;
            BinaryPrimitives.WriteUInt32LittleEndian(span[4..], program[i].K);
        }

        return bytes;
    }

    /// <summary>
    /// One architecture's block: load the number, then for each rule "not this call: skip my body"; a body for a
    /// mode rule tests the mode bits (refuse or allow), for an always-refused call it returns the error. Falls
    /// through to allow.
    /// </summary>
    private static List<Instruction> Table(Rule[] rules, bool maskX32)
    {
        var block = new List<Instruction> { new(LoadWordAbsolute, 0, 0, OffsetNr) };
        if (maskX32)
        {
            block.Add(new(AndConstant, 0, 0, ~X32SyscallBit));
        }

        foreach (var rule in rules)
        {
            var refuse = new Instruction(Return, 0, 0, RetErrno | rule.Errno);
            if (rule.ModeArgument < 0)
            {
                block.Add(new(JumpIfEqual, 0, 1, rule.Number));
                block.Add(refuse);
                continue;
            }

            // The mode is a mode_t and the flags an int: their low 32 bits are the whole of them. The accumulator is
            // reloaded, so a match ends in a return either way.
            if (rule.FlagsArgument >= 0)
            {
                block.Add(new(JumpIfEqual, 0, 6, rule.Number));
                block.Add(new(LoadWordAbsolute, 0, 0, OffsetArgLow(rule.FlagsArgument)));
                block.Add(new(JumpIfAnyBit, 0, 3, CreatesFile)); // not creating: allow
            }
            else
            {
                block.Add(new(JumpIfEqual, 0, 4, rule.Number));
            }

            block.Add(new(LoadWordAbsolute, 0, 0, OffsetArgLow(rule.ModeArgument)));
            block.Add(new(JumpIfAnyBit, 0, 1, SetUidOrSetGid));
            block.Add(refuse);
            block.Add(new(Return, 0, 0, RetAllow));
        }

        block.Add(new(Return, 0, 0, RetAllow));
        return block;
    }
}

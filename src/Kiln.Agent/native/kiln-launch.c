/*
 * kiln-launch: starts one sandboxed build, as Kiln's launcher shell did with unshare, mount -a and setpriv, in one
 * process (each of those was a fork and an exec, about a sixth of a trivial build).
 *
 *   kiln-launch PROCS PTY STATUS FILTER BLOCK FSTAB SEED TMP UID GID PROGRAM [ARG...]
 *
 * Every argument comes from Kiln, never from a build; an empty argument leaves its step out. It first closes every
 * descriptor but 0–2, then:
 *   1. writes its pid to each cgroup.procs file in PROCS (space-separated), so everything the build starts is counted;
 *   2. makes itself the kernel's first choice when the host runs out of memory (a build user cannot lower it again);
 *   3. with FSTAB: enters a mount namespace of its own, private, and makes FSTAB's mounts there (/dev's devpts, shm
 *      and device nodes, the build directory's tmpfs): gone with the build's last process, even if Kiln is killed;
 *   4. with SEED and TMP: copies what Kiln put in the build directory (SEED) into the tmpfs TMP (cp -a);
 *   5. opens, as root, the build's descriptors: /dev/null as 0, the terminal PTY as 1 and 2, bwrap's status report
 *      STATUS as 3, the network pipe BLOCK as 8 and the syscall filter FILTER as 9; nothing else stays open;
 *   6. with UID and GID: becomes that user and group, with no supplementary groups, no capabilities, no way back and
 *      no gaining privileges (no_new_privs), and checks that it did;
 *   7. execs PROGRAM (bwrap) with the environment it was given.
 * Any failure before the exec prints "kiln-launch: ..." on stderr and exits 125, as the shell did.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mntent.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>

#ifndef SYS_close_range
#define SYS_close_range 436 /* Linux 5.9, the same number on every architecture; older kernels say ENOSYS */
#endif

static void report(int error, const char *format, va_list args)
{
    fputs("kiln-launch: ", stderr);
    vfprintf(stderr, format, args);
    if (error != 0)
        fprintf(stderr, ": %s", strerror(error));
    fputc('\n', stderr);
    _exit(125);
}

/* A system call failed: the message and errno's. */
static void fail(const char *format, ...)
{
    int error = errno;
    va_list args;
    va_start(args, format);
    report(error, format, args);
}

/* Kiln's arguments are wrong: the message alone. */
static void refuse(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    report(0, format, args);
}

static void write_all(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        fail("cannot open %s", path);
    size_t length = strlen(text);
    ssize_t written = write(fd, text, length);
    if (written < 0)
        fail("cannot write %s", path);
    if ((size_t)written != length)
        refuse("cannot write all of %s", path);
    if (close(fd) != 0)
        fail("cannot write %s", path);
}

/* Parses a decimal id that fits a uid_t/gid_t and is not root's (a build never runs as root). */
static unsigned long parse_id(const char *text, const char *what)
{
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || errno != 0 || *end != '\0' || value == 0 || value > 0x7fffffffUL)
        refuse("bad %s '%s'", what, text);
    return value;
}

/* The fstab Kiln writes: fs data options as mount(2) takes them, or "bind" alone for a bind mount. */
static void mount_all(const char *fstab)
{
    if (unshare(CLONE_NEWNS) != 0)
        fail("cannot enter a mount namespace of its own");
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        fail("cannot make its mounts private");
    FILE *file = setmntent(fstab, "re");
    if (file == NULL)
        fail("cannot read %s", fstab);
    struct mntent *entry;
    while ((entry = getmntent(file)) != NULL)
    {
        int bind = strcmp(entry->mnt_opts, "bind") == 0;
        if (mount(entry->mnt_fsname, entry->mnt_dir, bind ? NULL : entry->mnt_type, bind ? MS_BIND : 0,
                  bind ? NULL : entry->mnt_opts) != 0)
            fail("cannot mount %s on %s", entry->mnt_fsname, entry->mnt_dir);
    }
    if (ferror(file))
        refuse("cannot read %s", fstab);
    endmntent(file);
}

static void copy_seed(const char *seed, const char *tmp)
{
    char from[4096], to[4096];
    if (snprintf(from, sizeof from, "%s/.", seed) >= (int)sizeof from || snprintf(to, sizeof to, "%s/", tmp) >= (int)sizeof to)
        refuse("cannot copy %s: the name is too long", seed);
    pid_t child = fork();
    if (child < 0)
        fail("cannot start cp");
    if (child == 0)
    {
        execl("/bin/cp", "cp", "-a", "--", from, to, (char *)NULL);
        perror("kiln-launch: cannot run /bin/cp");
        _exit(127);
    }
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR)
            fail("cannot wait for cp");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        refuse("cannot copy %s into the build directory", seed);
}

/* Closes every descriptor from FIRST on: everything Kiln's process might have left open (it opens with close-on-exec,
   but the build must not depend on that), before anything runs as root. */
static void close_from(int first)
{
    if (syscall(SYS_close_range, (unsigned)first, ~0U, 0) == 0)
        return;
    /* Kernels before 5.9 (ENOSYS) and container seccomp profiles that refuse it (EPERM): what /proc lists. */
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        fail("cannot list its descriptors");
    int own = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL)
    {
        char *end;
        long fd = strtol(entry->d_name, &end, 10);
        if (entry->d_name[0] >= '0' && entry->d_name[0] <= '9' && *end == '\0' && fd >= first && fd != own)
            close((int)fd);
    }
    closedir(dir);
}

/* Opens PATH close-on-exec at descriptor 10 or above, out of the way of the numbers a build's descriptors get. */
static int open_high(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd < 0)
        fail("cannot open %s", path);
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (high < 0)
        fail("cannot keep %s open", path);
    close(fd);
    return high;
}

/* Makes FD (opened close-on-exec) descriptor TARGET, kept across exec. */
static void keep_as(int fd, int target, const char *path)
{
    if (fd == target ? fcntl(fd, F_SETFD, 0) != 0 : dup2(fd, target) < 0)
        fail("cannot keep %s open", path);
}

static void become(unsigned long uid, unsigned long gid)
{
    if (setgroups(0, NULL) != 0)
        fail("cannot clear the supplementary groups");
    if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0)
        fail("cannot become group %lu", gid);
    if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0)
        fail("cannot become user %lu", uid);
    /* Leaving root clears the permitted and effective sets, but not the inheritable one Kiln may have been started
       with (a container's, a service's), nor anything securebits kept: all three sets go, which needs no privilege,
       and the ambient set with them. */
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[2] = {{0, 0, 0}, {0, 0, 0}};
    if (syscall(SYS_capset, &header, caps) != 0)
        fail("cannot drop its capabilities");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        fail("cannot clear the ambient capabilities");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("cannot set no_new_privs");

    /* Check it rather than trust it: all ids are the build's, no group is left, no capability either. */
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    if (getresuid(&ruid, &euid, &suid) != 0 || getresgid(&rgid, &egid, &sgid) != 0 || ruid != uid || euid != uid ||
        suid != uid || rgid != gid || egid != gid || sgid != gid || getgroups(0, NULL) != 0 ||
        syscall(SYS_capget, &header, caps) != 0 || caps[0].effective || caps[0].permitted || caps[0].inheritable ||
        caps[1].effective || caps[1].permitted || caps[1].inheritable || prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        refuse("did not become user %lu and group %lu without privileges", uid, gid);
}

int main(int argc, char **argv)
{
    if (argc < 12)
        refuse("usage: kiln-launch PROCS PTY STATUS FILTER BLOCK FSTAB SEED TMP UID GID PROGRAM [ARG...]");
    const char *procs = argv[1], *pty = argv[2], *status = argv[3], *filter = argv[4], *block = argv[5];
    const char *fstab = argv[6], *seed = argv[7], *tmp = argv[8], *uid_text = argv[9], *gid_text = argv[10];
    char **program = argv + 11;
    if ((*uid_text == '\0') != (*gid_text == '\0'))
        refuse("a user needs a group");
    unsigned long uid = *uid_text ? parse_id(uid_text, "user") : 0, gid = *gid_text ? parse_id(gid_text, "group") : 0;
    close_from(3);

    /* 1: pid into every cgroup (split on spaces; Kiln's cgroup paths have none). */
    if (*procs)
    {
        char pid[32], *list = strdup(procs), *save = NULL;
        if (list == NULL)
            fail("out of memory");
        snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        for (char *file = strtok_r(list, " ", &save); file != NULL; file = strtok_r(NULL, " ", &save))
            write_all(file, pid);
        free(list);
    }

    /* 2: as the shell's echo did, going on without it (a kernel without the file must not stop builds). */
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0)
    {
        if (write(oom, "1000\n", 5) < 0) { /* ignored */ }
        close(oom);
    }

    if (*fstab)
        mount_all(fstab); /* 3 */
    if (*seed && *tmp)
        copy_seed(seed, tmp); /* 4 */

    /* 5: each opened close-on-exec above 9, then kept as its number (so that none replaces another, wherever open
       put it should Kiln have had 0 or 1 closed). The status file is in root's build directory: never through a
       symbolic link all the same. */
    int targets[4] = {3, 9, 8, 0};
    const char *paths[4] = {status, filter, block, "/dev/null"};
    int flags[4] = {O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, O_RDONLY, O_RDWR, O_RDWR}, opened[4];
    for (int i = 0; i < 4; i++)
        opened[i] = *paths[i] ? open_high(paths[i], flags[i]) : -1;
    int terminal = open_high(pty, O_RDWR);
    for (int i = 0; i < 4; i++)
        if (opened[i] >= 0)
            keep_as(opened[i], targets[i], paths[i]);

    if (*uid_text)
        become(uid, gid); /* 6 */

    /* stderr stayed Kiln's pipe up to here, so its errors reach Kiln; the terminal now. */
    keep_as(terminal, 1, pty);
    keep_as(terminal, 2, pty);
    close_from(10);
    execv(program[0], program); /* 7 */
    /* stderr is the terminal now: Kiln shows the build log's last line when the sandbox did not start. */
    fprintf(stderr, "kiln-launch: cannot run %s: %s\n", program[0], strerror(errno));
    return 127;
}

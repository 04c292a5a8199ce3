/*
 * isotest-init: pid 1 of a sandbox whose test is a single command (no setup, no teardown).
 *
 * The sandbox's first process used to be a copy of the worker that never exec'd: it kept a
 * copy-on-write image of the worker (its memory, its secrets) for the whole test, and every
 * sandbox paid for copying the worker's page tables. Now the first process shares the
 * worker's memory only until it execs this program, which holds nothing of the worker.
 *
 * It is freestanding (no libc: raw system calls, no start-up code), because glibc's start-up
 * alone (CPU feature probing with cpuid, which traps to the hypervisor on a VM) costs a few
 * hundred microseconds, and this runs once per test.
 *
 * Usage: isotest-init COMMAND [ARG...]
 *        isotest-init "" STAGES [SETUP] [TEARDOWN] COMMAND [ARG...]
 *        isotest-init "" r
 *   Makes itself non-dumpable, starts COMMAND as pid 2 (looked up on PATH from its
 *   environment like execvp; a file of no known format is run by /bin/sh; 127 with
 *   "isotest: NAME: not found" on stderr when missing, 126 when not executable), reaps every
 *   process until COMMAND has exited, writes "command N\n" to fd 3 (N as sh gives $?), and
 *   exits 0, which ends the pid namespace. No stage inherits fds 3 and 4.
 *
 *   In the second form (an empty first argument, which no command has), STAGES is "s", "t" or
 *   "st", saying which of SETUP and TEARDOWN follow; each is run by `/bin/sh -c` and reported
 *   as "setup N" and "teardown N". A setup that fails ends the run; the teardown runs whatever
 *   the command's exit. Only this process, which nothing in the sandbox may read or write
 *   (non-dumpable), holds fd 3, so no stage can report for another.
 *
 *   SIGTERM sent to it (the worker's way to stop a sandbox, through a pidfd, so no pid read from
 *   a list can be reused meanwhile) is passed on to every other process of the namespace
 *   (kill(-1)), and no further stage starts.
 *
 *   With STAGES "r" and nothing after it, it starts nothing: it is the pid 1 of a warm test,
 *   which the zygote's fork server forks into the namespace itself as pid 2. It closes every
 *   descriptor it inherited, then only reaps and passes SIGTERM on, until it is killed.
 */

typedef unsigned long u64;
typedef long i64;

#if defined(__x86_64__)
#define NR_write 1
#define NR_close 3
#define NR_rt_sigprocmask 14
#define NR_clone 56
#define NR_execve 59
#define NR_exit_group 231
#define NR_wait4 61
#define NR_prctl 157
#define NR_kill 62
#define NR_rt_sigtimedwait 128
#define NR_close_range 436

static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f) {
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    register i64 r9 __asm__("r9") = f;
    i64 ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
#define NR_write 64
#define NR_close 57
#define NR_rt_sigprocmask 135
#define NR_clone 220
#define NR_execve 221
#define NR_exit_group 94
#define NR_wait4 260
#define NR_prctl 167
#define NR_kill 129
#define NR_rt_sigtimedwait 137
#define NR_close_range 436

static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f) {
    register i64 x8 __asm__("x8") = n;
    register i64 x0 __asm__("x0") = a;
    register i64 x1 __asm__("x1") = b;
    register i64 x2 __asm__("x2") = c;
    register i64 x3 __asm__("x3") = d;
    register i64 x4 __asm__("x4") = e;
    register i64 x5 __asm__("x5") = f;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
}
#else
#error "isotest-init supports x86_64 and aarch64"
#endif

#define SIGCHLD 17
#define SIGTERM 15
#define WNOHANG 1
#define SIG_SETMASK 2
#define PR_SET_NAME 15
#define PR_SET_DUMPABLE 4
#define WALL 0x40000000
#define ENOENT 2
#define ENOEXEC 8
#define ENOTDIR 20
#define EINTR 4

static i64 sys(i64 n, i64 a, i64 b, i64 c) { return sys6(n, a, b, c, 0, 0, 0); }

/* The compiler may emit calls to these for copies and initialisers. */
void *memcpy(void *dst, const void *src, u64 n) {
    char *d = dst;
    const char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, u64 n) {
    char *d = dst;
    while (n--) *d++ = (char)c;
    return dst;
}

static __attribute__((noreturn)) void quit(int code) {
    for (;;) sys(NR_exit_group, code, 0, 0);
}

static u64 len(const char *s) {
    u64 n = 0;
    while (s[n]) n++;
    return n;
}

static void put(const char *s) { sys(NR_write, 2, (i64)s, (i64)len(s)); }

/* The value of NAME= in envp, or 0. */
static const char *getenv_in(char **envp, const char *name) {
    for (; *envp; envp++) {
        const char *e = *envp, *n = name;
        while (*n && *e == *n) e++, n++;
        if (!*n && *e == '=') return e + 1;
    }
    return 0;
}

static int has_slash(const char *s) {
    for (; *s; s++)
        if (*s == '/') return 1;
    return 0;
}

/* Tries one path; returns the errno it failed with. ENOEXEC falls back to /bin/sh. */
static i64 try_exec(char *path, char **argv, char **envp) {
    i64 err = -sys(NR_execve, (i64)path, (i64)argv, (i64)envp);
    if (err == ENOEXEC) {
        /* What sh does with a file of no known format: run it as a script. argv[-1] is
         * this program's own argv[0] slot, free to reuse in this process. */
        char **script = argv - 1;
        script[0] = "/bin/sh";
        script[1] = path;
        sys(NR_execve, (i64)"/bin/sh", (i64)script, (i64)envp);
    }
    return err;
}

/* The command's process: default signal mask, no fds 3 and 4, then execvp. */
static __attribute__((noreturn)) void command_main(char **argv, char **envp) {
    u64 none = 0;
    sys6(NR_rt_sigprocmask, SIG_SETMASK, (i64)&none, 0, 8, 0, 0);
    sys(NR_close, 3, 0, 0);
    sys(NR_close, 4, 0, 0);
    const char *name = argv[0];
    int found = 0;
    if (has_slash(name)) {
        i64 err = try_exec((char *)name, argv, envp);
        found = err != ENOENT && err != ENOTDIR;
    } else {
        const char *path = getenv_in(envp, "PATH");
        char buf[4096];
        u64 name_len = len(name);
        while (path) {
            const char *end = path;
            while (*end && *end != ':') end++;
            u64 dir_len = (u64)(end - path);
            if (dir_len == 0) {
                buf[0] = '.';
                dir_len = 1;
            } else if (dir_len < sizeof buf) {
                for (u64 i = 0; i < dir_len; i++) buf[i] = path[i];
            }
            if (dir_len + 1 + name_len < sizeof buf) {
                while (dir_len > 1 && buf[dir_len - 1] == '/') dir_len--;
                buf[dir_len] = '/';
                for (u64 i = 0; i <= name_len; i++) buf[dir_len + 1 + i] = name[i];
                i64 err = try_exec(buf, argv, envp);
                if (err != ENOENT && err != ENOTDIR) found = 1;
            }
            path = *end ? end + 1 : 0;
        }
    }
    put("isotest: ");
    put(name);
    put(found ? ": cannot execute\n" : ": not found\n");
    quit(found ? 126 : 127);
}

/* Set once SIGTERM came: stages still running are stopped, none starts. */
static int terminated;

/* Waits for `pid` to exit, reaping every other process meanwhile (orphans are ours), and
 * passing SIGTERM on; returns its status as sh gives $?. */
static int wait_for(i64 pid) {
    u64 wanted = (1UL << (SIGCHLD - 1)) | (1UL << (SIGTERM - 1));
    for (;;) {
        int status = 0;
        i64 reaped = sys6(NR_wait4, -1, (i64)&status, WALL | WNOHANG, 0, 0, 0);
        if (reaped == pid) return (status & 0x7f) ? 128 + (status & 0x7f) : (status >> 8) & 0xff;
        if (reaped > 0 || reaped == -EINTR) continue;
        if (reaped < 0) quit(1);
        /* Nothing to reap: sleep until a child exits or SIGTERM comes (both stay blocked, so
         * neither is lost between the wait above and this). */
        i64 sig = sys6(NR_rt_sigtimedwait, (i64)&wanted, 0, 0, 8, 0, 0);
        if (sig == SIGTERM) {
            terminated = 1;
            sys(NR_kill, -1, SIGTERM, 0);
        }
    }
}

/* The pid 1 of a warm test: holds nothing, starts nothing, reaps every process of the
 * namespace and passes SIGTERM on, until it is killed (SIGKILL, from the fork server). */
static __attribute__((noreturn)) void reap_forever(void) {
    sys(NR_close_range, 0, ~0U, 0);
    u64 wanted = (1UL << (SIGCHLD - 1)) | (1UL << (SIGTERM - 1));
    for (;;) {
        int status = 0;
        i64 reaped = sys6(NR_wait4, -1, (i64)&status, WALL | WNOHANG, 0, 0, 0);
        if (reaped > 0 || reaped == -EINTR) continue;
        /* No child, or none has exited: sleep until one does or SIGTERM comes. */
        if (sys6(NR_rt_sigtimedwait, (i64)&wanted, 0, 0, 8, 0, 0) == SIGTERM) sys(NR_kill, -1, SIGTERM, 0);
    }
}

/* Writes "STAGE CODE\n" to fd 3. */
static void report(const char *stage, int code) {
    char line[24];
    int n = 0;
    while (*stage && n < 12) line[n++] = *stage++;
    line[n++] = ' ';
    if (code >= 100) line[n++] = (char)('0' + code / 100);
    if (code >= 10) line[n++] = (char)('0' + code / 10 % 10);
    line[n++] = (char)('0' + code % 10);
    line[n++] = '\n';
    sys(NR_write, 3, (i64)line, n);
}

/* Starts a process running `sh -c SCRIPT` (or COMMAND when `script` is 0) and waits for it. */
static int run(const char *script, char **command, char **envp) {
    i64 pid = sys6(NR_clone, SIGCHLD, 0, 0, 0, 0, 0);
    if (pid < 0) {
        put("isotest-init: cannot start a stage\n");
        quit(2);
    }
    if (pid == 0) {
        if (!script) command_main(command, envp);
        u64 none = 0;
        sys6(NR_rt_sigprocmask, SIG_SETMASK, (i64)&none, 0, 8, 0, 0);
        sys(NR_close, 3, 0, 0);
        sys(NR_close, 4, 0, 0);
        char *argv[] = {"sh", "-c", (char *)script, 0};
        sys(NR_execve, (i64) "/bin/sh", (i64)argv, (i64)envp);
        put("isotest: /bin/sh: cannot execute\n");
        quit(127);
    }
    return wait_for(pid);
}

static __attribute__((noreturn, used)) void init_main(i64 *stack) {
    i64 argc = stack[0];
    char **argv = (char **)(stack + 1);
    char **envp = argv + argc + 1;
    /* Nothing in the sandbox may read this process's memory or attach to it. */
    sys(NR_prctl, PR_SET_DUMPABLE, 0, 0);
    sys(NR_prctl, PR_SET_NAME, (i64) "isotest-init", 0);
    /* Block every signal: as pid 1 only SIGKILL from outside the namespace ends it, and the
     * ones it acts on (SIGCHLD, SIGTERM) it takes with rt_sigtimedwait. */
    u64 all = ~0UL;
    sys6(NR_rt_sigprocmask, SIG_SETMASK, (i64)&all, 0, 8, 0, 0);
    const char *setup = 0, *teardown = 0;
    i64 first = 1;
    if (argc >= 3 && argv[1][0] == 0) {
        const char *stages = argv[2];
        first = 3;
        if (stages[0] == 'r' && stages[1] == 0 && argc == 3) reap_forever();
        for (; *stages; stages++) {
            if (*stages == 's' && first < argc) setup = argv[first++];
            if (*stages == 't' && first < argc) teardown = argv[first++];
        }
    }
    if (argc <= first) {
        put("isotest-init: no command\n");
        quit(2);
    }
    if (setup) {
        int code = run(setup, 0, envp);
        report("setup", code);
        if (code != 0 || terminated) quit(0);
    }
    report("command", run(0, argv + first, envp));
    if (teardown && !terminated) report("teardown", run(teardown, 0, envp));
    quit(0);
}

/* Entry: hand the initial stack (argc, argv..., 0, envp..., 0) to init_main. */
#if defined(__x86_64__)
__asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call init_main\n");
#else
__asm__(".globl _start\n_start:\n  mov x0, sp\n  bl init_main\n");
#endif

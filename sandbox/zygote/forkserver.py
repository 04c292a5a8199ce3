# isotest's fork server: the isolation half of a zygote. It runs inside a sandbox (its own
# user, mount, pid, network, ipc, uts and cgroup namespaces, cgroup limits, seccomp) as a
# long-lived process that has already done the slow part of starting a test (a framework
# runner adds `prepare`: import the framework, collect the tests). For each request it forks,
# and the child makes itself a fresh sandbox of its own before it runs exactly one test:
#
#   parent (before fork)  setns back to its own pid namespace, unshare(CLONE_NEWPID): the
#                         child is pid 1 of a new pid namespace
#   child (pid 1)         joins the test's cgroup (fds passed by the worker), unshares mount,
#                         network, ipc, uts and cgroup namespaces, mounts a private tmpfs
#                         /tmp and /dev/shm, a private copy-on-write overlay of the
#                         workspace, a fresh devpts and proc, brings its loopback up, takes
#                         the test's stdout and stderr, closes the server's own fds (the
#                         control socket, the other children's pidfds), drops every
#                         capability, installs the strict seccomp filter, then forks the
#                         test as pid 2 (as a cold sandbox has it) and reaps until it ends,
#                         exiting with its status as a shell gives it (128 + a signal)
#
# The worker talks to it over a SOCK_SEQPACKET socket at fd 6, one JSON message a packet:
#   worker -> server   {"op": "configure", "seccomp": hex, "tmp_bytes": n}
#                      {"op": "fork", "id": n, "request": {"env": {...}, ...}} + fds
#                      [stdout, stderr, result, cgroup.procs...]
#   server -> worker   {"event": "ready", "rss_bytes": n, ...} or {"event": "failed", "why": "..."}
#                      {"event": "started", "id": n} + [pidfd of the child]
#                      {"event": "exited", "id": n, "status": wait status}
#                      {"event": "refused", "id": n, "why": "..."}
# On the result fd the child writes "isolated\n" once its sandbox is made, then whatever the
# runner reports; a child that dies before that line failed to isolate itself.

import array
import ctypes
import fcntl
import gc
import json
import os
import selectors
import socket
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE = 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 38, 24, 47
PR_CAP_AMBIENT_CLEAR_ALL, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 4, 22, 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MAX_PACKET = 1 << 20
MAX_FDS = 16


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _mount(source, target, fstype, flags, data):
    enc = lambda s: s.encode() if s is not None else None
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), "mount " + target)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class ForkServer:
    def __init__(self, control_fd=6):
        self.sock = socket.socket(fileno=control_fd)
        self.pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.children = {}
        self.seccomp = b""
        self.tmp_bytes = 64 << 20
        self.workspace = os.getcwd()
        self.cap_last = int(open("/proc/sys/kernel/cap_last_cap").read())

    def send(self, message, fds=()):
        data = json.dumps(message).encode()
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.send(data)

    def receive(self):
        data, ancdata, _flags, _addr = self.sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(MAX_FDS * 4))
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if not data:
            return None, []
        return json.loads(data), list(fds)

    def serve(self, prepare, run_one):
        """Prepares once (a dict of facts for the worker, or an exception that explains why it
        cannot), then forks a child per request until the worker closes the socket."""
        try:
            facts = prepare() or {}
        except BaseException as e:  # noqa: BLE001 - every failure is the worker's to hear of
            self.send({"event": "failed", "why": "%s: %s" % (type(e).__name__, e)})
            self.drain()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        facts["event"] = "ready"
        try:
            with open("/proc/self/statm") as f:
                facts["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        self.send(facts)
        sys.stdout.flush()
        sys.stderr.flush()
        # Keep what was built so far out of the cyclic collector: a child that ran a collection
        # would write to every tracked object's header and copy the whole heap.
        gc.freeze()
        events = selectors.DefaultSelector()
        self.events = events
        events.register(self.sock, selectors.EVENT_READ, None)
        while True:
            for key, _mask in events.select():
                if key.data is None:
                    message, fds = self.receive()
                    if message is None:
                        os._exit(0)
                    self.handle(message, fds, run_one, events)
                else:
                    self.reap(key.data, events)

    def drain(self):
        # Read what the worker sent and this server will not handle (its configure message):
        # a socket closed with unread data resets the connection, and the worker would lose
        # the message just sent.
        self.sock.setblocking(False)
        try:
            while self.sock.recv(MAX_PACKET):
                pass
        except OSError:
            pass

    def handle(self, message, fds, run_one, events):
        op = message.get("op")
        if op == "configure":
            self.seccomp = bytes.fromhex(message["seccomp"])
            self.tmp_bytes = int(message.get("tmp_bytes", self.tmp_bytes))
            for fd in fds:
                os.close(fd)
            return
        if op != "fork" or len(fds) < 3:
            for fd in fds:
                os.close(fd)
            self.send({"event": "refused", "id": message.get("id"), "why": "a malformed request"})
            return
        ident = message["id"]
        try:
            _check(_libc.setns(self.pidns, CLONE_NEWPID), "setns to the zygote's pid namespace")
            _check(_libc.unshare(CLONE_NEWPID), "unshare a pid namespace")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            self.send({"event": "refused", "id": ident, "why": str(e)})
            return
        if pid == 0:
            self.child(message.get("request") or {}, fds, run_one)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = (pid, ident)
        events.register(pidfd, selectors.EVENT_READ, pidfd)
        self.send({"event": "started", "id": ident}, [pidfd])

    def reap(self, pidfd, events):
        pid, ident = self.children.pop(pidfd)
        events.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.send({"event": "exited", "id": ident, "status": status})

    def child(self, request, fds, run_one):
        result = fds[2]
        try:
            self.isolate(fds)
        except BaseException as e:  # noqa: BLE001 - the worker reads the reason on stderr
            try:
                os.write(fds[1], ("isotest: the warm sandbox could not be made: %s\n" % e).encode())
            finally:
                os._exit(125)
        os.write(result, b"isolated\n")
        # As in a cold sandbox, the test is pid 2 under an init that reaps what it leaves and
        # reports how it ended: pid 1 ignores signals it has no handler for, even its own.
        try:
            test = os.fork()
        except OSError as e:
            os.write(2, ("isotest: cannot start the test: %s\n" % e).encode())
            os._exit(125)
        if test == 0:
            try:
                os.environ.update(request.get("env") or {})
                code = run_one(request, result)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - a crash of the runner is the test's error
                import traceback

                traceback.print_exc()
                code = 3
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(result)
        code = 1
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == test:
                # The status as a shell gives it: the exit code, or 128 + the signal.
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
                break
        os._exit(code)

    def isolate(self, fds):
        stdout, stderr, result = fds[0], fds[1], fds[2]
        # Into the test's own cgroup first, so everything after is charged to it.
        for fd in fds[3:]:
            os.write(fd, b"0")
            os.close(fd)
        os.setsid()
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        # The workspace: a private copy-on-write view of the zygote's. Its upper layer lives on
        # a scratch tmpfs that the test's own /tmp then hides.
        size = "size=%d" % self.tmp_bytes
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=700," + size)
        os.mkdir("/tmp/upper")
        os.mkdir("/tmp/work")
        _mount("overlay", self.workspace, "overlay", MS_NOSUID | MS_NODEV,
               "lowerdir=%s,upperdir=/tmp/upper,workdir=/tmp/work" % self.workspace)
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777," + size)
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777," + size)
        _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        with socket.socket() as s:
            flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
        os.chdir(self.workspace)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        for fd in (null, stdout, stderr):
            if fd > 2:
                os.close(fd)
        # What would let a test reach the worker or another test: the control socket, the
        # other children's pidfds, the server's own. What the runner's preparation opened
        # (a log file, a conftest's connection) stays, as it would in any forked runner.
        for fd in list(self.children):
            os.close(fd)
        self.events.close()
        self.sock.close()
        os.close(self.pidns)
        os.set_inheritable(result, False)
        self.drop_privileges()

    def drop_privileges(self):
        for cap in range(self.cap_last + 1):
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability %d" % cap)
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
        header = _CapHeader(0x20080522, 0)
        data = (_CapData * 2)()
        _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        if self.seccomp:
            program = ctypes.create_string_buffer(self.seccomp, len(self.seccomp))
            fprog = _SockFprog(len(self.seccomp) // 8, ctypes.cast(program, ctypes.c_void_p))
            _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")

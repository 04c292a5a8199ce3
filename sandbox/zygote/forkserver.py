# isotest's fork server: the isolation half of a zygote. It runs inside a sandbox (its own
# user, mount, pid, network, ipc, uts and cgroup namespaces, cgroup limits, seccomp) as a
# long-lived process that has already done the slow part of starting a test (a framework
# runner adds `prepare`: import the framework, collect the tests). Each test runs in a child
# forked from it that made itself a fresh sandbox of its own before it runs exactly one test.
#
# The making is done ahead, as Android's zygote keeps a pool of unspecialized app processes:
# the server keeps `spares` children that are isolated as far as they can be before a test is
# known, each waiting on a socket of its own; a request is handed to one, which finishes the
# few steps that need the test's own descriptors, and the server forks a new spare.
#
#   server (per spare)    setns back to its own pid namespace, unshare(CLONE_NEWPID), then
#                         starts the spare's init and forks the spare itself, pid 1 and pid 2
#                         of a new pid namespace (every child after the unshare lands there);
#                         both are its own children, and a test costs one fork of the zygote
#   spare pid 1 (init)    `isotest-init "" r`, exec'd from the memfd the worker passed (vfork
#                         and exec: nothing of the interpreter): first makes itself
#                         non-dumpable (so no test can read it or reach the zygote's mounts
#                         through /proc/1), closes every descriptor it inherited, then reaps
#                         whatever the test leaves and passes SIGTERM on to every process of
#                         its namespace, until the server kills it
#   spare pid 2 (waiting) unshares mount, network, ipc and uts namespaces, mounts a private
#                         tmpfs /tmp and /dev/shm, a private copy-on-write overlay of the
#                         workspace, a fresh devpts and proc, brings its loopback up, closes
#                         the server's own fds (the control socket, the other children's
#                         pidfds and sockets), drops the capability bounding set and ambient
#                         capabilities, sets no_new_privs, and waits for its one request; then
#                         moves pid 1 and itself into the test's cgroup (fds passed by the
#                         worker), unshares a cgroup namespace rooted there, takes the test's
#                         stdout and stderr, drops its last capabilities, installs the strict
#                         seccomp filter and runs the test
#   server (test ended)   reaps pid 2 and kills pid 1, which ends the namespace and whatever
#                         is left in it; the worker hears the test's own wait status
# A spare has seen nothing of any test before its own: it is a fork of the zygote, made after
# the zygote stopped changing, and it runs one test once.
#
# The worker talks to it over a SOCK_SEQPACKET socket at fd 6, one JSON message a packet:
#   worker -> server   {"op": "configure", "seccomp": hex, "tmp_bytes": n, "spares": n}
#                      + [the isotest-init memfd]
#                      {"op": "fork", "id": n, "request": {"env": {...}, ...}} + fds
#                      [stdout, stderr, result, cgroup.procs...]
#   server -> worker   {"event": "ready", "rss_bytes": n, ...} or {"event": "failed", "why": "..."}
#                      {"event": "started", "id": n} + [pidfd of the test's pid 1]
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
import signal
import socket
import struct
import sys
from collections import deque

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
        # A running test's pidfd -> (its pid, the request's id, its init's pid and pidfd).
        self.children = {}
        # An ended test's init, killed and not yet gone: its pidfd -> (pid, id, status).
        self.ending = {}
        # Ready spares: (pidfd, pid, the socket their request goes to, init pid, init pidfd).
        self.spares = deque()
        self.wanted = 0
        self.broken = None
        self.seccomp = b""
        # `isotest-init` (a memfd the worker passes), exec'd as each test's pid 1.
        self.init_program = None
        self.tmp_bytes = 64 << 20
        self.workspace = os.getcwd()
        self.cap_last = int(open("/proc/sys/kernel/cap_last_cap").read())

    def send(self, message, fds=(), sock=None):
        data = json.dumps(message).encode()
        sock = sock or self.sock
        if fds:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            sock.send(data)

    def receive(self, sock=None):
        sock = sock or self.sock
        data, ancdata, _flags, _addr = sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(MAX_FDS * 4))
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
        if not data:
            return None, list(fds)
        return json.loads(data), list(fds)

    def serve(self, prepare, run_one):
        """Prepares once (a dict of facts for the worker, or an exception that explains why it
        cannot), then hands each request to a spare child until the worker closes the socket."""
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
        self.run_one = run_one
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
                    self.handle(message, fds)
                else:
                    self.reap(key.data)
            self.refill()

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

    def handle(self, message, fds):
        op = message.get("op")
        if op == "configure":
            self.seccomp = bytes.fromhex(message["seccomp"])
            self.tmp_bytes = int(message.get("tmp_bytes", self.tmp_bytes))
            self.wanted = max(0, min(int(message.get("spares", 1)), 8))
            if fds:
                self.init_program = fds.pop(0)
            else:
                self.broken = "the worker passed no isotest-init"
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
            if self.broken:
                raise OSError(0, self.broken)
            pidfd, pid, sock, init_pid, init_fd = self.spares.popleft() if self.spares else self.spawn(fds)
            self.send({"request": message.get("request") or {}}, fds, sock)
        except OSError as e:
            self.send({"event": "refused", "id": ident, "why": e.strerror or str(e)})
            return
        finally:
            # The spare has its copies now (or none is made).
            for fd in fds:
                os.close(fd)
        sock.close()
        self.children[pidfd] = (pid, ident, init_pid, init_fd)
        # The worker watches and kills the test through its init: killing it ends the pid
        # namespace and everything in it.
        self.send({"event": "started", "id": ident}, [init_fd])

    def refill(self):
        while not self.broken and self.seccomp and len(self.spares) < self.wanted:
            try:
                self.spares.append(self.spawn())
            except OSError as e:
                self.broken = "cannot fork a test: %s" % e
                return

    def spawn(self, passing=()):
        """Forks a spare: its init and itself, pid 1 and pid 2 of a new pid namespace, the
        second isolating itself while it waits. `passing` are descriptors the server holds
        for a request: not the spare's to keep."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            _check(_libc.setns(self.pidns, CLONE_NEWPID), "setns to the zygote's pid namespace")
            _check(_libc.unshare(CLONE_NEWPID), "unshare a pid namespace")
            sys.stdout.flush()
            sys.stderr.flush()
            # vfork and exec: no copy of this interpreter's page tables, nothing of it to fault
            # in or tear down (a forked pid 1 cost about 2 ms of CPU a test).
            init_pid = os.posix_spawn("/proc/self/fd/%d" % self.init_program, ["isotest-init", "", "r"], {})
        except OSError:
            ours.close()
            theirs.close()
            raise
        init_fd = None
        try:
            init_fd = os.pidfd_open(init_pid)
            # Into the same new namespace: every child forked since the unshare lands there.
            pid = os.fork()
        except OSError:
            os.kill(init_pid, signal.SIGKILL)
            os.waitpid(init_pid, 0)
            if init_fd is not None:
                os.close(init_fd)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            os.close(init_fd)
            for fd in passing:
                os.close(fd)
            self.spare(theirs)
        theirs.close()
        pidfd = os.pidfd_open(pid)
        self.events.register(pidfd, selectors.EVENT_READ, pidfd)
        return pidfd, pid, ours, init_pid, init_fd

    def reap(self, pidfd):
        self.events.unregister(pidfd)
        if pidfd in self.ending:
            init_pid, ident, status = self.ending.pop(pidfd)
            os.close(pidfd)
            os.waitpid(init_pid, 0)
            self.send({"event": "exited", "id": ident, "status": status})
            return
        if pidfd in self.children:
            pid, ident, init_pid, init_fd = self.children.pop(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            # Told once the init is gone: killing it ends what the test left running.
            self.end_init(init_fd)
            self.ending[init_fd] = (init_pid, ident, status)
            self.events.register(init_fd, selectors.EVENT_READ, init_fd)
            return
        # A spare that ended before it was used: it could not isolate itself, and says why.
        for spare in list(self.spares):
            if spare[0] == pidfd:
                self.spares.remove(spare)
                _, pid, sock, init_pid, init_fd = spare
                os.close(pidfd)
                os.waitpid(pid, 0)
                self.end_init(init_fd)
                os.close(init_fd)
                os.waitpid(init_pid, 0)
                sock.setblocking(False)
                try:
                    why = sock.recv(MAX_PACKET).decode(errors="replace")
                except OSError:
                    why = ""
                sock.close()
                self.broken = why or "a spare child ended before its test"
                return

    def end_init(self, init_fd):
        try:
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone already: the worker killed it

    def spare(self, sock):
        """Pid 2 of a spare: isolates what can be isolated before the test is known, then
        waits for its test. Never returns."""
        try:
            self.isolate(sock)
        except BaseException as e:  # noqa: BLE001 - the server reads the reason on the socket
            try:
                sock.send(("the warm sandbox could not be made: %s" % e).encode())
            finally:
                os._exit(125)
        self.test(sock)

    def isolate(self, sock):
        os.setsid()
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
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
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        # What would let a test reach the worker or another test: the control socket, the
        # other children's pidfds and sockets, the server's own. What the runner's preparation
        # opened (a log file, a conftest's connection) stays, as it would in any forked runner.
        for fd, (_pid, _ident, _init_pid, init_fd) in self.children.items():
            os.close(fd)
            os.close(init_fd)
        for fd in self.ending:
            os.close(fd)
        for pidfd, _pid, other, _init_pid, init_fd in self.spares:
            os.close(pidfd)
            os.close(init_fd)
            other.close()
        self.events.close()
        self.sock.close()
        os.close(self.pidns)
        os.close(self.init_program)
        # What needs no test: the bounding set, ambient capabilities, no_new_privs.
        for cap in range(self.cap_last + 1):
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability %d" % cap)
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

    def test(self, sock):
        """Pid 2 of a spare, isolated: waits for its one request, finishes its sandbox with
        the test's own descriptors, and runs it. Never returns."""
        try:
            request, fds = self.receive(sock)
        except (OSError, ValueError):
            os._exit(0)
        sock.close()
        if request is None or len(fds) < 3:
            # The server went away, or discarded this spare.
            os._exit(0)
        stdout, stderr, result = fds[0], fds[1], fds[2]
        try:
            # Into the test's own cgroup first, its init too, so everything after is charged
            # to it; then a cgroup namespace rooted there.
            for fd in fds[3:]:
                os.write(fd, b"1")
                os.write(fd, b"0")
                os.close(fd)
            _check(_libc.unshare(CLONE_NEWCGROUP), "unshare a cgroup namespace")
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            for fd in (stdout, stderr):
                if fd > 2:
                    os.close(fd)
            os.set_inheritable(result, False)
            self.drop_privileges()
        except BaseException as e:  # noqa: BLE001 - the worker reads the reason on stderr
            try:
                os.write(2, ("isotest: the warm sandbox could not be made: %s\n" % e).encode())
            finally:
                os._exit(125)
        os.write(result, b"isolated\n")
        request = request.get("request") or {}
        try:
            os.environ.update(request.get("env") or {})
            code = self.run_one(request, result)
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

    def drop_privileges(self):
        # The bounding set went before the test was known; what is left: every capability
        # this process holds, then the strict filter.
        header = _CapHeader(0x20080522, 0)
        data = (_CapData * 2)()
        _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
        if self.seccomp:
            program = ctypes.create_string_buffer(self.seccomp, len(self.seccomp))
            fprog = _SockFprog(len(self.seccomp) // 8, ctypes.cast(program, ctypes.c_void_p))
            _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")

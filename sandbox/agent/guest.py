# Portcullis in-sandbox agent. PID 1 of every sandbox; runs as the unprivileged sandbox user.
#
# Started as `python3 -I -S -B -c <bootstrap>`; the bootstrap reads this source from stdin, then this
# code reads one JSON line of start-up parameters (the per-sandbox channel key among them) from stdin
# and replaces stdin by /dev/null. The key is never in the environment, on argv or in a file.
#
# The host dials the agent (the guest listens, NFR-SEC-43) on the session network. A connection is
# accepted only from the host's address on that network (the gateway); loopback and the sandbox's own
# addresses are refused, then both sides prove knowledge of the key (HMAC-SHA256 challenge/response)
# before any request is read. One request per connection.
#
# Frames: 4-byte big-endian payload length, 1-byte type, payload (at most MAX_FRAME bytes).

import base64
import ctypes
import errno
import hashlib
import hmac
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

VERSION = 1
MAX_FRAME = 1 << 20
CHUNK = 256 * 1024

T_JSON, T_STDOUT, T_STDERR, T_STDIN, T_STDIN_EOF, T_DATA, T_DATA_END = 1, 2, 3, 4, 5, 6, 7

HEADER = struct.Struct(">IB")


def log(msg):
    try:
        os.write(2, ("portcullis-agent: %s\n" % msg).encode("utf-8", "replace"))
    except OSError:
        pass


class ProtocolError(Exception):
    pass


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.send_lock = threading.Lock()

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError()
            buf += chunk
        return bytes(buf)

    def recv_frame(self):
        length, ftype = HEADER.unpack(self.recv_exact(HEADER.size))
        if length > MAX_FRAME:
            raise ProtocolError("frame too large")
        payload = self.recv_exact(length) if length else b""
        return ftype, payload

    def recv_json(self):
        ftype, payload = self.recv_frame()
        if ftype != T_JSON:
            raise ProtocolError("expected a JSON frame")
        return json.loads(payload)

    def send(self, ftype, payload=b""):
        with self.send_lock:
            self.sock.sendall(HEADER.pack(len(payload), ftype) + payload)

    def send_json(self, obj):
        self.send(T_JSON, json.dumps(obj, separators=(",", ":")).encode())


# ------------------------------------------------------------------------------------------------
# state


class State:
    def __init__(self, init):
        self.key = base64.b64decode(init["key"])
        self.port = int(init["port"])
        self.host_addr = init["hostAddr"]
        self.base_env = dict(init.get("baseEnv") or {})
        self.session_env = {}
        self.deny_patterns = [compile_pattern(p) for p in init.get("denyPatterns") or []]
        self.reserved = set(n.upper() for n in init.get("reserved") or [])
        self.mem_soft_limit = int(init.get("memSoftLimit") or 0)
        self.lock = threading.Lock()


def compile_pattern(p):
    import re

    return re.compile("^" + ".*".join(re.escape(x) for x in p.split("*")) + "$", re.IGNORECASE)


STATE = None

# pid -> ExecRecord; guarded by CHILD_LOCK (spawns happen under it so the reaper never misses one)
CHILD_LOCK = threading.Lock()
CHILD_COND = threading.Condition(CHILD_LOCK)
CHILDREN = {}
ACTIVE = set()


class ExecRecord:
    def __init__(self):
        self.pid = None
        self.pgid = None
        self.status = None
        self.kill_reason = None
        self.wake_r, self.wake_w = os.pipe()
        self.done = threading.Event()

    def kill(self, reason):
        if self.kill_reason is None:
            self.kill_reason = reason
        kill_group(self.pgid)


def kill_group(pgid):
    if not pgid or pgid <= 1:
        return
    # Repeat: members forking while the signal is delivered may leave a straggler.
    for _ in range(20):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if not group_alive(pgid):
            return
        time.sleep(0.01)


def group_alive(pgid):
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":
            continue
        st = read_stat(name)
        if st and st[2] == pgid and st[0] != "Z":
            return True
    return False


def read_stat(pid):
    # returns (state, ppid, pgrp, rss_pages) or None
    try:
        with open("/proc/%s/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        rest = data[data.rindex(b")") + 2 :].split()
        return (rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[21]))
    except (ValueError, IndexError):
        return None


def reaper():
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            with CHILD_LOCK:
                CHILD_COND.wait(1.0)
            continue
        except InterruptedError:
            continue
        with CHILD_LOCK:
            rec = CHILDREN.pop(pid, None)
        if rec is not None:
            rec.status = status
            rec.done.set()
            try:
                os.write(rec.wake_w, b"x")
            except OSError:
                pass


# ------------------------------------------------------------------------------------------------
# memory watchdog: kill the biggest process group before the host's limit kills the whole sandbox


def mem_used():
    # cgroup (runc) when it carries a real limit, else the kernel's view (gVisor accounts per sandbox)
    try:
        with open("/sys/fs/cgroup/memory/memory.usage_in_bytes") as f:
            usage = int(f.read())
        with open("/sys/fs/cgroup/memory/memory.limit_in_bytes") as f:
            limit = int(f.read())
        if limit < (1 << 50):
            return usage
    except (OSError, ValueError):
        pass
    total = avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                elif line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                if total is not None and avail is not None:
                    break
    except OSError:
        return 0
    if total is None or avail is None:
        return 0
    return total - avail


def biggest_group():
    groups = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":
            continue
        st = read_stat(name)
        if not st or st[2] <= 1:
            continue
        groups[st[2]] = groups.get(st[2], 0) + st[3] * 4096
    if not groups:
        return None, 0
    pgid = max(groups, key=groups.get)
    return pgid, groups[pgid]


def oom_kills():
    try:
        with open("/sys/fs/cgroup/memory/memory.oom_control") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def watchdog():
    limit = STATE.mem_soft_limit
    if limit <= 0:
        return
    while True:
        time.sleep(0.02 if ACTIVE else 0.2)
        if mem_used() <= limit:
            continue
        pgid, rss = biggest_group()
        if pgid is None or rss < 16 * 1024 * 1024:
            continue
        with CHILD_LOCK:
            recs = [r for r in ACTIVE if r.pgid == pgid]
        for r in recs:
            if r.kill_reason is None:
                r.kill_reason = "oom"
        log("memory above the soft limit; killing process group %d (rss %d MiB)" % (pgid, rss >> 20))
        kill_group(pgid)
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# exec


def exec_env(extra):
    env = dict(STATE.base_env)
    env.update(STATE.session_env)
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        if STATE.reserved and name.upper() in STATE.reserved:
            continue
        if any(p.match(name) for p in STATE.deny_patterns):
            continue
        if "\0" in name or "\0" in value or "=" in name or not name:
            continue
        env[name] = value
    return env


def op_exec(conn, req):
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        conn.send_json({"t": "error", "code": "bad_request", "message": "argv"})
        return
    cwd = req.get("cwd") or "/workspace"
    timeout = max(1, int(req.get("timeoutMs") or 300000)) / 1000.0
    cap = max(0, int(req.get("maxOutputBytes") or (8 << 20)))
    has_stdin = bool(req.get("stdin"))
    env = exec_env(req.get("env"))
    rec = ExecRecord()
    started = time.monotonic()
    oom_before = oom_kills()
    with CHILD_LOCK:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if has_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                close_fds=True,
                process_group=0,
                bufsize=0,
            )
        except OSError as e:
            code = 127 if e.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            if e.filename == cwd or (e.errno == errno.ENOENT and not os.path.isdir(cwd)):
                msg = "portcullis: cannot use working directory %s: %s\n" % (cwd, e.strerror)
                code = 126
            else:
                msg = "portcullis: cannot run %s: %s\n" % (argv[0], e.strerror)
            data = msg.encode()
            conn.send(T_STDERR, data[:cap])
            conn.send_json({"t": "exit", "outcome": "exited", "exitCode": code, "signal": None,
                            "stdoutBytes": 0, "stderrBytes": len(data), "durationMs": 0})
            os.close(rec.wake_r)
            os.close(rec.wake_w)
            return
        rec.pid = proc.pid
        rec.pgid = proc.pid
        CHILDREN[proc.pid] = rec
        ACTIVE.add(rec)
        CHILD_COND.notify_all()

    def pump():
        # host -> agent: stdin data, stdin EOF, cancel; a closed connection kills the command
        try:
            while not rec.done.is_set():
                ftype, payload = conn.recv_frame()
                if ftype == T_STDIN and proc.stdin is not None:
                    try:
                        proc.stdin.write(payload)
                    except (BrokenPipeError, OSError, ValueError):
                        pass
                elif ftype == T_STDIN_EOF and proc.stdin is not None:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass
                elif ftype == T_JSON:
                    msg = json.loads(payload)
                    if msg.get("t") == "cancel":
                        rec.kill("cancel")
        except (EOFError, OSError, ProtocolError, ValueError):
            if not rec.done.is_set():
                rec.kill("disconnect")

    threading.Thread(target=pump, daemon=True).start()

    sel = selectors.DefaultSelector()
    counters = {T_STDOUT: [0, 0], T_STDERR: [0, 0]}  # [forwarded, produced]
    streams = {proc.stdout.fileno(): T_STDOUT, proc.stderr.fileno(): T_STDERR}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    sel.register(rec.wake_r, selectors.EVENT_READ)
    deadline = started + timeout
    exited_at = None
    grace = 0.2
    try:
        while True:
            now = time.monotonic()
            if rec.done.is_set() and exited_at is None:
                exited_at = now
            if exited_at is not None and (not streams or now - exited_at >= grace):
                break
            if now >= deadline and rec.kill_reason is None and exited_at is None:
                rec.kill("timeout")
            if exited_at is None:
                wait = deadline - now if rec.kill_reason is None else 0.05
            else:
                wait = grace - (now - exited_at)
            for key, _ in sel.select(max(0.0, min(wait, 1.0))):
                fd = key.fd
                if fd == rec.wake_r:
                    try:
                        os.read(fd, 64)
                    except OSError:
                        pass
                    continue
                ftype = streams.get(fd)
                if ftype is None:
                    continue
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    del streams[fd]
                    continue
                c = counters[ftype]
                c[1] += len(data)
                room = cap - c[0]
                if room > 0:
                    part = data[:room]
                    c[0] += len(part)
                    conn.send(ftype, part)
            if rec.kill_reason is not None and exited_at is None:
                # a killed group may still have members forking; keep at it until the exit is reaped
                kill_group(rec.pgid)
    except (OSError, EOFError):
        rec.kill("disconnect")
    finally:
        sel.close()
        with CHILD_LOCK:
            ACTIVE.discard(rec)
        for f in (proc.stdout, proc.stderr, proc.stdin):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
    rec.done.wait(5.0)
    os.close(rec.wake_r)
    os.close(rec.wake_w)
    # the reaper owns waitpid; a set returncode keeps Popen from ever polling a recycled pid
    proc.returncode = 0
    duration = int((time.monotonic() - started) * 1000)
    status = rec.status
    outcome, code, sig = "exited", None, None
    if status is not None:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
        elif os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
    if rec.kill_reason == "timeout":
        outcome, code = "timed_out", None
    elif rec.kill_reason == "oom":
        outcome, code = "oom", None
    elif rec.kill_reason in ("cancel", "disconnect"):
        outcome, code = "killed", None
    elif sig is not None:
        after = oom_kills()
        kernel_oom = sig == signal.SIGKILL and after is not None and oom_before is not None and after > oom_before
        outcome = "oom" if kernel_oom else "killed"
    elif status is None:
        outcome = "killed"
    try:
        conn.send_json({"t": "exit", "outcome": outcome, "exitCode": code, "signal": sig,
                        "stdoutBytes": counters[T_STDOUT][1], "stderrBytes": counters[T_STDERR][1],
                        "durationMs": duration})
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------
# files: the host checked the canonical path against its rules; the agent acts only when the path
# still resolves to exactly that (no symlink swapped in) and never follows a link on the last component


def canonical(path):
    return os.path.realpath(path)


def require_canonical(path):
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise FileOpError("bad_path", "not an absolute path")
    if canonical(path) != path:
        raise FileOpError("changed", "path no longer resolves to the checked location")


class FileOpError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message


def kind_of(mode):
    import stat as st

    if st.S_ISREG(mode):
        return "file"
    if st.S_ISDIR(mode):
        return "dir"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


def op_resolve(conn, req):
    path = req.get("path")
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise FileOpError("bad_path", "not an absolute path")
    real = canonical(path)
    try:
        st = os.lstat(real)
        conn.send_json({"t": "result", "canonical": real, "exists": True, "type": kind_of(st.st_mode), "size": st.st_size})
    except FileNotFoundError:
        conn.send_json({"t": "result", "canonical": real, "exists": False, "type": None, "size": 0})


def op_read(conn, req):
    path = req["path"]
    max_bytes = int(req.get("maxBytes") or (8 << 20))
    require_canonical(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileOpError("not_found", "no such file")
    except IsADirectoryError:
        raise FileOpError("is_dir", "is a directory")
    except OSError as e:
        raise FileOpError("io", e.strerror or "cannot open")
    try:
        import stat as st

        info = os.fstat(fd)
        if not st.S_ISREG(info.st_mode):
            raise FileOpError("not_file", "not a regular file")
        if info.st_size > max_bytes:
            raise FileOpError("too_large", "file is %d bytes, the limit is %d" % (info.st_size, max_bytes))
        conn.send_json({"t": "file", "size": info.st_size})
        sent = 0
        while True:
            data = os.read(fd, min(CHUNK, max_bytes + 1 - sent))
            if not data:
                break
            sent += len(data)
            if sent > max_bytes:
                conn.send_json({"t": "error", "code": "too_large", "message": "file grew past the limit"})
                return
            conn.send(T_DATA, data)
        conn.send(T_DATA_END)
        conn.send_json({"t": "result", "size": sent})
    finally:
        os.close(fd)


def op_write(conn, req):
    import secrets

    path = req["path"]
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or path.endswith("/"):
        raise FileOpError("bad_path", "not an absolute path")
    parent = os.path.dirname(path)
    max_bytes = int(req.get("maxBytes") or (8 << 20))
    if req.get("mkdirs"):
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as e:
            raise FileOpError("io", "cannot create the parent directory: %s" % (e.strerror or e))
    if canonical(parent) != parent:
        raise FileOpError("changed", "parent directory no longer resolves to the checked location")
    if not os.path.isdir(parent):
        raise FileOpError("not_found", "parent directory does not exist")
    mode = 0o644
    try:
        st = os.lstat(path)
        import stat as stmod

        if stmod.S_ISDIR(st.st_mode):
            raise FileOpError("is_dir", "is a directory")
        if stmod.S_ISLNK(st.st_mode):
            raise FileOpError("changed", "a symbolic link appeared at the path")
        mode = stmod.S_IMODE(st.st_mode)
    except FileNotFoundError:
        pass
    expect = req.get("ifSha256")
    tmp = os.path.join(parent, ".portcullis-%s.tmp" % secrets.token_hex(8))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    ok = False
    try:
        total = 0
        while True:
            ftype, payload = conn.recv_frame()
            if ftype == T_DATA:
                total += len(payload)
                if total > max_bytes:
                    raise FileOpError("too_large", "content larger than the limit")
                view = memoryview(payload)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            elif ftype == T_DATA_END:
                break
            else:
                raise ProtocolError("unexpected frame during write")
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if expect is not None:
            h = hashlib.sha256()
            try:
                with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as cur:
                    for block in iter(lambda: cur.read(CHUNK), b""):
                        h.update(block)
            except FileNotFoundError:
                raise FileOpError("conflict", "the file disappeared")
            if h.hexdigest() != expect:
                raise FileOpError("conflict", "the file changed since it was read")
        os.rename(tmp, path)
        ok = True
        conn.send_json({"t": "result", "size": total})
    finally:
        if fd >= 0:
            os.close(fd)
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def op_list(conn, req):
    path = req["path"]
    limit = int(req.get("max") or 10000)
    require_canonical(path)
    entries = []
    truncated = False
    try:
        with os.scandir(path) as it:
            for e in it:
                if len(entries) >= limit:
                    truncated = True
                    break
                try:
                    st = e.stat(follow_symlinks=False)
                    entries.append({"name": e.name, "type": kind_of(st.st_mode), "size": st.st_size})
                except OSError:
                    entries.append({"name": e.name, "type": "other", "size": 0})
    except FileNotFoundError:
        raise FileOpError("not_found", "no such directory")
    except NotADirectoryError:
        raise FileOpError("not_dir", "not a directory")
    entries.sort(key=lambda x: x["name"])
    conn.send_json({"t": "result", "entries": entries, "truncated": truncated})


# ------------------------------------------------------------------------------------------------
# lifecycle


def op_ping(conn, req):
    u = os.uname()
    conn.send_json({"t": "result", "version": VERSION, "pid": os.getpid(), "uid": os.getuid(),
                    "release": u.release, "sysname": u.sysname})


def op_configure(conn, req):
    env = req.get("sessionEnv") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise FileOpError("bad_request", "sessionEnv")
    with STATE.lock:
        STATE.session_env = dict(env)
    conn.send_json({"t": "result", "ok": True})


def op_rekey(conn, req):
    key = base64.b64decode(req["key"])
    if len(key) < 32:
        raise FileOpError("bad_request", "key too short")
    with STATE.lock:
        STATE.key = key
    conn.send_json({"t": "result", "ok": True})


def op_scrub(conn, req):
    # stop every other process (nothing writes while the surfaces are wiped), then empty the surfaces
    stopped = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "1":
            try:
                os.kill(int(name), signal.SIGSTOP)
                stopped += 1
            except OSError:
                pass
    with STATE.lock:
        STATE.session_env = {}
    files = 0
    size = 0
    for root in req.get("paths") or []:
        if not isinstance(root, str) or not root.startswith("/"):
            continue
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for fn in filenames:
                p = os.path.join(dirpath, fn)
                try:
                    st = os.lstat(p)
                    if not os.path.islink(p):
                        try:
                            fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW)
                            os.ftruncate(fd, 0)
                            os.close(fd)
                        except OSError:
                            pass
                    os.unlink(p)
                    files += 1
                    size += st.st_size
                except OSError:
                    pass
            for dn in dirnames:
                p = os.path.join(dirpath, dn)
                try:
                    if os.path.islink(p):
                        os.unlink(p)
                    else:
                        os.rmdir(p)
                except OSError:
                    pass
    conn.send_json({"t": "result", "stopped": stopped, "files": files, "bytes": size})


OPS = {
    "ping": op_ping,
    "configure": op_configure,
    "rekey": op_rekey,
    "exec": op_exec,
    "resolve": op_resolve,
    "read": op_read,
    "write": op_write,
    "list": op_list,
    "scrub": op_scrub,
}


def authenticate(conn):
    nonce = os.urandom(32)
    conn.send_json({"t": "hello", "v": VERSION, "nonce": base64.b64encode(nonce).decode()})
    msg = conn.recv_json()
    if msg.get("t") != "auth":
        raise ProtocolError("expected auth")
    host_nonce = base64.b64decode(msg.get("nonce") or "")
    if len(host_nonce) != 32:
        raise ProtocolError("bad nonce")
    with STATE.lock:
        key = STATE.key
    want = hmac.new(key, b"portcullis-agent-v1|host|" + nonce + host_nonce, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, str(msg.get("mac") or "")):
        raise ProtocolError("authentication failed")
    mac = hmac.new(key, b"portcullis-agent-v1|agent|" + host_nonce + nonce, hashlib.sha256).hexdigest()
    conn.send_json({"t": "ok", "mac": mac})


def handle(sock, peer):
    conn = Conn(sock)
    try:
        sock.settimeout(10.0)
        authenticate(conn)
        req = conn.recv_json()
        sock.settimeout(None)
        op = OPS.get(req.get("op"))
        if op is None:
            conn.send_json({"t": "error", "code": "bad_request", "message": "unknown op"})
            return
        try:
            op(conn, req)
        except FileOpError as e:
            conn.send_json({"t": "error", "code": e.code, "message": e.message})
        except (KeyError, TypeError, ValueError) as e:
            conn.send_json({"t": "error", "code": "bad_request", "message": type(e).__name__})
        except OSError as e:
            conn.send_json({"t": "error", "code": "io", "message": e.strerror or str(e)})
    except (EOFError, OSError, ProtocolError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def serve():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", STATE.port))
    srv.listen(64)
    while True:
        try:
            sock, peer = srv.accept()
        except InterruptedError:
            continue
        except OSError as e:
            log("accept: %s" % e)
            time.sleep(0.05)
            continue
        # only the host, from its address on the session network (NFR-SEC-43)
        if peer[0] != STATE.host_addr or peer[0].startswith("127."):
            try:
                sock.close()
            except OSError:
                pass
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(sock, peer), daemon=True).start()


def main():
    global STATE
    line = sys.stdin.buffer.readline(1 << 20)
    init = json.loads(line)
    STATE = State(init)
    del init, line
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        # not dumpable: other processes of the same user cannot ptrace the agent or read its memory
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)
    except Exception as e:  # noqa: BLE001
        log("prctl(PR_SET_DUMPABLE): %s" % e)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    threading.Thread(target=reaper, daemon=True).start()
    threading.Thread(target=watchdog, daemon=True).start()
    serve()


main()

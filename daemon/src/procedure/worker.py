"""The oetd worker harness: runs one observing script in this process on oetd's behalf.

A worker starts in one of two ways, and looks the same to oetd and to the script either
way. Cold: oetd starts this file with a socket on the file descriptor named by
OET_WORKER_FD. Forked: oetd starts this file once per interpreter as a zygote (a fork
server, OET_ZYGOTE_FD names its socket), which imports the harness and pypubsub once and
never runs a script; for each procedure oetd sends it a socket and two pipes, and it
forks a fresh worker that owns them. oetd moves that worker into the procedure's cgroup
before it hands it the script. Every procedure is a process no other script has touched.

oetd speaks JSON lines over the worker's socket (never over the script's stdout, which
belongs to the script).

From oetd:  {"op": "load", "path": ..., "init": {"args": [...], "kwargs": {...}}}
            {"op": "call", "function": ..., "args": [...], "kwargs": {...}}
            {"op": "event", "topic": ..., "msg_src": ..., "payload": {...}}
To oetd:    {"state": "IDLE" | "LOADING" | "INITIALISING" | "READY" | "COMPLETE"}
            {"state": "FAILED", "stacktrace": "..."}
            {"event": {"topic": ..., "payload": {...}}}
            {"subscribe": topic} | {"unsubscribe": topic}   ("" is every topic)

The script's pypubsub subscriptions are told to oetd as they change (through pypubsub's
notification handlers), and oetd hands the worker only events of those topics.

SIGTERM raises ProcedureStopped inside the script so that its finally: blocks run; oetd
kills everything in the procedure's cgroup if the script does not end within the grace
period.

oetd checks every message against what this harness says when: a state out of turn, a
line that is not a message, or anything after COMPLETE or FAILED fails the procedure.
So once the final state is sent, nothing more is (a thread the script left behind may
still publish while the process exits).
"""

import importlib.util
import json
import os
import queue
import signal
import socket
import stat
import sys
import threading
import traceback


class ProcedureStopped(BaseException):
    """Raised inside the script when oetd stops the procedure."""


_channel = None
_send_lock = threading.Lock()
_final_sent = False
_commands = queue.Queue()

try:
    from pubsub import pub
except ImportError:
    pub = None


def _send(message):
    global _final_sent
    data = (json.dumps(message, default=repr) + "\n").encode("utf-8")
    with _send_lock:
        if _final_sent:
            return
        _channel.sendall(data)
        _final_sent = message.get("state") in ("COMPLETE", "FAILED")


def _state(name, **extra):
    _send(dict(state=name, **extra))


class _Source(str):
    """The msg_src of a message delivered from oetd. Its identity marks that message, so
    that it is not sent back, while messages the script sends in response still are."""


def _forward(topic=pub.AUTO_TOPIC if pub else None, **kwargs):
    """Forwards every pypubsub message sent in this process to oetd."""
    if isinstance(kwargs.get("msg_src"), _Source):
        return
    _send({"event": {"topic": topic.getName(), "payload": kwargs}})


class _Subscriptions:
    """pypubsub's notification handler: tells oetd each topic the script starts or stops
    listening to, so that oetd hands this process only events of those topics."""

    def __init__(self):
        self._lock = threading.Lock()
        self._listeners = {}

    @staticmethod
    def _name(topic):
        name = topic.getName()
        return "" if name == pub.ALL_TOPICS else name

    def notifySubscribe(self, pubListener, topicObj, newSub):
        if not newSub or pubListener.getCallable() is _forward:
            return
        name = self._name(topicObj)
        with self._lock:
            count = self._listeners.get(name, 0)
            self._listeners[name] = count + 1
            if count == 0:
                _send({"subscribe": name})

    def _gone(self, topic):
        name = self._name(topic)
        with self._lock:
            count = self._listeners.get(name, 0)
            if count <= 1:
                if self._listeners.pop(name, None) is not None:
                    _send({"unsubscribe": name})
            else:
                self._listeners[name] = count - 1

    def notifyUnsubscribe(self, pubListener, topicObj):
        if pubListener.getCallable() is not _forward:
            self._gone(topicObj)

    def notifyDeadListener(self, pubListener, topicObj):
        self._gone(topicObj)

    def notifyDelTopic(self, topicName):
        with self._lock:
            for name in [
                n for n in self._listeners if n == topicName or n.startswith(topicName + ".")
            ]:
                del self._listeners[name]
                _send({"unsubscribe": name})

    def notifySend(self, *args, **kwargs):
        pass

    def notifyNewTopic(self, *args, **kwargs):
        pass


def _deliver(message):
    """Delivers an event from oetd's bus into this process's pypubsub."""
    if pub is None:
        return
    payload = message.get("payload")
    kwargs = dict(payload) if isinstance(payload, dict) else {"payload": payload}
    kwargs["msg_src"] = _Source(message.get("msg_src", ""))
    try:
        pub.sendMessage(message["topic"], **kwargs)
    except Exception:
        # A topic whose listeners expect other arguments cannot take this message;
        # that is the script's business, not a reason to stop reading.
        pass


def _read_commands():
    reader = _channel.makefile("r", encoding="utf-8")
    for line in reader:
        message = json.loads(line)
        if message.get("op") == "event":
            _deliver(message)
        else:
            _commands.put(message)
    # oetd closed the channel: it is gone, and so is the reason to run.
    os._exit(70)


def _on_sigterm(signum, frame):
    raise ProcedureStopped("procedure stopped by oetd")


class ScriptUnreadable(Exception):
    """The script's file cannot be read or compiled as Python. Its text is never quoted:
    the file may not be a script at all (a link to some other file), and the stack trace
    goes to everyone who may read."""


def _source(path):
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ScriptUnreadable(f"the script {path} is not a regular file")
        with open(path, "rb") as file:
            source = file.read()
    except OSError as err:
        raise ScriptUnreadable(
            f"cannot read the script {path}: {type(err).__name__}: {err.strerror}"
        ) from None
    try:
        return compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, UnicodeDecodeError) as err:
        line = getattr(err, "lineno", None)
        where = f" at line {line}" if line else ""
        raise ScriptUnreadable(
            f"the script {path} is not valid Python ({type(err).__name__}{where}); "
            "its text is not quoted here"
        ) from None


def _die_with(oetd):
    """From here on this process dies with oetd, whose child it is (a forked worker is
    reparented to oetd, a child subreaper, before it is handed its script)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (ImportError, OSError, AttributeError):
        return
    if os.getppid() != oetd:
        os._exit(70)


def _load(path, init):
    _state("LOADING")
    script_dir = os.path.dirname(path)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    # A git script's directory is a checkout shared by every procedure of its commit,
    # and read-only: Python must not write bytecode into it (nor beside any script).
    sys.dont_write_bytecode = True
    code = _source(path)
    spec = importlib.util.spec_from_file_location("__oet_script__", path)
    if spec is None:
        raise ImportError(f"cannot load a Python module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(code, module.__dict__)
    _state("IDLE")
    if callable(getattr(module, "init", None)):
        _state("INITIALISING")
        module.init(*init.get("args", []), **init.get("kwargs", {}))
    _state("READY")
    return module


def _call(module, function, args, kwargs):
    target = getattr(module, function, None)
    if not callable(target):
        raise AttributeError(f"script {module.__file__} has no function {function!r}")
    try:
        target(*args, **kwargs)
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise


def _listen():
    """Forwards what the script publishes, and says what it subscribes to."""
    if pub is None:
        return
    pub.subscribe(_forward, pub.ALL_TOPICS)
    pub.addNotificationHandler(_Subscriptions())
    pub.setNotificationFlags(subscribe=True, unsubscribe=True, deadListener=True, delTopic=True)


def _run(fd, oetd=None):
    """The worker's life on the channel `fd`; with `oetd`, it dies with that process once
    it has its script."""
    global _channel
    os.set_inheritable(fd, False)
    _channel = socket.socket(fileno=fd)
    signal.signal(signal.SIGTERM, _on_sigterm)
    threading.Thread(target=_read_commands, name="oetd-link", daemon=True).start()
    _state("IDLE")
    module = None
    try:
        while True:
            command = _commands.get()
            op = command.get("op")
            if op == "load":
                if oetd is not None:
                    _die_with(oetd)
                module = _load(command["path"], command.get("init", {}))
            elif op == "call":
                function = command["function"]
                _call(module, function, command.get("args", []), command.get("kwargs", {}))
                if function == "main":
                    _state("COMPLETE")
                    break
                _state("READY")
    except ProcedureStopped:
        sys.exit(0)
    except BaseException:
        _state("FAILED", stacktrace=traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads the script left behind must not keep the procedure alive after main.
    os._exit(0)


def _fork_worker(request, fds, control, oetd):
    """Forks a worker for `request` twice over, so that it is reparented to oetd, and
    returns its pid."""
    if len(fds) != 3:
        raise OSError(f"{len(fds)} descriptors came with the request instead of 3")
    read, write = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(read)
            second = os.fork()
            if second == 0:
                os.close(write)
                _become_worker(request, fds, control, oetd)
            os.write(write, str(second).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pid:
            said = pid.read()
    finally:
        os.waitpid(first, 0)
    if not said:
        raise OSError("the worker could not be forked")
    return int(said)


def _become_worker(request, fds, control, oetd):
    """In the forked worker: take the procedure's descriptors and run as a cold-started
    worker would. Never returns."""
    try:
        control.close()
        os.setpgid(0, 0)
        channel, out, err = fds
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(channel, 3)
        for fd in {null, out, err, channel} - {0, 1, 2, 3}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ["OET_PROCEDURE_ID"] = str(request["id"])
        _run(3, oetd)
    except BaseException:
        traceback.print_exc()
    os._exit(71)


def _serve_zygote(fd):
    """The zygote: forks a worker for each request of oetd's, and never runs a script."""
    os.set_inheritable(fd, False)
    control = socket.socket(fileno=fd)
    oetd = os.getppid()
    # What every worker needs is imported once, here, and shared by all of them.
    import ctypes  # noqa: F401  (for _die_with)

    _listen()
    control.send(json.dumps({"ready": os.getpid()}).encode())
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(control, 65536, 3)
        except InterruptedError:
            continue
        if not data:
            # oetd closed the socket: it is gone, and so is the reason to run.
            os._exit(0)
        reply = {}
        try:
            request = json.loads(data)
            reply["id"] = request["id"]
            reply["pid"] = _fork_worker(request, fds, control, oetd)
        except (OSError, ValueError, KeyError, TypeError) as err:
            reply["error"] = f"{type(err).__name__}: {err}"
        finally:
            for received in fds:
                os.close(received)
        control.send(json.dumps(reply).encode())


if "OET_ZYGOTE_FD" in os.environ:
    _serve_zygote(int(os.environ.pop("OET_ZYGOTE_FD")))
else:
    _listen()
    _run(int(os.environ.pop("OET_WORKER_FD")))

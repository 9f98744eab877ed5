"""The oetd worker harness: runs one observing script in this process on oetd's behalf.

oetd starts this file with a socket on the file descriptor named by OET_WORKER_FD and
speaks JSON lines over it (never over the script's stdout, which belongs to the script).

From oetd:  {"op": "load", "path": ..., "init": {"args": [...], "kwargs": {...}}}
            {"op": "call", "function": ..., "args": [...], "kwargs": {...}}
            {"op": "event", "topic": ..., "msg_src": ..., "payload": {...}}
To oetd:    {"state": "IDLE" | "LOADING" | "INITIALISING" | "READY" | "COMPLETE"}
            {"state": "FAILED", "stacktrace": "..."}
            {"event": {"topic": ..., "payload": {...}}}

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


_fd = int(os.environ.pop("OET_WORKER_FD"))
os.set_inheritable(_fd, False)
_channel = socket.socket(fileno=_fd)
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


def _load(path, init):
    _state("LOADING")
    script_dir = os.path.dirname(path)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
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


def main():
    signal.signal(signal.SIGTERM, _on_sigterm)
    if pub is not None:
        pub.subscribe(_forward, pub.ALL_TOPICS)
    threading.Thread(target=_read_commands, name="oetd-link", daemon=True).start()
    _state("IDLE")
    module = None
    try:
        while True:
            command = _commands.get()
            op = command.get("op")
            if op == "load":
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


main()

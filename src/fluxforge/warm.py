"""A warm stage runner: one process imports the libraries once, and every stage is a fork of it.

Why: a stage process spends 5-7 s importing torch, transformers, MLflow and Great Expectations before its work
starts (BENCHMARKS.md "Stage start-up"), 23 times in a cold ``dvc repro`` and in every end-to-end test. Those
imports are the libraries' own floor; only not repeating them lowers it. ``make run``, ``fluxforge run``, the
Prefect refresh and ``fluxforge rebuild`` start a server (``python -m fluxforge.warm serve SOCKET``) for the length
of their ``dvc repro`` and set ``FLUXFORGE_WARM``; ``stages/python`` then hands ``-m stages.<name> [args]`` to this
file's client, which passes its command line, working directory, environment and standard streams to the server.
The server forks; the child takes all of those over, forgets every module of ``fluxforge`` and ``stages`` (so the
code on disk runs, not the code the server saw) and runs the stage module as ``__main__``. The client waits and
exits as the stage did (its exit code, or the signal that ended it), so DVC sees no difference.

Nothing is lost when the server cannot help: no ``FLUXFORGE_WARM``, no server listening yet (it listens only once
its imports are done), another interpreter, or an environment that the libraries read when they load (OpenMP, HF,
``PYTHONPATH``...) set differently from the server's: the client runs the stage cold, as ``stages/python`` always did.
A signal to the client (Ctrl-C under DVC, ``kill``) goes to the stage; a client killed outright (SIGKILL) takes the
stage with it, which the crash-and-resume tests rely on.

The client half runs on ``python -S`` from ``stages/python`` and imports the standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

ENV = "FLUXFORGE_WARM"
# The environment a library reads when it loads (not when it is called): a stage whose values differ from the
# server's would run on libraries set up for another environment, so it runs cold. PYTHONUNBUFFERED is applied per
# stage (its streams are made afresh), and FLUXFORGE_*, MLFLOW_*, DVC_* are read at call time.
LOAD_TIME_PREFIXES = ("PYTHON", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "LD_", "CUDA_", "PYTORCH_", "TORCH",
                      "HF_", "TRANSFORMERS_", "TOKENIZERS_", "DS_", "NCCL_", "GX_")
PER_STAGE = {"PYTHONUNBUFFERED"}
# Imported by the server besides every stage module: what stages import when they run rather than at module level.
PRELOAD = ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "great_expectations", "dvc.repo")
FORGET = ("fluxforge", "stages", "flows")
VERBOSE = "fluxforge.warm: "  # what starts each line FLUXFORGE_WARM_VERBOSE=1 prints (the refresh's log reads them)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


# ---------------------------------------------------------------------------------------------------------- client
def client(argv: list[str]) -> None:
    """Run ``python argv...`` through the server named by ``$FLUXFORGE_WARM``, or cold when it cannot take it."""
    reason = None
    if len(argv) < 2 or argv[0] != "-m":
        reason = "only `-m MODULE` commands run warm"
    conn = None
    if reason is None:
        try:
            conn = _submit(os.environ[ENV], argv)
        except (OSError, KeyError, ValueError) as err:  # no server (yet), or it went away
            reason = f"no warm server ({err})"
    if conn is not None:
        replies = conn.makefile("rb")
        reply = _read_message(replies)
        if reply is None or "refused" in reply:
            reason = reply["refused"] if reply else "the warm server closed the connection"
            conn.close()
        else:
            if os.environ.get("FLUXFORGE_WARM_VERBOSE"):
                print(f"{VERBOSE}warm start (pid {reply['started']})", file=sys.stderr)
            _wait(conn, replies)  # does not return
    if os.environ.get("FLUXFORGE_WARM_VERBOSE"):
        print(f"{VERBOSE}cold start: {reason}", file=sys.stderr)
    os.execv(sys.executable, [sys.executable, *argv])


def interpreter_prefix() -> str:
    """The virtual environment (or installation) this interpreter runs in, found as ``site`` finds it: the client
    runs with ``-S``, where ``sys.prefix`` is the base installation's even inside a venv."""
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    for folder in (bindir, os.path.dirname(bindir)):
        if os.path.exists(os.path.join(folder, "pyvenv.cfg")):
            return os.path.realpath(folder)
    return os.path.realpath(sys.executable)


def _submit(path: str, argv: list[str]) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        header = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                             "prefix": interpreter_prefix(), "version": sys.version}).encode()
        socket.send_fds(conn, [len(header).to_bytes(8, "big")], [0, 1, 2])
        conn.sendall(header)
    except BaseException:
        conn.close()
        raise
    return conn


def _wait(conn: socket.socket, replies: BinaryIO) -> None:
    """Forward signals to the stage until it ends, then end this process the same way."""
    def forward(signum: int, _frame: object) -> None:
        try:
            conn.sendall(json.dumps({"signal": signum}).encode() + b"\n")
        except OSError:
            pass

    for sig in SIGNALS:
        signal.signal(sig, forward)
    end = _read_message(replies)
    if end is None:
        print("fluxforge.warm: the warm server went away while the stage ran", file=sys.stderr)
        os._exit(1)
    if "signal" in end:  # die of it, as the stage did (a SIGKILL cannot be caught, so needs no reset)
        if end["signal"] != signal.SIGKILL:
            signal.signal(end["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), end["signal"])
    os._exit(end.get("exit", 1))


def _read_message(stream: BinaryIO) -> dict | None:
    """One newline-ended JSON message, or None at end of stream (the other side closed or died)."""
    try:
        line = stream.readline()
    except OSError:
        return None
    return json.loads(line) if line.endswith(b"\n") else None


# ---------------------------------------------------------------------------------------------------------- server
def effective_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a stage would load its libraries under: ``env`` with FluxForge's own defaults applied."""
    from fluxforge.runtime import OPENMP_DEFAULTS, QUIET_ENV

    out = {**QUIET_ENV, **env}
    if "OMP_WAIT_POLICY" not in env:
        out = {**OPENMP_DEFAULTS, **out}
    return out


def load_time_difference(server: Mapping[str, str], stage: Mapping[str, str]) -> str | None:
    """The first load-time variable that differs between the two environments (as ``KEY``), or None."""
    ours, theirs = effective_env(server), effective_env(stage)
    for key in sorted(set(ours) | set(theirs)):
        if key.startswith(LOAD_TIME_PREFIXES) and key not in PER_STAGE and ours.get(key) != theirs.get(key):
            return key
    return None


def preload(root: Path) -> list[str]:
    """Import every stage module under ``root/stages`` and :data:`PRELOAD`; returns what failed to import."""
    import importlib

    failed = []
    names = [f"stages.{p.stem}" for p in sorted((root / "stages").glob("*.py")) if p.stem != "__init__"]
    for name in [*names, *PRELOAD]:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - a stage that cannot import fails in its own child, with its message
            failed.append(f"{name}: {err}")
    return failed


def serve(path: str, root: Path) -> None:
    """Import, then listen on ``path`` and run each stage handed over in a forked child until told to stop."""
    import selectors

    env = dict(os.environ)  # what the libraries see as they load (a library that sets a variable does so cold too)
    sys.path.insert(0, str(root))
    failed = preload(root)
    del sys.path[0]
    for name in failed:
        print(f"fluxforge.warm: not preloaded: {name}", file=sys.stderr)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # clients see the socket only once it accepts
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while os.getppid() == parent:  # the process that started us is gone: so are we
        for key, _ in sel.select(timeout=2.0):
            if key.data is None:
                conn, _ = listener.accept()
                held = [listener, sel, *(k.fileobj for k in sel.get_map().values() if k.data is not None),
                        *(k.data[0] for k in sel.get_map().values() if k.data is not None)]
                if (started := _start(conn, env, held)) is not None:
                    sel.register(started[0], selectors.EVENT_READ, (conn, started[1]))
            else:
                pidfd, (conn, pid) = key.fileobj, key.data
                sel.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                end = {"signal": -os.waitstatus_to_exitcode(status)} if os.WIFSIGNALED(status) \
                    else {"exit": os.waitstatus_to_exitcode(status)}
                _send(conn, end)
                conn.close()


def _start(conn: socket.socket, env: Mapping[str, str], servers: list) -> tuple[int, int] | None:
    """Receive one stage and fork it; (pidfd, pid) of the child, or None when it was refused.

    ``servers``: what the child must not keep (the listener, the selector, other stages' connections and pidfds).
    """
    conn.settimeout(10)  # a client sends all of it at once: one that does not must not hold up the others
    fds: list[int] = []
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 8, 3)
        size = int.from_bytes(msg, "big")
        data = b""
        while len(data) < size:
            if not (chunk := conn.recv(size - len(data))):
                raise OSError("connection closed")
            data += chunk
        request = json.loads(data)
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    conn.settimeout(None)
    reason = None
    if request["prefix"] != interpreter_prefix() or request["version"] != sys.version:
        reason = f"another interpreter ({request['prefix']})"
    elif key := load_time_difference(env, request["env"]):
        reason = f"{key} differs from the warm server's"
    if reason or len(fds) != 3:
        _send(conn, {"refused": reason or "standard streams missing"})
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError as err:
        _send(conn, {"refused": f"fork failed: {err}"})
        conn.close()
        return None
    if pid == 0:
        try:
            for held in servers:
                if isinstance(held, int):
                    os.close(held)
                else:
                    held.close()
            _child(conn, request, fds)  # never returns
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    _send(conn, {"started": pid})
    return os.pidfd_open(pid), pid


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:  # the client is gone; its stage went with it
        pass


def _child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Become the stage: its streams, directory, environment, arguments, fresh code; then exit as it does."""
    import atexit
    import importlib
    import io
    import runpy
    import threading
    import traceback

    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), line_buffering=False)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False) if unbuffered else io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  line_buffering=os.isatty(1), write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True,
                                  write_through=True)
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin
    for name in [m for m in sys.modules if m.split(".")[0] in FORGET]:
        del sys.modules[name]
    sys.path[0] = request["cwd"]
    module, args = request["argv"][1], request["argv"][2:]
    sys.argv = [module, *args]
    importlib.invalidate_caches()
    _fresh_random_state()
    threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
    code: int = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = _exit_code(done.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        _flush_and_run_exit_functions(atexit)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - the interpreter would print it and exit 1
        traceback.print_exc()
        code = 1
    _flush_and_run_exit_functions(atexit)
    os._exit(code)


def _fresh_random_state() -> None:
    """Seed numpy's and torch's global generators anew, as a new interpreter does.

    A fork copies the server's generators, so every stage would draw the same numbers from them; a new process
    seeds both from the OS (torch too: its CPU generator's initial seed differs from process to process). Python's
    ``random`` reseeds itself after a fork; CUDA's generators do not exist yet (the server never touches a GPU).
    Stages seed what they use, so this only keeps unseeded draws as independent as they are cold.
    """
    if (numpy := sys.modules.get("numpy")) is not None:
        numpy.random.seed()
    if (torch := sys.modules.get("torch")) is not None:
        torch.default_generator.seed()


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush_and_run_exit_functions(atexit: object) -> None:
    """What the interpreter does as it shuts down, in its order: wait for the threads that are not daemons (an
    executor's workers, MLflow's asynchronous logging) and run their exit hooks, then the atexit functions."""
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()  # type: ignore[attr-defined]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _watch_client(conn: socket.socket) -> None:
    """Signals the client forwards are raised here; the client gone (killed outright) ends the stage the same way."""
    messages = conn.makefile("rb")
    while (message := _read_message(messages)) is not None:
        os.kill(os.getpid(), message["signal"])
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ starting a server
def supported() -> bool:
    """Linux (fork, a pidfd per stage, streams passed over a Unix socket); elsewhere stages run cold."""
    return hasattr(os, "pidfd_open") and hasattr(socket, "send_fds") and hasattr(os, "fork")


@contextmanager
def warm_stages(root: Path | str = ".", env: Mapping[str, str] | None = None,
                export: bool = True) -> Iterator[str | None]:
    """Run a warm server for stages started inside the block (``FLUXFORGE_WARM`` is set in ``os.environ``).

    ``env``: the environment the stages will have, when the caller gives them one of its own (``fluxforge rebuild``);
    default this process's, and then an outer block's server is reused. ``export=False``: a server of its own, and
    ``os.environ`` left alone. ``FLUXFORGE_WARM=0`` turns off the first kind. Yields the socket's path, which appears once the
    server's imports are done (None: no server, stages run cold).
    """
    import subprocess
    import tempfile

    previous = os.environ.get(ENV)
    if (export and previous == "0") or not supported():
        yield None
        return
    if export and previous and env is None:  # a server for this environment runs already
        yield previous
        return
    folder = tempfile.mkdtemp(prefix="ffwarm-")
    path = os.path.join(folder, "socket")
    server = subprocess.Popen([sys.executable, "-m", "fluxforge.warm", "serve", path, str(Path(root).resolve())],
                              env=dict(env if env is not None else os.environ), stdin=subprocess.DEVNULL)
    if export:
        os.environ[ENV] = path
    try:
        yield path
    finally:
        if export and previous:
            os.environ[ENV] = previous
        elif export:
            os.environ.pop(ENV, None)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for leftover in (path, path + ".tmp"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        os.rmdir(folder)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 3:
        try:
            serve(argv[1], Path(argv[2]))
        except KeyboardInterrupt:
            pass
        return 0
    client(argv)
    return 1  # not reached: the client execs or exits


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

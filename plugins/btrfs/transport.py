"""Talking to peers: ssh command lines, the remote scripts, the send pipe.

Locally nothing goes through a shell: every process gets an argument list.
On the peer, ssh hands its command to the remote user's shell, which cannot
be avoided; so the remote command is a *fixed* ``sh -c`` script whose
inputs arrive as positional arguments, each quoted with :func:`shlex.join`,
and every name in them has passed :func:`stowkit.corelib.names.check_name` first.

A receive that fails or loses its stream (sender killed, connection cut)
deletes the partial subvolume itself, on the peer, so nothing half-received
is left there; a receive in progress is writable and has no received UUID,
which is how every reader (here and on the peer) tells it from a snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import posixpath
import re
import selectors
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import IO

from stowkit.corelib.errors import BackendUnavailable, InvalidArgument
from stowkit.corelib.names import check_host


@dataclasses.dataclass(frozen=True)
class Peer:
    spec: str  #: as the user gave it
    user: str
    host: str
    port: int

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host.strip('[]')}"


def parse_peer(spec: object, default_user: str, default_port: int) -> Peer:
    """``[user@]host[:port]`` -> Peer; anything else (spaces, ';', a leading '-') is refused.

    The rule is :func:`stowkit.corelib.names.check_host`, the one the scheduler
    checks hosts with at ``schedule add``.
    """
    user, host, port = check_host(spec)
    return Peer(str(spec), user or default_user, host, port or default_port)


@dataclasses.dataclass(frozen=True)
class SshConfig:
    command: str = "ssh"
    key: str | None = None
    options: Sequence[str] = ()

    def argv(self, peer: Peer) -> list[str]:
        """ssh's arguments up to and including the destination."""
        args = [self.command, "-p", str(peer.port)]
        if self.key:
            args += ["-i", self.key]
        for opt in self.options:
            args += ["-o", opt]
        return [*args, "--", peer.destination]

    def rsync_rsh(self, peer: Peer) -> str:
        """The ``rsync -e`` value (rsync splits it itself, honouring quotes)."""
        return shlex.join(self.argv(peer)[:-2])


# -- remote scripts: fixed text, inputs only as "$1" "$2" ... ------------------

#: $1... = directories on the peer (the first, where sends land, is made if
#: missing).  For each existing one, in order: ``stowkit-dir N ROOTID REL``
#: (the ID of the subvolume holding it, and its path below that subvolume's
#: root directory, the nearest inode 256 above it), then
#: ``btrfs subvolume list -R -u`` of the filesystem, which names a subvolume
#: below the one holding the listed path by its path below that one.
#: :func:`parse_listing` keeps only the subvolumes directly in each directory.
LIST_SCRIPT = r"""
mkdir -p -- "$1" || exit 1
n=0
for d in "$@"; do
    n=$((n + 1))
    real=$(cd -P -- "$d" 2>/dev/null && pwd -P) || continue
    top=$real
    while [ "$(stat -c %i -- "$top")" != 256 ] && [ "$top" != / ]; do
        top=${top%/*}; top=${top:-/}
    done
    id=$(btrfs inspect-internal rootid -- "$real") || exit 1
    rel=${real#"$top"}
    printf 'stowkit-dir %s %s /%s\n' "$n" "$id" "${rel#/}"
    btrfs subvolume list -R -u -- "$real" || exit 1
done
"""


#: $1 = received/ dir, $2 = snapshot name, $3 = "zstd" to decompress.
#: A received subvolume is read-only and a read-only subvolume cannot move to
#: another directory, so it is received in place and *deleted* unless the
#: receive completed (exit 0 and the subvolume marked read-only, which btrfs
#: receive does last).  HUP/PIPE are ignored so a cut connection still gets
#: its clean-up.  A writable leftover of the same name (a receive that died
#: with its host) is deleted first; a complete one is never touched.
RECEIVE_SCRIPT = r"""
trap '' HUP PIPE
dest=$1; name=$2
mkdir -p -- "$dest" || exit 1
if [ -e "$dest/$name" ]; then
    if [ "$(btrfs property get -ts -- "$dest/$name" ro 2>/dev/null)" = ro=false ]; then
        btrfs subvolume delete -- "$dest/$name" >/dev/null 2>&1
    else
        echo "$name already exists on the peer" >&2; exit 1
    fi
fi
err=$(mktemp) || exit 1
if [ "$3" = zstd ]; then
    zstd -d -q -c | btrfs receive -e -- "$dest" >/dev/null 2>"$err"
else
    btrfs receive -e -- "$dest" >/dev/null 2>"$err"
fi
if [ $? -eq 0 ]; then
    if [ "$(btrfs property get -ts -- "$dest/$name" ro 2>/dev/null)" = ro=true ]; then
        rm -f -- "$err"; exit 0
    fi
    echo "the stream did not end with a complete $name" >>"$err"
fi
[ -e "$dest/$name" ] && btrfs subvolume delete -- "$dest/$name" >/dev/null 2>&1
grep -v '^At subvol' "$err" >&2; rm -f -- "$err"
exit 1
"""


#: One ssh session per send: discovery, receive and checks.  $1... = the
#: directories :data:`LIST_SCRIPT` lists ($1, where sends land, is made if
#: missing).  It prints that listing, then :data:`LISTED`, then reads one
#: line from the sender on its stdin: ``done`` (nothing to send) or
#: ``receive NAME zstd|none``, after which the rest of its stdin is the
#: stream, received by :data:`RECEIVE_SCRIPT` into $1.  ``read`` takes its
#: line a byte at a time from the pipe, so ``btrfs receive`` gets the stream
#: from its first byte.  NAME arrives on stdin, not in the command line, so it
#: is checked here as well: a plain name, no ``/``, no leading ``.``.
SESSION_SCRIPT = (
    "list() {"
    + LIST_SCRIPT
    + "}\nreceive() {"
    + RECEIVE_SCRIPT
    + "}\n"
    + r"""dest=$1
list "$@" || exit 1
echo stowkit-listed
ok=
read -r verb name codec rest || exit 1
case $verb in
done) [ -z "$name" ] && exit 0 ;;
receive)
    case $name in
    "" | .* | */*) ;;
    *) [ -z "$rest" ] && { [ "$codec" = zstd ] || [ "$codec" = none ]; } && ok=1 ;;
    esac ;;
esac
[ -n "${ok-}" ] || { echo "unexpected request from the sender" >&2; exit 1; }
receive "$dest" "$name" "$codec"
"""
)

#: The line :data:`SESSION_SCRIPT` prints after its listing.
LISTED = "stowkit-listed"

#: A pull's sending side, run on the peer: $1 = the snapshot, $2 = its
#: incremental parent ("" for a full stream), $3 = "zstd" to compress there
#: (so the wire carries the compressed bytes).  The stream goes to stdout;
#: the receiving side is :data:`RECEIVE_SCRIPT`, run here.
PULL_SEND_SCRIPT = r"""
snap=$1; parent=$2; codec=$3
if [ -n "$parent" ]; then set -- -p "$parent"; else set --; fi
if [ "$codec" = zstd ]; then
    btrfs send -q "$@" -- "$snap" | zstd -q -c -3
else
    exec btrfs send -q "$@" -- "$snap"
fi
"""


def remote_command(script: str, *args: str) -> str:
    """The command string ssh sends: ``sh -c SCRIPT stowkit ARGS...``, quoted."""
    return shlex.join(["sh", "-c", script, "stowkit", *args])


@dataclasses.dataclass(frozen=True)
class RemoteSubvolume:
    path: str
    uuid: str | None
    received_uuid: str | None


_LIST_LINE = re.compile(r"received_uuid (\S+) uuid (\S+) path (.+)$")


def parse_subvolume_list(output: str) -> list[RemoteSubvolume]:
    result = []
    for line in output.splitlines():
        m = _LIST_LINE.search(line)
        if not m:
            continue
        received, uuid, path = m.groups()
        result.append(
            RemoteSubvolume(
                path.strip(),
                None if uuid == "-" else uuid,
                None if received == "-" else received,
            )
        )
    return result


@dataclasses.dataclass(frozen=True)
class HeldSubvolume:
    where: str  #: the directory asked about, as given
    path: str  #: its path relative to the filesystem's top level
    uuid: str | None
    received_uuid: str | None


_HELD_LINE = re.compile(
    r"^ID (\d+) gen \d+ top level (\d+) received_uuid (\S+)\s+uuid (\S+) path (.+)$"
)


def parse_listing(output: str, dirs: Sequence[str]) -> list[HeldSubvolume]:
    """The subvolumes directly in each of ``dirs``, from :data:`LIST_SCRIPT`'s output.

    ``btrfs subvolume list`` covers the whole filesystem.  A subvolume counts
    only when its parent subvolume is the one holding the directory and its
    path's parent is exactly the directory's path below that subvolume, so a
    directory of the same name elsewhere (another stowkit root's received/,
    on the same filesystem) never counts.
    """
    result: list[HeldSubvolume] = []
    where: str | None = None
    top_id = ""
    rel = ""
    for line in output.splitlines():
        if line.startswith("stowkit-dir "):
            fields = line.split(" ", 3)
            if len(fields) != 4 or not fields[1].isdigit() or not fields[3].startswith("/"):
                raise BackendUnavailable(f"unexpected listing from the peer: {line!r}")
            position = int(fields[1]) - 1
            if not 0 <= position < len(dirs):
                raise BackendUnavailable(f"unexpected listing from the peer: {line!r}")
            where, top_id, rel = dirs[position], fields[2], fields[3].strip("/")
            continue
        m = _HELD_LINE.match(line.strip())
        if where is None or not m:
            continue
        _, parent, received, uuid, path = m.groups()
        path = path.strip()
        if parent != top_id or posixpath.dirname(path) != rel:
            continue
        result.append(
            HeldSubvolume(
                where,
                path,
                None if uuid == "-" else uuid,
                None if received == "-" else received,
            )
        )
    return result


def last_line(data: bytes | str, default: str = "") -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else default


def run(argv: Sequence[str], timeout: float | None = 120, what: str = "") -> str:
    """Run ``argv`` (no shell); its stdout, or BackendUnavailable with stderr's last line."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BackendUnavailable(f"{what or argv[0]}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"{what or argv[0]}: timed out after {timeout} s") from None
    if proc.returncode != 0:
        reason = last_line(proc.stderr, f"exit status {proc.returncode}")
        raise BackendUnavailable(f"{what or argv[0]} failed: {reason}")
    return proc.stdout.decode(errors="replace")


class RateLimiter:
    """Token bucket in bytes per second; ``rate`` 0 means no limit."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.start = clock()
        self.sent = 0

    def delay_for(self, nbytes: int) -> float:
        """Seconds to wait before ``nbytes`` more may go (and count them)."""
        self.sent += nbytes
        if not self.rate:
            return 0.0
        due = self.start + self.sent / self.rate
        return max(0.0, due - self.clock())


CHUNK = 64 * 1024
#: Pipe buffer asked for on the stream's pipes (Linux caps it at
#: /proc/sys/fs/pipe-max-size, 1 MiB by default): fewer wake-ups per MiB.
PIPE_SIZE = 1 << 20
#: The largest move per splice call with no rate limit.
SPLICE = 1 << 20


def _fileno(f: object) -> int | None:
    try:
        return f.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def pump(
    source: IO[bytes],
    sink: IO[bytes],
    rate: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy ``source`` to ``sink`` at most ``rate`` bytes/s; return the bytes copied.

    Between two pipes the bytes move with ``splice(2)``, inside the kernel:
    this process never copies them, it only counts them (for the result,
    ``progress`` and the rate limit).  ``progress`` is called with the total
    so far after each move.
    """
    limiter = RateLimiter(rate, clock)
    # Small chunks under a limit keep the flow smooth rather than bursty.
    size = min(CHUNK, max(4096, rate // 8)) if rate else CHUNK
    src, dst = _fileno(source), _fileno(sink)
    total = 0
    if src is not None and dst is not None and hasattr(os, "splice"):
        if hasattr(sink, "flush"):
            sink.flush()
        step = size if rate else SPLICE
        while True:
            try:
                moved = os.splice(src, dst, step)
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise BrokenPipeError(exc.errno, exc.strerror) from None
                if exc.errno in (errno.EINVAL, errno.ENOSYS) and total == 0:
                    break  # not pipes after all: copy below
                raise
            if not moved:
                return total
            total += moved
            if progress is not None:
                progress(total)
            wait = limiter.delay_for(moved)
            if wait:
                sleep(wait)
    while True:
        chunk = source.read1(size) if hasattr(source, "read1") else source.read(size)
        if not chunk:
            return total
        wait = limiter.delay_for(len(chunk))
        if wait:
            sleep(wait)
        sink.write(chunk)
        total += len(chunk)
        if progress is not None:
            progress(total)


def _start_sender(
    send_argv: Sequence[str], compress: bool, errs: list[IO[bytes]]
) -> tuple[list[subprocess.Popen[bytes]], IO[bytes]]:
    """``send_argv [| zstd]``: the processes and the stream's read end."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sender = subprocess.Popen(list(send_argv), stdout=subprocess.PIPE, stderr=errs[0])
        procs.append(sender)
        assert sender.stdout is not None
        stream: IO[bytes] = sender.stdout
        if compress:
            zstd = subprocess.Popen(
                ["zstd", "-q", "-c", "-3"], stdin=stream, stdout=subprocess.PIPE, stderr=errs[1]
            )
            procs.append(zstd)
            sender.stdout.close()  # zstd holds it now; send sees SIGPIPE if zstd dies
            assert zstd.stdout is not None
            stream = zstd.stdout
    except FileNotFoundError as exc:
        for p in procs:
            p.kill()
            p.wait()
        raise BackendUnavailable(f"send: {exc.filename} is not installed") from None
    _grow_pipe(stream.fileno())
    return procs, stream


def _copy_and_wait(
    procs: list[subprocess.Popen[bytes]],
    stream: IO[bytes],
    receiver: subprocess.Popen[bytes],
    errs: list[IO[bytes]],
    compress: bool,
    rate: int,
    progress: Callable[[int], None] | None,
    stages: Sequence[str] | None = None,
) -> int:
    """Pump ``stream`` into ``receiver``'s stdin, wait for all, name the stage that failed.

    ``stages`` names the sender(s) and the receiver in error messages (a pull's
    sender is ssh, its receiver local).
    """
    assert receiver.stdin is not None
    total = 0
    broken = False
    try:
        total = pump(stream, receiver.stdin, rate, progress=progress)
    except BrokenPipeError:
        broken = True
    finally:
        for f in (stream, receiver.stdin):
            try:
                f.close()
            except BrokenPipeError:
                broken = True
    if broken:
        for p in procs:
            p.kill()
    codes = [p.wait() for p in [*procs, receiver]]
    texts = []
    for f in errs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    names = ["btrfs send", "zstd", "ssh/receive"] if compress else ["btrfs send", "ssh/receive"]
    if stages is not None:
        names = list(stages)
    texts = texts if compress else [texts[0], texts[2]]
    # The receiving side's complaint is the useful one when both fail.
    for name, code, text in reversed(list(zip(names, codes, texts, strict=True))):
        if code != 0:
            raise BackendUnavailable(f"{name} failed: {last_line(text, f'exit status {code}')}")
    return total


def send_stream(
    send_argv: Sequence[str],
    ssh_argv: Sequence[str],
    compress: bool,
    rate: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """``send_argv | [zstd] | (rate limit) | ssh_argv``; bytes on the wire.

    Raises BackendUnavailable naming the stage that failed.  Every process is
    waited for; none is left behind on failure.
    """
    errs = [tempfile.TemporaryFile() for _ in range(3)]
    procs, stream = _start_sender(send_argv, compress, errs)
    receiver = _start_receiver(ssh_argv, procs, stream, errs, "send")
    return _copy_and_wait(procs, stream, receiver, errs, compress, rate, progress)


def _start_receiver(
    argv: Sequence[str],
    procs: list[subprocess.Popen[bytes]],
    stream: IO[bytes],
    errs: list[IO[bytes]],
    what: str,
) -> subprocess.Popen[bytes]:
    """The receiving end of a stream; if it cannot start, the sending side is stopped."""
    try:
        return subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errs[2]
        )
    except FileNotFoundError as exc:
        stream.close()
        for p in procs:
            p.kill()
            p.wait()
        raise BackendUnavailable(f"{what}: {exc.filename} is not installed") from None


def pull_stream(
    remote_send_argv: Sequence[str],
    receive_argv: Sequence[str],
    rate: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """``ssh PEER PULL_SEND_SCRIPT | (rate limit) | local RECEIVE_SCRIPT``; bytes on the wire.

    The mirror of :func:`send_stream`: the same pump, waits and stage-named
    errors, with the stream coming in over ssh (compressed there, if asked).
    """
    errs = [tempfile.TemporaryFile() for _ in range(3)]
    procs, stream = _start_sender(remote_send_argv, False, errs)
    receiver = _start_receiver(receive_argv, procs, stream, errs, "pull")
    return _copy_and_wait(
        procs, stream, receiver, errs, False, rate, progress, stages=("ssh/send", "receive")
    )


class SendSession:
    """One ssh connection for a whole send: the peer's listing, then the stream.

    ``ssh_argv`` ends with the destination; the session runs
    :data:`SESSION_SCRIPT` there with ``dirs``.  Use as a context manager:
    :meth:`listing` returns the peer's listing, then exactly one of
    :meth:`nothing` (the peer holds it already) or :meth:`stream`.  The ssh
    connection is started at once, so the caller's local work overlaps its
    handshake.  On any way out, the ssh process is waited for.
    """

    def __init__(self, ssh_argv: Sequence[str], dirs: Sequence[str], timeout: float = 120) -> None:
        self.timeout = timeout
        self.err = tempfile.TemporaryFile()
        self.dirs = list(dirs)
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [*ssh_argv, remote_command(SESSION_SCRIPT, *self.dirs)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.err,
            )
        except FileNotFoundError:
            self.err.close()
            raise BackendUnavailable(f"ssh: {ssh_argv[0]} is not installed") from None
        assert self.proc.stdin is not None
        _grow_pipe(self.proc.stdin.fileno())

    def __enter__(self) -> SendSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        self.proc.wait()
        self.err.close()

    def _stderr(self, default: str) -> str:
        self.err.seek(0)
        return last_line(self.err.read(), default)

    def listing(self, what: str = "listing snapshots") -> str:
        """The peer's :data:`LIST_SCRIPT` output (BackendUnavailable if it failed)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        data = b""
        marker = ("\n" + LISTED + "\n").encode()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not (b"\n" + data).endswith(marker):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close_quietly()
                    raise BackendUnavailable(f"{what}: timed out after {self.timeout} s")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.wait()
                    raise BackendUnavailable(
                        f"{what} failed: {self._stderr(f'exit status {code}')}"
                    )
                data += chunk
        text = data.decode(errors="replace")
        return text[: len(text) - len(LISTED) - 1]

    def close_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def _tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            os.write(self.proc.stdin.fileno(), line.encode())
        except BrokenPipeError:
            pass  # the peer is gone; its exit status says why

    def nothing(self) -> None:
        """End the session without a stream."""
        self._tell("done\n")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait()
        if code != 0:
            raise BackendUnavailable(f"ssh failed: {self._stderr(f'exit status {code}')}")

    def stream(
        self,
        send_argv: Sequence[str],
        name: str,
        compress: bool,
        rate: int,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """``send_argv [| zstd]`` into the peer's receive of ``name``; bytes on the wire."""
        if not name or name.startswith(".") or any(c in name for c in "/ \t\r\n"):
            raise InvalidArgument(f"invalid snapshot name {name!r}")
        self._tell(f"receive {name} {'zstd' if compress else 'none'}\n")
        errs = [tempfile.TemporaryFile() for _ in range(2)] + [self.err]
        procs, stream = _start_sender(send_argv, compress, errs)
        try:
            return _copy_and_wait(procs, stream, self.proc, errs, compress, rate, progress)
        finally:
            self.err = tempfile.TemporaryFile()  # closed above; close() closes this one

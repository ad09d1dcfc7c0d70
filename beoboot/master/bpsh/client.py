"""`bpsh NODESET|-a COMMAND [ARGS...]`: run the master's COMMAND on nodes, as if it ran here.

This is the whole client (beoboot/master/bpsh/executable.py is the executable that loads it; fast/bpsh.c is
its common path compiled, which runs this for what it does not handle itself), kept tiny on purpose: a cached job runs on a node in a few
milliseconds, so the client's own start-up is most of what a user waits for. It runs as `python3 -IS`
(no site, no venv, no environment) and imports only modules built into the interpreter or loaded by its
start-up anyway (_socket, _signal, posix, sys): no json, no enum, no dataclasses, which would each cost
more than the job. Everything else, finding the command, its closure and hashes, the nodes, the relay,
is done by beoserv, which is already running and has it all cached.

The client connects to beoserv's local socket (SOCK_SEQPACKET, $BEOSERV_SOCKET or DEFAULT_SOCKET) and
sends one request together with its own stdin, stdout and stderr (SCM_RIGHTS): beoserv reads stdin from it
(forwarded to every node the job runs on; -n: none). beoserv takes the user and group from the socket
(SO_PEERCRED), not from anything the client says, so a user can run jobs only as themself. Then the
client writes the jobs' output as it comes and waits for the exit status: a job's exit code, 128+N for a
job killed by signal N (as a shell says), the highest when several nodes ran it (the worst node's, as
`clush -S` gives), 255 when beoserv went away for good first (as ssh does for a lost connection) or a
node's job ran past -t (as clush's command timeout), 2 for a bad command line, a node set that is not
one, or a request too big to send.

The node set is sent as typed: beoserv parses it (beoboot.master.nodeset) and resolves @up, @all and its
config's groups, so the client needs no parser (and no config) of its own.

Reattach: when beoserv goes away (a restart, an upgrade, a crash) the jobs run on, on their nodes. The
client keeps its jobs' ids and how far each one's output got (per stream), waits for beoserv to come
back (--reattach-timeout, 300 s), connects again and sends those; the new beoserv has the nodes send
the rest, so each byte is written once. Signals sent meanwhile are forwarded once it is back.

Signals: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to bpsh are forwarded to the jobs'
process groups. Ctrl-Z stops the remote jobs and then bpsh; `fg`/`bg` (SIGCONT) continues both. A plain
SIGSTOP cannot be caught, so it stops only bpsh; the SIGCONT that resumes it is forwarded.

Wire format (SEQPACKET records): the request is NUL-separated fields, REQUEST_MAGIC, nodes, cwd, flags
(letters: n for -n, p for -p, s for -s, d for -d, b for -b; then ";x=NODESET" for -x, ";f=N" for
--fanout, ";t=SECONDS" for -t), the number of argv entries, argv, the number of --cache paths, the paths,
then the environment as NAME=VALUE; later records from the client are b"S" + signal number, or b"P" when
its stdout is a closed pipe. A reattach request is REATTACH_MAGIC, the flags, then JOB:STDOUT:STDERR:NODE
per job (decimal offsets, and the node beoserv named for it), NUL-separated. beoserv sends b"J" + job
(8 bytes, big-endian) + node: a job of this bpsh; b"O" + stream (1 byte) + job (8) + the offset the job's
stream reaches with this data (8) + data: output (job 0: not a job's, e.g. an error line or -b's folded
output); b"E" + job (8) + status: a job's end; b"X" + status: the end.
"""

import _signal
import _socket
import posix
import sys
import time

REQUEST_MAGIC = b"bpsh2"  # 2: output comes as records, which bpsh writes
REATTACH_MAGIC = b"bpsh2r"
REATTACH_TIMEOUT = 300.0  # s: how long bpsh waits for a beoserv that went away to come back
REATTACH_POLL = 0.5  # s between attempts to reach it
MAX_REATTACH_TIMEOUT = 86400  # s: a day; a longer --reattach-timeout is a typo
RECORD_MAX = 1 << 18  # beoserv's records hold at most 128 KiB of output (localjobs.RECORD_DATA_MAX)
EPIPE = 32
SOCKET_ENV = "BEOSERV_SOCKET"
DEFAULT_SOCKET = "/run/beoserv/bpsh.sock"
NO_EXIT = 255  # beoserv went away before the status came back (ssh answers 255 likewise)
MAX_REQUEST = 1 << 20
CLOSED_EARLY = "bpsh: beoserv closed the connection before the job ended\n"
USAGE_EXIT = 2  # a bad command line, or a request too big to send
EMSGSIZE = 90  # Linux's errno value; the errno module is not among the client's imports
FLAG_LETTERS = "anpsdbh"  # the one-letter options without a value, which may be given together (-ap)
VALUED = (
    "--socket",
    "--cache",
    "-x",
    "--exclude",
    "--fanout",
    "-t",
    "--timeout",
    "--reattach-timeout",
)  # options with a value
MAX_TIMEOUT = 1e7  # seconds (115 days): a larger -t is a typo, and none at all is no -t
# ssh's options that launchers pass (Open MPI's and Hydra's -x, which is bpsh's own -x NODESET only when a
# node set follows its value (_excludes), clush's -oConnectTimeout=N -oBatchMode=yes,
# -l USER): accepted so that bpsh can stand in for ssh, and ignored, since they concern what bpsh has not
# (a terminal, X11, agents, keys, host keys, a connection to open), but for -n (bpsh's own) and -l, which
# must name the caller: a job runs as whoever runs bpsh. Their being given also says that the command is
# ssh's, one shell command line (SSH_COMMAND_RULE)
SSH_FLAGS = frozenset(("-x", "-X", "-Y", "-T", "-q", "-4", "-6", "-A", "-C", "-K", "-k", "-g"))
SSH_VALUED = frozenset(("-o", "-l", "-i", "-F", "-c", "-m", "-E", "-J"))
# Characters that make a command word shell syntax rather than a program's name: whitespace, quotes,
# operators, expansions, globs, comments, redirections (SSH_COMMAND_RULE)
SHELL_SYNTAX = frozenset(" \t\n'\"\\|&;<>()$`*?[#~")
SHELL = "/bin/sh"  # the master's, brought as any job's program is
NODE_SET_CHARS = "0123456789n[],-/!&^.: "  # what a node set without a group is written with (beoboot.master.nodeset)
SIGSTOP, SIGTSTP, SIGCONT = _signal.SIGSTOP, _signal.SIGTSTP, _signal.SIGCONT
FORWARDED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)
USAGE = """usage: bpsh [OPTIONS] NODESET COMMAND [ARGS...]
       bpsh [OPTIONS] -a COMMAND [ARGS...]
  NODESET: n3, .3 or 3; ranges 0-99 or n[0-99,120]; @up, @all, @GROUP (beoserv's [groups]);
           a,b  a!b (minus)  a&b (both); -a: every node that is up (@up)
  -x NODESET: not these nodes
  -n: the jobs read end of file, not bpsh's stdin; -p: each output line starts with its node's number
  -s: each node's output whole, node after node; -d: as -s, with a divider line before each node's
  -b: fold identical output: each distinct output once, under the nodes that gave it (as clush -b)
  --fanout N: run on N nodes at a time, the next one starting as one ends
  -t SECONDS: kill a node's job after SECONDS (reported; status 255, as clush -u)
  --cache PATH: also bring PATH (a file or a tree)
  --reattach-timeout SECONDS: how long to wait for a beoserv that went away (300; 0: do not wait)
  COMMAND as ssh takes it: one word of shell syntax (bpsh 0 'ls | wc -l'), or after any ssh option (-x, -o
  OPT, -l USER, ...), runs as /bin/sh -c 'the words joined by spaces'; otherwise the words are the argv"""

# SSH_COMMAND_RULE: when bpsh runs its command words through a shell, as ssh always does.
# ssh joins its command words with spaces and hands the line to the remote user's shell, so a launcher that
# takes ssh (mpirun's ' orted -mca ess "env" ...', Hydra's '"/usr/bin/hydra_pmi_proxy" --control-port ...',
# clush's 'echo a; echo b') relies on a shell to split and unquote it. bpsh keeps `bpsh 3 prog ARG...`
# argv-exact (an argument with spaces stays one argument), and reads the command as ssh does when
#   - an ssh option was given (the caller takes bpsh for ssh), or
#   - the first command word is shell syntax (holds whitespace, a quote or SHELL_SYNTAX), which no
#     program's name would be: `bpsh 3 'cd /tmp && make'`.
# The shell is the master's /bin/sh, and the manifest brings the commands the line names (shell.py).


class BpshUsageError(Exception):
    pass


class BpshHelp(Exception):
    """-h or --help: the usage on stdout, status 0."""


class BpshOptions:
    """What the command line asked for; `nodes` is the node set as typed ('0,3', 'n[0-7]', '@up'; 'all' for
    -a), `exclude` that of -x."""

    __slots__ = (
        "socket",
        "nodes",
        "argv",
        "cache",
        "no_stdin",
        "prefix",
        "sequential",
        "divider",
        "exclude",
        "fold",
        "fanout",
        "timeout",
        "reattach_timeout",
    )

    def __init__(
        self,
        socket,
        nodes,
        argv,
        cache=(),
        no_stdin=False,
        prefix=False,
        sequential=False,
        divider=False,
        exclude="",
        fold=False,
        fanout=0,
        timeout=0.0,
        reattach_timeout=REATTACH_TIMEOUT,
    ):
        self.socket, self.nodes, self.argv, self.cache = socket, nodes, tuple(argv), tuple(cache)
        self.no_stdin, self.prefix, self.sequential, self.divider = no_stdin, prefix, sequential or divider, divider
        self.exclude, self.fold, self.fanout, self.timeout = exclude, fold, fanout, timeout
        self.reattach_timeout = reattach_timeout

    def __eq__(self, other):
        return isinstance(other, BpshOptions) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self):
        return "BpshOptions(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


def parse_args(args, environ=None):
    """Options first, then the node list (or -a), then the command and its arguments, untouched."""
    environ = posix.environ if environ is None else environ
    socket = environ.get(SOCKET_ENV.encode()) if environ is posix.environ else environ.get(SOCKET_ENV)
    socket = (socket.decode() if isinstance(socket, bytes) else socket) or DEFAULT_SOCKET
    cache = []
    no_stdin = every = prefix = sequential = divider = fold = as_ssh = False
    exclude, fanout, timeout = "", 0, 0.0
    reattach_timeout = REATTACH_TIMEOUT
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option[:2] in SSH_VALUED:  # -oBatchMode=yes, -o BatchMode=yes, -l user
            value = option[2:] or (rest.pop(0) if rest else "")
            if not value:
                raise BpshUsageError(f"{option} needs a value")
            if option[:2] == "-l":
                check_login(value)
            as_ssh = True
            continue
        if option in SSH_FLAGS and not (option == "-x" and (every or _excludes(rest))):
            as_ssh = True
            continue
        if len(option) > 2 and option[1] != "-" and not option.strip("-" + FLAG_LETTERS):
            rest[:0] = ["-" + letter for letter in option[1:]]  # -np: -n -p, as getopt reads them
            continue
        name, equals, value = option.partition("=") if option.startswith("--") else (option, "", "")
        if name in VALUED:
            if not equals:
                if not rest:
                    raise BpshUsageError(f"{option} needs a value")
                value = rest.pop(0)
            if name == "--socket":
                socket = value
            elif name == "--reattach-timeout":
                reattach_timeout = parse_seconds(name, value)
            elif name == "--cache":
                cache.append(value)
            elif name in ("-x", "--exclude"):
                if ";" in value or not value.strip():
                    raise BpshUsageError(f"-x {value!r} is not a node set (e.g. -x n3 or -x n[0-3],@rack2)")
                exclude = value if not exclude else exclude + "," + value
            elif name == "--fanout":
                fanout = _count(name, value)
            else:
                timeout = _seconds(name, value)
        elif option == "-n":
            no_stdin = True
        elif option == "-p":
            prefix = True
        elif option == "-s":
            sequential = True
        elif option == "-d":
            divider = True
        elif option == "-b":
            fold = True
        elif option in ("-h", "--help"):
            raise BpshHelp()
        elif option in ("-a", "--all"):
            every = True
        elif option == "--":
            break
        else:
            raise BpshUsageError(f"unknown option {option!r}")
    if every:
        nodes = "all"
    elif rest:
        nodes = rest.pop(0)
    else:
        raise BpshUsageError("no node given")
    if not rest:
        raise BpshUsageError("no command given")
    if fold and (prefix or sequential or divider):
        raise BpshUsageError("-b folds the output of every node together: not with -p, -s or -d")
    if ";" in nodes:
        raise BpshUsageError(f"{nodes!r} is not a node set (e.g. n3, n[0-7], @up)")
    command = remote_command(rest, as_ssh)
    return BpshOptions(
        socket,
        nodes,
        command,
        cache,
        no_stdin,
        prefix,
        sequential,
        divider,
        exclude,
        fold,
        fanout,
        timeout,
        reattach_timeout,
    )


def _excludes(rest):
    """Whether -x, followed by `rest`, is bpsh's -x NODESET rather than ssh's -x (no X11), which Hydra
    passes before the host: `bpsh -x n3 '"/usr/bin/hydra_pmi_proxy"' ...`. It is bpsh's after -a, for a
    group (no host is named @...), and when its value is followed by another option (-a) or by the node set
    to run on: a word of node-set characters only; never when an option follows it at once."""
    if rest and rest[0].startswith("-"):
        return False  # no node set starts so: another option follows ssh's flag
    if len(rest) < 2 or rest[0].startswith("@"):
        return True  # a value and nothing more: let the value's check say what is missing
    after = rest[1]
    return after.startswith(("-", "@")) or after == "all" or (bool(after) and not after.strip(NODE_SET_CHARS))


def _count(option, text):
    """--fanout N: a whole number of nodes, at least 1."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 1 << 20:
        raise BpshUsageError(f"{option} {text!r}: give a number of nodes, 1 or more")
    return int(text)


def _seconds(option, text):
    """-t SECONDS: a number of seconds above 0 (3, 0.5)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN fails this too
        raise BpshUsageError(f"{option} {text!r}: give the seconds each node's job may run, e.g. -t 30")
    return seconds


def remote_command(words, as_ssh=False):
    """The job's argv for these command words (SSH_COMMAND_RULE): themselves, or /bin/sh -c LINE."""
    if as_ssh or not words[0] or any(char in SHELL_SYNTAX for char in words[0]):
        return [SHELL, "-c", " ".join(words)]
    return words


def check_login(user):
    """ssh -l USER: only the caller's own name (or uid), since the job runs as the caller whatever it says."""
    import pwd  # built into the interpreter: costs no file, and only when -l is given

    uid = posix.getuid()
    try:
        own = pwd.getpwuid(uid).pw_name
    except KeyError:
        own = str(uid)
    if user not in (own, str(uid)):
        raise BpshUsageError(f"-l {user}: jobs run as the user who runs bpsh ({own}); run bpsh as {user} instead")


def parse_seconds(name, text):
    """--reattach-timeout: a number of seconds from 0 to a day: not NaN, not infinite, not negative."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_REATTACH_TIMEOUT:  # NaN fails this too
        raise BpshUsageError(f"{name} {text!r}: expected seconds from 0 to {MAX_REATTACH_TIMEOUT}, e.g. {name} 600")
    return seconds


def encode_request(options, cwd, environ):
    """The request record; `environ` maps bytes to bytes (posix.environ)."""

    def b(text):
        return text.encode("utf-8", "surrogateescape")

    letters = b"".join(
        letter
        for letter, on in (
            (b"n", options.no_stdin),
            (b"p", options.prefix),
            (b"s", options.sequential),
            (b"d", options.divider),
            (b"b", options.fold),
        )
        if on
    )
    if options.exclude:
        letters += b";x=" + b(options.exclude)
    if options.fanout:
        letters += b";f=%d" % options.fanout
    if options.timeout:
        letters += b";t=" + repr(float(options.timeout)).encode()
    fields = [
        REQUEST_MAGIC,
        b(options.nodes),
        cwd,
        letters,
        b"%d" % len(options.argv),
        *map(b, options.argv),
        b"%d" % len(options.cache),
        *map(b, options.cache),
    ]
    fields += [name + b"=" + value for name, value in environ.items()]
    return b"\0".join(fields)  # no field holds a NUL: arguments and the environment are C strings


class Client:
    def __init__(self, options, fds=(0, 1, 2)):
        self.options = options
        self.fds = fds
        self.sock = None
        self.jobs = {}  # job id -> [stdout offset, stderr offset, node]: how far its output got, while it runs
        self.statuses = []  # of the jobs that ended
        self.pending = []  # signals to forward once beoserv is back
        self.broken = set()  # descriptors that took no more (a closed pipe): the rest for them is dropped

    def run(self, signals=False):
        """Send the request, write the output, wait for the status; the exit status bpsh should have."""
        sock = self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            sock.connect(self.options.socket)
        except OSError as exc:
            self._say(
                f"bpsh: cannot reach beoserv at {self.options.socket}: {exc.strerror}\n"
                f"  hint: is beoserv running? its socket is --bpsh-socket; here --socket or ${SOCKET_ENV}\n"
            )
            sock.close()
            return NO_EXIT
        try:
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in self.fds)
            environ = callers_environ()
            request = encode_request(self.options, posix.getcwdb(), environ)
            if len(request) > MAX_REQUEST:
                self._say(too_big(len(request), MAX_REQUEST, self.options, environ))
                return USAGE_EXIT
            if not self._send_request(request, fds):
                return USAGE_EXIT
            if signals:
                self._install_signals()
            while True:
                status = self._relay()
                if status is not None:
                    return status
                if not self.jobs or self.options.reattach_timeout <= 0:
                    self._say(CLOSED_EARLY)
                    return NO_EXIT
                if not self._reattach(fds):
                    return NO_EXIT
        except OSError as exc:
            self._say(f"bpsh: talking to beoserv at {self.options.socket}: {exc}\n")
            return NO_EXIT
        finally:
            if signals:
                for signum in (*FORWARDED_SIGNALS, SIGTSTP, SIGCONT):
                    _signal.signal(signum, _signal.SIG_DFL)
            self.sock.close()

    def _relay(self):
        """beoserv's records until the status (returned), or None when beoserv went away first."""
        while True:
            try:
                record = self.sock.recv(RECORD_MAX)
            except ConnectionError:
                return None
            kind = record[0] if record else 0
            if kind == 79:  # b"O"
                self._output(memoryview(record))
                continue
            if kind == 74:  # b"J"
                self.jobs[int.from_bytes(record[1:9], "big")] = [0, 0, int(record[9:])]
            elif kind == 69:  # b"E"
                self.jobs.pop(int.from_bytes(record[1:9], "big"), None)
                self.statuses.append(int(record[9:]))
            elif kind == 88:  # b"X"
                return max([int(record[1:]), *self.statuses])
            elif not record:
                return None

    def _output(self, record):
        stream, job, end = record[1], int.from_bytes(record[2:10], "big"), int.from_bytes(record[10:18], "big")
        offsets = self.jobs.get(job)
        if offsets is not None:
            if end <= offsets[stream - 1]:
                return  # written already (beoserv resends nothing bpsh told it it has: this is only a guard)
            offsets[stream - 1] = end
        fd = self.fds[2] if stream == 2 else self.fds[1]
        if fd in self.broken:
            return
        view = record[18:]
        try:
            while view:
                view = view[posix.write(fd, view) :]
        except OSError as exc:
            self.broken.add(fd)
            if exc.errno == EPIPE and stream == 1:  # `bpsh 0 cat big | head`: the job gets SIGPIPE, as at a shell
                self._send(b"P")

    def _reattach(self, fds):
        """Wait for beoserv to come back and take the running jobs again; False if it did not in time."""
        timeout = self.options.reattach_timeout
        self._say(f"bpsh: beoserv went away; waiting up to {timeout:g} s for it to reattach to {len(self.jobs)} jobs\n")
        flags = b"".join(
            letter
            for letter, on in ((b"n", self.options.no_stdin), (b"p", self.options.prefix or self.options.fold))
            if on
        )
        record = b"\0".join(
            [REATTACH_MAGIC, flags, *(b"%d:%d:%d:%d" % (job, *offsets) for job, offsets in self.jobs.items())]
        )
        ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
        self.sock.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(REATTACH_POLL)
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            try:
                sock.connect(self.options.socket)
                sock.sendmsg([record], ancillary)
            except OSError:
                sock.close()
                continue
            self.sock = sock
            pending, self.pending = self.pending, []
            for signum in pending:
                self._send_signal(signum)
            self._say("bpsh: reattached\n")
            return True
        self._say(f"bpsh: beoserv did not come back within {timeout:g} s\n")
        return False

    def _send_request(self, request, fds):
        """One record with the descriptors; False (said why) if it is too big for this system's sockets."""
        ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
        try:
            self.sock.sendmsg([request], ancillary)
            return True
        except OSError as exc:
            if exc.errno != EMSGSIZE:
                raise
        # a record must fit the socket's send buffer (net.core.wmem_default, 208 KiB). A bigger buffer here
        # would not help: the node's launcher passes the job on over a socket of that default size too
        limit = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF) - 32  # less the kernel's overhead
        self._say(too_big(len(request), limit, self.options, callers_environ()))
        return False

    def _say(self, text):
        try:
            posix.write(self.fds[2], text.encode(errors="replace"))
        except OSError:
            pass

    def _install_signals(self):
        for signum in FORWARDED_SIGNALS:
            _signal.signal(signum, self._forward)
        _signal.signal(SIGTSTP, self._stop)
        _signal.signal(SIGCONT, self._forward)

    def _send(self, record):
        try:
            self.sock.send(record)
            return True
        except OSError:
            return False

    def _send_signal(self, signum):
        if not self._send(b"S%d" % signum):
            self.pending.append(signum)  # beoserv is away: forwarded when bpsh reattaches

    def _forward(self, signum, frame):
        self._send_signal(signum)

    def _stop(self, signum, frame):
        """Ctrl-Z: stop the jobs, then stop here as the shell expects; SIGCONT (fg/bg) continues both."""
        self._send_signal(SIGSTOP)
        _signal.signal(SIGTSTP, _signal.SIG_DFL)
        posix.kill(posix.getpid(), SIGTSTP)
        _signal.signal(SIGTSTP, self._stop)


COERCED_LOCALES = (b"C.UTF-8", b"C.utf8", b"UTF-8")  # what Python sets LC_CTYPE to for a caller in the C locale


def callers_environ():
    """The environment bpsh was started with, which the jobs get: posix.environ, less the LC_CTYPE that the
    interpreter sets itself when the caller's locale is C (PEP 538; -I leaves it on). The compiled client
    sends the environment as it is; so must this one. Only then is /proc/self/environ read: it is the
    environment as exec gave it, which the interpreter's setenv does not change."""
    environ = posix.environ
    if environ.get(b"LC_CTYPE") not in COERCED_LOCALES or environ.get(b"LC_ALL"):
        return environ
    try:
        fd = posix.open("/proc/self/environ", posix.O_RDONLY)
    except OSError:
        return environ
    try:
        given = b""
        while chunk := posix.read(fd, 1 << 16):
            given += chunk
    finally:
        posix.close(fd)
    if any(entry.startswith(b"LC_CTYPE=") for entry in given.split(b"\0")):
        return environ  # the caller's own
    return {name: value for name, value in environ.items() if name != b"LC_CTYPE"}


def too_big(size, limit, options, environ):
    """The error for a request over `limit` bytes, naming its largest part, which is usually the culprit."""
    parts = [
        (len(arg.encode("utf-8", "surrogateescape")), f"argument {i} of the command")
        for i, arg in enumerate(options.argv)
    ]
    parts += [
        (len(name) + 1 + len(value), f"environment variable {name.decode(errors='replace')}")
        for name, value in environ.items()
    ]
    largest, what = max(parts)
    return (
        f"bpsh: the request is {size} bytes (the command's arguments and environment); at most {limit} fit\n"
        f"  hint: the largest part is {what} ({largest} bytes); pass fewer or shorter arguments, or unset\n"
        f"  big variables (env -u NAME bpsh ...)\n"
    )


def fill_closed_stdio():
    """Open /dev/null on any of descriptors 0, 1 and 2 that the caller closed (`bpsh 0 cat <&-`): else the
    socket would take that number, and beoserv would read the socket as stdin (the job would never see end
    of file) or write the job's output into it (where it reads as our requests)."""
    for fd in (0, 1, 2):
        try:
            posix.fstat(fd)
        except OSError:
            posix.open("/dev/null", posix.O_RDWR)  # the lowest free number, which is fd: those below are open


def main(argv=None):
    fill_closed_stdio()
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except BpshUsageError as exc:
        posix.write(2, f"bpsh: {exc}\n{USAGE}\n".encode())
        return USAGE_EXIT
    except BpshHelp:
        posix.write(1, f"{USAGE}\n".encode())
        return 0
    return Client(options).run(signals=True)

/* bpsh, compiled: the common path of beoboot/master/bpsh/client.py in C, for launchers that start bpsh once
 * per node (mpirun, pdsh, clush), where the client's own start is most of what a cached job costs. Python
 * cannot start in the 5 ms a cached `bpsh 0 /bin/true` should take (its interpreter alone takes 8-10 ms);
 * this starts and exits in what /bin/true takes (0.6 ms: benchmarks/bpsh_start.py).
 *
 * It speaks the same local-socket protocol, byte for byte (client.py's docstring has the wire format):
 * connect to beoserv's SOCK_SEQPACKET socket, send one record with stdin, stdout and stderr (SCM_RIGHTS),
 * write the jobs' output records (O) to stdout and stderr, keeping each job's offsets (J, E), send "P"
 * when stdout is a closed pipe, forward signals as "S<number>", exit with the highest of the status in
 * beoserv's "X<status>" and the jobs' (E). When beoserv goes away with jobs running it reattaches as
 * Client._reattach does: the same words, the same record, the same poll and timeout, the signals sent
 * meanwhile forwarded once it is back.
 *
 * One implementation decides each thing. This file decides only the command lines of FAST_PATH below and
 * anything else (an unknown option, -x, -t, --fanout, -h, -l, a usage error, a request too big, beoserv
 * not reachable) goes to the Python client, exec'd with the same arguments: it says what is wrong, or
 * runs the job, as it always did. The constants the two share (the request's magic, the socket's
 * variable and default path, ssh's options, what makes a word shell syntax, the exit statuses, the
 * signals forwarded, the records' size, reattach's magic, poll and timeout) are client.py's, written into
 * the header compile.py makes (-include); so is the command line of the Python client to fall back to
 * (FALLBACK_ARGV). */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef REQUEST_MAGIC
#error "compile with -include of the header beoboot/master/bpsh/fast/compile.py writes"
#endif

/* FAST_PATH: the options this client reads itself. Any other word that starts with '-' before the node
 * set sends the whole command line to the Python client:
 *   the flags FAST_LETTERS (-n -p -s -d -b -a), alone or together (-np), and --all;
 *   --socket PATH, --cache PATH (or --socket=PATH, --cache=PATH); --;
 *   --reattach-timeout SECONDS (or =SECONDS) written as digits with at most one '.' (30, 0.5), from 0 to
 *   MAX_REATTACH_TIMEOUT: any other spelling (1e2, -1, nan) is the Python client's to take or refuse;
 *   ssh's options, ignored as client.py ignores them (SSH_FLAGS, and -x when the words after it say it is
 *   ssh's, as client.py's _excludes reads them: Hydra's; SSH_VALUED but -l, which must name the caller).
 *   bpsh's own -x NODESET is the Python client's.
 * The command words: as they are, or SHELL -c 'the words joined by spaces' when an ssh option came or the
 * first word is shell syntax (client.py's SSH_COMMAND_RULE). */
static const char FAST_LETTERS[] = "npsdba"; /* of client.py's FLAG_LETTERS, all but -h */
static const char *const NOT_FAST_SSH[] = {"-l", 0};

extern char **environ;

static char **given_argv;
static int given_argc;
static int sock = -1;
static struct sockaddr_un address = {.sun_family = AF_UNIX};
static char request[MAX_REQUEST];
static size_t request_len;
static char record[RECORD_MAX];

/* Client.jobs: each running job of this bpsh, in the order beoserv named them, with how far its output
 * got per stream (what a reattach asks the rest from) */
struct job {
    uint64_t id;
    uint64_t offsets[2]; /* stdout, stderr */
    long long node;
};
static struct job *jobs;
static size_t njobs, jobs_room;
static long long worst = LLONG_MIN; /* the highest status of the jobs that ended (E) */
static int broken[3];               /* a descriptor that took no more: the rest for it is dropped */

/* Client.pending: signals that came while beoserv was away, forwarded once it is back */
static volatile sig_atomic_t pending[256];
static volatile sig_atomic_t npending;

/* The Python client, with this command line: it decides what this client does not. */
_Noreturn static void fall_back(void)
{
    static const char *const prefix[] = FALLBACK_ARGV;
    size_t n = sizeof prefix / sizeof prefix[0];
    char **argv = calloc(n + (size_t)given_argc + 1, sizeof *argv);
    if (sock >= 0)
        close(sock);
    if (argv) {
        for (size_t i = 0; i < n; i++)
            argv[i] = (char *)prefix[i];
        for (int i = 1; i < given_argc; i++)
            argv[n + (size_t)i - 1] = given_argv[i];
#ifdef FALLBACK_BESIDE
        /* installed by pip: the interpreter beside this executable (a virtualenv's), whose site-packages
         * hold this beoboot, rather than the one that built the wheel; else that one */
        static char beside[4096];
        ssize_t len = readlink("/proc/self/exe", beside, sizeof beside - sizeof FALLBACK_BESIDE);
        char *slash = len > 0 ? memrchr(beside, '/', (size_t)len) : 0;
        if (slash) {
            memcpy(slash + 1, FALLBACK_BESIDE, sizeof FALLBACK_BESIDE);
            if (access(beside, X_OK) == 0)
                argv[0] = beside;
        }
#endif
        execv(argv[0], argv);
    }
    dprintf(2, "bpsh: cannot run the Python client %s: %s\n  hint: reinstall beoboot (python3 build.py setup)\n",
            prefix[0], strerror(errno));
    _exit(NO_EXIT);
}

static int listed(const char *const *list, const char *word)
{
    for (; *list; list++)
        if (strcmp(*list, word) == 0)
            return 1;
    return 0;
}

/* client.py's _excludes: whether -x, followed by `rest` (count words), is bpsh's -x NODESET rather than
 * ssh's -x (no X11), which Hydra passes before the host */
static int excludes(char **rest, int count)
{
    if (count > 0 && rest[0][0] == '-')
        return 0; /* another option follows: ssh's flag */
    if (count < 2 || rest[0][0] == '@')
        return 1;
    const char *after = rest[1];
    if (after[0] == '-' || after[0] == '@' || strcmp(after, "all") == 0)
        return 1;
    return after[0] && after[strspn(after, NODE_SET_CHARS)] == 0; /* node-set characters only */
}

/* --reattach-timeout's value when written plainly (30, 0.5, 300.) and in client.parse_seconds's range;
 * anything else goes to the Python client, which takes it (1e2) or refuses it (-1, nan) */
static double plain_seconds(const char *text)
{
    size_t digits = strspn(text, "0123456789"), point = text[digits] == '.';
    size_t more = strspn(text + digits + point, "0123456789");
    if (digits + more == 0 || text[digits + point + more])
        fall_back();
    double seconds = strtod(text, 0);
    if (!(seconds >= 0 && seconds <= MAX_REATTACH_TIMEOUT))
        fall_back();
    return seconds;
}

/* client.py's `option[:2] in SSH_VALUED` */
static int starts_ssh_valued(const char *option)
{
    for (const char *const *name = SSH_VALUED; *name; name++)
        if (option[1] && strncmp(*name, option, 2) == 0)
            return 1;
    return 0;
}

static void say(const char *text)
{
    ssize_t ignored = write(2, text, strlen(text));
    (void)ignored;
}

static int reattaching; /* the request is sent: too big now is not the Python client's to say */

static void add(const char *data, size_t len)
{
    if (len > sizeof request - request_len && reattaching) {
        say("bpsh: too many jobs to reattach to\n");
        _exit(NO_EXIT);
    }
    if (len > sizeof request - request_len)
        fall_back(); /* too big: the Python client names the culprit */
    memcpy(request + request_len, data, len);
    request_len += len;
}

static void field(const char *text)
{
    if (request_len)
        add("", 1); /* the NUL before each field but the first */
    add(text, strlen(text));
}

static void number(long n)
{
    char text[24];
    snprintf(text, sizeof text, "%ld", n);
    field(text);
}

/* The environment as Python's posix.environ has it: entries with '=', the first of each name. */
static void environment(void)
{
    for (char **entry = environ; *entry; entry++) {
        const char *equals = strchr(*entry, '=');
        if (!equals)
            continue;
        size_t name_len = (size_t)(equals - *entry) + 1;
        char **earlier = environ;
        while (earlier < entry && strncmp(*earlier, *entry, name_len) != 0)
            earlier++;
        if (earlier == entry)
            field(*entry);
    }
}


/* Client._send_signal; runs in a handler: only async-signal-safe calls */
static void send_signal(int signum)
{
    char text[16] = "S", digits[12];
    size_t len = 1, n = 0;
    for (unsigned value = (unsigned)signum; n == 0 || value; value /= 10)
        digits[n++] = (char)('0' + value % 10);
    while (n)
        text[len++] = digits[--n];
    int saved = errno;
    if (send(sock, text, len, MSG_NOSIGNAL) < 0 && npending < (sig_atomic_t)(sizeof pending / sizeof pending[0]))
        pending[npending++] = signum; /* beoserv is away: forwarded when bpsh reattaches */
    errno = saved;
}

static void forward(int signum)
{
    send_signal(signum);
}

/* Ctrl-Z: stop the jobs, then stop here as the shell expects; SIGCONT (fg/bg) continues both. */
static void stop(int signum)
{
    (void)signum;
    sigset_t tstp;
    send_signal(SIGSTOP);
    signal(SIGTSTP, SIG_DFL);
    sigemptyset(&tstp);
    sigaddset(&tstp, SIGTSTP);
    sigprocmask(SIG_UNBLOCK, &tstp, 0); /* blocked while its handler runs */
    raise(SIGTSTP);
    struct sigaction again = {.sa_handler = stop, .sa_flags = SA_RESTART};
    sigaction(SIGTSTP, &again, 0);
}

static void install_signals(void)
{
    static const int forwarded[] = FORWARDED_SIGNALS;
    struct sigaction action = {.sa_handler = forward, .sa_flags = SA_RESTART};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaddset(&action.sa_mask, forwarded[i]); /* one at a time: each has its place in `pending` */
    sigaddset(&action.sa_mask, SIGCONT);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &action, 0);
    sigaction(SIGCONT, &action, 0);
    sigemptyset(&action.sa_mask);
    action.sa_handler = stop;
    sigaction(SIGTSTP, &action, 0);
}

/* client.py's fill_closed_stdio: else the socket would take descriptor 0, 1 or 2. */
static void fill_closed_stdio(void)
{
    struct stat st;
    for (int fd = 0; fd < 3; fd++)
        if (fstat(fd, &st) < 0)
            open("/dev/null", O_RDWR);
}

static uint64_t big_endian(const char *bytes)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value = value << 8 | (unsigned char)bytes[i];
    return value;
}

/* Python's int() of a record's decimal text (it is beoserv's: no need to refuse what int() would) */
static long long decimal(const char *text, size_t len)
{
    char copy[32];
    if (len >= sizeof copy)
        len = sizeof copy - 1;
    memcpy(copy, text, len);
    copy[len] = 0;
    return strtoll(copy, 0, 10);
}

static struct job *find_job(uint64_t id)
{
    for (size_t j = 0; j < njobs; j++)
        if (jobs[j].id == id)
            return &jobs[j];
    return 0;
}

/* Client._output: an O record's data to stdout or stderr, once */
static void output(const char *data, size_t len)
{
    int stream = (unsigned char)data[1];
    struct job *job = find_job(big_endian(data + 2));
    uint64_t end = big_endian(data + 10);
    int which = stream == 2 ? 1 : 0;
    if (job) {
        if (end <= job->offsets[which])
            return; /* written already (beoserv resends nothing bpsh told it it has: this is only a guard) */
        job->offsets[which] = end;
    }
    int fd = stream == 2 ? 2 : 1;
    if (broken[fd])
        return;
    for (size_t done = 18; done < len;) {
        ssize_t wrote = write(fd, data + done, len - done);
        if (wrote < 0 && errno == EINTR)
            continue;
        if (wrote < 0) {
            broken[fd] = 1;
            if (errno == EPIPE && stream == 1) /* `bpsh 0 cat big | head`: the job gets SIGPIPE, as at a shell */
                send(sock, "P", 1, MSG_NOSIGNAL);
            return;
        }
        done += (size_t)wrote;
    }
}

/* Client._relay: beoserv's records until the status (1, in *status), or 0 when beoserv went away first */
static int relay(long long *status, const char *socket_path)
{
    for (;;) {
        ssize_t got = recv(sock, record, sizeof record, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == ECONNRESET || errno == ECONNABORTED || errno == EPIPE || errno == ECONNREFUSED))
            return 0; /* Python's ConnectionError */
        if (got < 0) {
            char error[512];
            snprintf(error, sizeof error, "bpsh: talking to beoserv at %s: [Errno %d] %s\n", socket_path, errno,
                     strerror(errno));
            say(error);
            _exit(NO_EXIT);
        }
        if (got == 0)
            return 0;
        size_t len = (size_t)got;
        if (record[0] == 'O' && len >= 18) {
            output(record, len);
        } else if (record[0] == 'J' && len >= 9) {
            if (njobs == jobs_room) {
                jobs_room = jobs_room ? 2 * jobs_room : 64;
                jobs = realloc(jobs, jobs_room * sizeof *jobs);
                if (!jobs) {
                    say("bpsh: out of memory\n");
                    _exit(NO_EXIT);
                }
            }
            jobs[njobs++] = (struct job){.id = big_endian(record + 1), .node = decimal(record + 9, len - 9)};
        } else if (record[0] == 'E' && len >= 9) {
            struct job *job = find_job(big_endian(record + 1));
            if (job) {
                memmove(job, job + 1, (size_t)(jobs + njobs - (job + 1)) * sizeof *job);
                njobs--;
            }
            long long ended = decimal(record + 9, len - 9);
            if (ended > worst)
                worst = ended;
        } else if (record[0] == 'X') {
            long long given = decimal(record + 1, len - 1);
            *status = given > worst ? given : worst;
            return 1;
        }
    }
}

static const int fds[3] = {0, 1, 2};

/* One record with stdin, stdout and stderr (SCM_RIGHTS) */
static ssize_t send_with_fds(int to, const char *data, size_t len)
{
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof fds)];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    struct msghdr message = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
    struct cmsghdr *rights = CMSG_FIRSTHDR(&message);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(rights), fds, sizeof fds);
    return sendmsg(to, &message, MSG_NOSIGNAL);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_for(double seconds)
{
    struct timespec left = {.tv_sec = (time_t)seconds, .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&left, &left) < 0 && errno == EINTR)
        ;
}

/* Client._reattach: wait for beoserv to come back and take the running jobs again; 0 if it did not in time */
static int reattach(double timeout, int no_stdin, int prefix)
{
    char text[256];
    snprintf(text, sizeof text, "bpsh: beoserv went away; waiting up to %g s for it to reattach to %zu jobs\n",
             timeout, njobs);
    say(text);
    request_len = 0;
    reattaching = 1;
    field(REATTACH_MAGIC);
    field(no_stdin && prefix ? "np" : no_stdin ? "n" : prefix ? "p" : "");
    for (size_t j = 0; j < njobs; j++) {
        snprintf(text, sizeof text, "%llu:%llu:%llu:%lld", (unsigned long long)jobs[j].id,
                 (unsigned long long)jobs[j].offsets[0], (unsigned long long)jobs[j].offsets[1], jobs[j].node);
        field(text);
    }
    sigset_t forwarded, before;
    static const int signals[] = FORWARDED_SIGNALS;
    sigemptyset(&forwarded);
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
        sigaddset(&forwarded, signals[i]);
    sigaddset(&forwarded, SIGCONT);
    sigaddset(&forwarded, SIGTSTP);
    close(sock);
    sock = -1; /* a signal meanwhile is pending */
    double deadline = now() + timeout;
    while (now() < deadline) {
        pause_for(REATTACH_POLL);
        int again = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (again < 0)
            continue;
        if (connect(again, (struct sockaddr *)&address, sizeof address) < 0 ||
            send_with_fds(again, request, request_len) < 0) {
            close(again);
            continue;
        }
        sigprocmask(SIG_BLOCK, &forwarded, &before); /* the ones pending go first */
        sock = again;
        sig_atomic_t count = npending;
        npending = 0;
        for (sig_atomic_t p = 0; p < count; p++)
            send_signal(pending[p]);
        sigprocmask(SIG_SETMASK, &before, 0);
        say("bpsh: reattached\n");
        return 1;
    }
    snprintf(text, sizeof text, "bpsh: beoserv did not come back within %g s\n", timeout);
    say(text);
    return 0;
}

int main(int argc, char **argv)
{
    given_argc = argc;
    given_argv = argv;
    signal(SIGPIPE, SIG_IGN); /* as Python ignores it: an error for a closed stderr is EPIPE, not death */
    fill_closed_stdio();

    const char *socket_path = getenv(SOCKET_ENV);
    if (!socket_path || !*socket_path)
        socket_path = DEFAULT_SOCKET;
    int no_stdin = 0, prefix = 0, sequential = 0, divider = 0, fold = 0, every = 0, as_ssh = 0;
    int ncache = 0;
    double reattach_timeout = REATTACH_TIMEOUT;
    const char **cache = calloc((size_t)argc + 1, sizeof *cache);
    if (!cache)
        fall_back();
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        const char *option = argv[i++];
        if (starts_ssh_valued(option)) { /* -oBatchMode=yes, -o BatchMode=yes */
            char name[3] = {option[0], option[1], 0};
            if (listed(NOT_FAST_SSH, name))
                fall_back();
            if (!option[2]) {
                if (i >= argc || !argv[i][0])
                    fall_back(); /* needs a value */
                i++;
            }
            as_ssh = 1;
            continue;
        }
        if (listed(SSH_FLAGS, option)) {
            if (strcmp(option, "-x") == 0 && (every || excludes(argv + i, argc - i)))
                fall_back(); /* bpsh's -x NODESET */
            as_ssh = 1;
            continue;
        }
        if (option[1] && option[1] != '-') { /* -n, or several together: -np */
            for (const char *letter = option + 1; *letter; letter++) {
                if (!strchr(FAST_LETTERS, *letter))
                    fall_back();
                no_stdin |= *letter == 'n';
                prefix |= *letter == 'p';
                sequential |= *letter == 's';
                divider |= *letter == 'd';
                fold |= *letter == 'b';
                every |= *letter == 'a';
            }
            continue;
        }
        if (strcmp(option, "--") == 0)
            break;
        if (strcmp(option, "--all") == 0) {
            every = 1;
            continue;
        }
        const char *value = 0;
        size_t name_len = strcspn(option, "=");
        if (option[name_len] == '=')
            value = option + name_len + 1;
        else if (i < argc)
            value = argv[i];
        int is_socket = name_len == 8 && strncmp(option, "--socket", 8) == 0;
        int is_cache = name_len == 7 && strncmp(option, "--cache", 7) == 0;
        int is_reattach = name_len == 18 && strncmp(option, "--reattach-timeout", 18) == 0;
        if (!(is_socket || is_cache || is_reattach) || !value)
            fall_back();
        if (option[name_len] != '=')
            i++;
        if (is_socket)
            socket_path = value;
        else if (is_cache)
            cache[ncache++] = value;
        else
            reattach_timeout = plain_seconds(value);
    }
    const char *nodes = "all";
    if (!every) {
        if (i >= argc)
            fall_back(); /* no node given */
        nodes = argv[i++];
    }
    if (i >= argc || (fold && (prefix || sequential || divider)) || strchr(nodes, ';'))
        fall_back(); /* usage errors */

    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd))
        fall_back();
    field(REQUEST_MAGIC);
    field(nodes);
    field(cwd);
    char letters[8] = "";
    char *letter = letters;
    if (no_stdin)
        *letter++ = 'n';
    if (prefix)
        *letter++ = 'p';
    if (sequential || divider)
        *letter++ = 's';
    if (divider)
        *letter++ = 'd';
    if (fold)
        *letter++ = 'b';
    field(letters);
    const char *word = argv[i];
    if (as_ssh || !word[0] || strpbrk(word, SHELL_SYNTAX)) { /* SSH_COMMAND_RULE */
        number(3);
        field(SHELL);
        field("-c");
        field(argv[i]);
        for (int w = i + 1; w < argc; w++) {
            add(" ", 1);
            add(argv[w], strlen(argv[w]));
        }
    } else {
        number(argc - i);
        for (int w = i; w < argc; w++)
            field(argv[w]);
    }
    number(ncache);
    for (int c = 0; c < ncache; c++)
        field(cache[c]);
    environment();

    if (strlen(socket_path) >= sizeof address.sun_path)
        fall_back();
    strcpy(address.sun_path, socket_path);
    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&address, sizeof address) < 0)
        fall_back(); /* it says that beoserv cannot be reached, and why */

    char error[512];
    if (send_with_fds(sock, request, request_len) < 0) {
        if (errno == EMSGSIZE)
            fall_back(); /* too big for this system's sockets: it says which part */
        snprintf(error, sizeof error, "bpsh: talking to beoserv at %s: [Errno %d] %s\n", socket_path, errno,
                 strerror(errno));
        say(error);
        return NO_EXIT;
    }
    install_signals();
    for (;;) {
        long long status;
        if (relay(&status, socket_path))
            _exit((int)status);
        if (!njobs || reattach_timeout <= 0) {
            say(CLOSED_EARLY);
            _exit(NO_EXIT);
        }
        if (!reattach(reattach_timeout, no_stdin, prefix || fold))
            _exit(NO_EXIT);
    }
}

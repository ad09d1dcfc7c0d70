/* bpsh, compiled: the common path of beoboot/master/bpsh/client.py in C, for launchers that start bpsh once
 * per node (mpirun, pdsh, clush), where the client's own start is most of what a cached job costs. Python
 * cannot start in the 5 ms a cached `bpsh 0 /bin/true` should take (its interpreter alone takes 8-10 ms);
 * this starts and exits in what /bin/true takes (0.6 ms: benchmarks/bpsh_start.py).
 *
 * It speaks the same local-socket protocol, byte for byte (client.py's docstring has the wire format):
 * connect to beoserv's SOCK_SEQPACKET socket, send one record with stdin, stdout and stderr (SCM_RIGHTS),
 * forward signals as "S<number>", exit with the status in beoserv's "X<status>".
 *
 * One implementation decides each thing. This file decides only the command lines of FAST_PATH below and
 * anything else (an unknown option, -x, -t, --fanout, -h, -l, a usage error, a request too big, beoserv
 * not reachable) goes to the Python client, exec'd with the same arguments: it says what is wrong, or
 * runs the job, as it always did. The constants the two share (the request's magic, the socket's
 * variable and default path, ssh's options, what makes a word shell syntax, the exit statuses, the
 * signals forwarded) are client.py's, written into the header compile.py makes (-include); so is the
 * command line of the Python client to fall back to (FALLBACK_ARGV). */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef REQUEST_MAGIC
#error "compile with -include of the header beoboot/master/bpsh/fast/compile.py writes"
#endif

/* FAST_PATH: the options this client reads itself. Any other word that starts with '-' before the node
 * set sends the whole command line to the Python client:
 *   the flags FAST_LETTERS (-n -p -s -d -b -a), alone or together (-np), and --all;
 *   --socket PATH, --cache PATH (or --socket=PATH, --cache=PATH); --;
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
static char request[MAX_REQUEST];
static size_t request_len;

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

/* client.py's `option[:2] in SSH_VALUED` */
static int starts_ssh_valued(const char *option)
{
    for (const char *const *name = SSH_VALUED; *name; name++)
        if (option[1] && strncmp(*name, option, 2) == 0)
            return 1;
    return 0;
}

static void add(const char *data, size_t len)
{
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

static void say(const char *text)
{
    ssize_t ignored = write(2, text, strlen(text));
    (void)ignored;
}

static void send_signal(int signum)
{
    char text[16];
    int len = snprintf(text, sizeof text, "S%d", signum);
    int saved = errno;
    send(sock, text, (size_t)len, MSG_NOSIGNAL);
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
        sigaction(forwarded[i], &action, 0);
    sigaction(SIGCONT, &action, 0);
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
        if (!(is_socket || is_cache) || !value)
            fall_back();
        if (option[name_len] != '=')
            i++;
        if (is_socket)
            socket_path = value;
        else
            cache[ncache++] = value;
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

    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof address.sun_path)
        fall_back();
    strcpy(address.sun_path, socket_path);
    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&address, sizeof address) < 0)
        fall_back(); /* it says that beoserv cannot be reached, and why */

    int fds[3] = {0, 1, 2};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof fds)];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec data = {.iov_base = request, .iov_len = request_len};
    struct msghdr message = {
        .msg_iov = &data, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
    struct cmsghdr *rights = CMSG_FIRSTHDR(&message);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(rights), fds, sizeof fds);
    char error[512];
    if (sendmsg(sock, &message, MSG_NOSIGNAL) < 0) {
        if (errno == EMSGSIZE)
            fall_back(); /* too big for this system's sockets: it says which part */
        snprintf(error, sizeof error, "bpsh: talking to beoserv at %s: [Errno %d] %s\n", socket_path, errno,
                 strerror(errno));
        say(error);
        return NO_EXIT;
    }
    install_signals();
    char reply[4096];
    for (;;) {
        ssize_t got = recv(sock, reply, sizeof reply - 1, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(error, sizeof error, "bpsh: talking to beoserv at %s: [Errno %d] %s\n", socket_path, errno,
                     strerror(errno));
            say(error);
            _exit(NO_EXIT);
        }
        if (got == 0) {
            say(CLOSED_EARLY);
            _exit(NO_EXIT);
        }
        if (reply[0] == 'X') {
            reply[got] = 0;
            _exit(atoi(reply + 1));
        }
    }
}

"""bpsh standing in for ssh: which command words run through the master's /bin/sh, and ssh's options."""

import os
import pwd

import pytest

from beoboot.master.bpsh.client import BpshUsageError, parse_args


def argv_of(*args):
    return parse_args(list(args), {}).argv


@pytest.mark.parametrize(
    "args, expected",
    [
        # bpsh's own use stays argv-exact: an argument with spaces is one argument
        (("0", "ls", "-l"), ("ls", "-l")),
        (("0", "printf", "%s\\n", "a b"), ("printf", "%s\\n", "a b")),
        (("0", "[", "-d", "/tmp", "]"), ("/bin/sh", "-c", "[ -d /tmp ]")),  # `[` is shell syntax; same result
        # one word of shell syntax, as ssh takes it
        (("2", "echo a; echo b | tr b c"), ("/bin/sh", "-c", "echo a; echo b | tr b c")),
        (("0", "cd /tmp && make"), ("/bin/sh", "-c", "cd /tmp && make")),
        # Open MPI's plm_rsh: ' orted' then its arguments quoted for the remote shell
        (("n3", " orted", "-mca", "ess", '"env"'), ("/bin/sh", "-c", ' orted -mca ess "env"')),
        # Hydra: -x, then the proxy's path in double quotes
        (
            ("-x", "n1", '"/usr/bin/hydra_pmi_proxy"', "--control-port", "vm:4000"),
            ("/bin/sh", "-c", '"/usr/bin/hydra_pmi_proxy" --control-port vm:4000'),
        ),
        # clush: its ssh options, the command line as one word
        (
            ("-oForwardAgent=no", "-oForwardX11=no", "-oConnectTimeout=15", "-oBatchMode=yes", "n0", "uname"),
            ("/bin/sh", "-c", "uname"),
        ),
        (("-o", "StrictHostKeyChecking=no", "-q", "-T", "0", "hostname"), ("/bin/sh", "-c", "hostname")),
        # after an ssh option every word is the shell's, as ssh joins them
        (("-x", "0", "echo", "$HOME"), ("/bin/sh", "-c", "echo $HOME")),
    ],
)
def test_which_commands_run_through_the_shell(args, expected):
    assert argv_of(*args) == expected


def test_ssh_options_leave_bpshs_own_as_they_were():
    options = parse_args(["-n", "-x", "-oBatchMode=yes", "n2", "true"], {})
    assert (options.no_stdin, options.nodes, options.argv) == (True, "n2", ("/bin/sh", "-c", "true"))


def test_ssh_login_must_name_the_caller():
    own = pwd.getpwuid(os.getuid()).pw_name
    assert argv_of("-l", own, "0", "true") == ("/bin/sh", "-c", "true")
    assert argv_of(f"-l{os.getuid()}", "0", "true") == ("/bin/sh", "-c", "true")
    with pytest.raises(BpshUsageError, match="jobs run as the user who runs bpsh"):
        parse_args(["-l", "someone-else", "0", "true"], {})
    with pytest.raises(BpshUsageError, match="-o needs a value"):
        parse_args(["-o"], {})


@pytest.mark.parametrize(
    "args, nodes, exclude, argv",
    [
        # bpsh's -x NODESET: a node set or another option follows its value, or it names a group, or -a came
        (("-x", "n1", "-a", "true"), "all", "n1", ("true",)),
        (("-x", "n1", "n[0-3]", "true"), "n[0-3]", "n1", ("true",)),
        (("-x", "0,2", "0-3", "true"), "0-3", "0,2", ("true",)),
        (("-a", "-x", "@rack1", "true"), "all", "@rack1", ("true",)),
        (("-x", "@gpu", "@up", "true"), "@up", "@gpu", ("true",)),
        # ssh's -x (Hydra's, clush's): a host, then a command
        (("-x", "n1", "hostname"), "n1", "", ("/bin/sh", "-c", "hostname")),
        (("-x", "n1", '"/usr/bin/hydra_pmi_proxy"'), "n1", "", ("/bin/sh", "-c", '"/usr/bin/hydra_pmi_proxy"')),
    ],
)
def test_x_excludes_nodes_unless_ssh_is_what_the_words_say(args, nodes, exclude, argv):
    options = parse_args(list(args), {})
    assert (options.nodes, options.exclude, options.argv) == (nodes, exclude, argv)

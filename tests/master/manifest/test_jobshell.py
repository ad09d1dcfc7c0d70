"""The commands of a shell job, read from its text as the shell will run them."""

import pytest

from beoboot.master.manifest.shell import command_words, shell_command_text


@pytest.mark.parametrize(
    "text, words",
    [
        ("ls /scratch | wc -l", ["ls", "wc"]),
        ("trap '' TERM; sleep 100", ["trap", "sleep"]),
        ("A=1 B=2 env | sort && if test -f x; then cat x; else echo no; fi", ["env", "sort", "test", "cat", "echo"]),
        ("for f in a b; do md5sum $f; done\n# grep in a comment\nuniq", ["md5sum", "uniq"]),
        ("case $x in a) uname;; esac", ["uname"]),
        ("(cd /tmp && tar cf - .) | gzip -9 >/dev/null", ["cd", "tar", "gzip"]),
        ("$cmd arg; echo `which ls`", ["echo", "which"]),  # $cmd is built at run time: not seen
        ("for h in $(seq 3); do echo $h; done", ["echo", "seq"]),  # the substitutions after the rest
        ("echo \"up $(uptime | cut -d, -f1)\" '$(not_run)' $((1 + 2))", ["echo", "uptime", "cut"]),
        ("x=$(dirname $(readlink -f $0))", ["dirname", "readlink"]),
        ("(ls)|(wc)&&(true); (id);uname", ["ls", "wc", "true", "id", "uname"]),  # `);` is two operators
        ("echo 'unbalanced", ["echo"]),
    ],
)
def test_command_words(text, words):
    assert command_words(text) == words


def test_the_text_a_shell_runs():
    def read(path):
        return f"script {path}"

    assert shell_command_text(("sh", "-c", "ls"), read) == "ls"
    assert shell_command_text(("/bin/bash", "-lc", "ls"), read) == "ls"
    assert shell_command_text(("bash", "-o", "pipefail", "-c", "ls"), read) == "ls"
    assert shell_command_text(("sh", "-e", "job.sh", "arg"), read) == "script job.sh"
    assert shell_command_text(("python3", "-c", "ls"), read) == "" and shell_command_text(("sh",), read) == ""

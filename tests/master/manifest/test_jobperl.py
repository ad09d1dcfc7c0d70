"""beoboot.master.manifest.perl: the modules a Perl job uses, found in @INC as perl finds them."""

import pytest

from beoboot.master.manifest.perl import PerlModules, perl_start, perl_uses

PERL = "/usr/bin/perl"


@pytest.mark.parametrize(
    "args, script, code, modules, include",
    [
        (("x.pl", "-e", "1"), "/w/x.pl", "", (), ()),
        (("-w", "-Ilib", "-I", "/opt/p", "x.pl"), "/w/x.pl", "", (), ("/w/lib", "/opt/p")),
        (("-wle", "print 1", "arg"), None, "print 1", (), ()),  # after -e, the rest is @ARGV
        (
            ("-MData::Dumper", "-mList::Util=sum", "-M-warnings", "-e", "1"),
            None,
            "1",
            ("Data::Dumper", "List::Util", "warnings"),
            (),
        ),
        (("-0777", "-ne", "print", "file"), None, "print", (), ()),
        (("-0777ne", "print", "file"), None, "print", (), ()),
        (("-0x0An", "-e", "1"), None, "1", (), ()),  # -0 with hex digits, then -n
        (("-i.bak", "-pe", "s/a/b/", "f"), None, "s/a/b/", (), ()),
        (("--", "-odd.pl"), "/w/-odd.pl", "", (), ()),
        (("-",), None, "", (), ()),
    ],
)
def test_the_command_line_is_read_as_perl_reads_it(args, script, code, modules, include):
    start = perl_start(PERL, args, "/w")
    assert (start.script, start.code, start.modules, start.include) == (script, code, modules, include)


def test_uses_requires_parents_and_lib_lines():
    text = (
        'use strict; use JSON::PP; eval { require Foo::Bar };\nuse parent -norequire, "My::Base";\n'
        'use base qw(A::B C);\nuse lib "$FindBin::Bin/lib", "x";\nuse 5.010;\n=pod\n\nuse In::Pod;\n\n=cut\n'
        "__END__\nuse After::End;\n"
    )
    assert perl_uses(text) == (["strict", "JSON::PP", "Foo::Bar", "My::Base", "A::B", "C"], ["$FindBin::Bin/lib", "x"])


@pytest.fixture
def program(tmp_path):
    (tmp_path / "lib/My").mkdir(parents=True)
    (tmp_path / "lib/My/Mod.pm").write_text("package My::Mod;\nuse parent 'My::Base';\nuse Data::Dumper;\n1;\n")
    (tmp_path / "lib/My/Base.pm").write_text("package My::Base;\nuse strict;\n1;\n")
    script = tmp_path / "run.pl"
    script.write_text('use strict;\nuse FindBin;\nuse lib "$FindBin::Bin/lib";\nuse My::Mod;\nprint "ok\\n";\n')
    return tmp_path


def brought(start, env=None, modules=None):
    return set((modules or PerlModules()).paths(start, env or {}))


def test_a_script_brings_its_own_modules_and_the_core_ones_beyond_perl_base(program):
    found = brought(perl_start(PERL, (str(program / "run.pl"),), "/"))
    dumper = "/usr/lib/x86_64-linux-gnu/perl/5.36/Data/Dumper.pm"
    assert {
        str(program / "run.pl"),
        str(program / "lib/My/Mod.pm"),
        str(program / "lib/My/Base.pm"),
        dumper,
        "/usr/lib/x86_64-linux-gnu/perl/5.36/auto/Data/Dumper",
    } <= found
    assert not any("/perl-base/" in path for path in found)  # strict and the rest come with every Perl job


def test_m_switch_pperl5lib_and_taint(program):
    assert "/usr/lib/x86_64-linux-gnu/perl/5.36/Data/Dumper.pm" in brought(
        perl_start(PERL, ("-MData::Dumper", "-e", "1"), "/")
    )
    env = {"PERL5LIB": str(program / "lib")}
    assert str(program / "lib/My/Base.pm") in brought(perl_start(PERL, ("-e", "use My::Base"), "/"), env)
    assert brought(perl_start(PERL, ("-T", "-e", "use My::Base"), "/"), env) == set()  # -T: PERL5LIB ignored
    assert str(program / "lib/My/Base.pm") in brought(
        perl_start(PERL, ("-I", str(program / "lib"), "-e", "use My::Base"), "/")
    )


def test_cached_until_a_module_changes_or_appears(program):
    modules = PerlModules()
    start = perl_start(PERL, (str(program / "run.pl"),), "/")
    assert modules.paths(start, {}, cached_only=True) is None
    first = modules.paths(start, {})
    assert modules.paths(start, {}, cached_only=True) is first
    (program / "lib/My/Base.pm").write_text("package My::Base;\nuse My::Extra;\n1;\n")
    assert modules.paths(start, {}, cached_only=True) is None
    assert str(program / "lib/My/Extra.pm") not in brought(start, modules=modules)
    (program / "lib/My/Extra.pm").write_text("1;\n")  # appears where require looks
    assert str(program / "lib/My/Extra.pm") in brought(start, modules=modules)


def test_named_characters_bring_charnames_and_its_unicode_tables():
    """\\N{SNOWMAN} makes perl load _charnames itself; it reads unicore/Name.pm and, with do, Name.pl."""
    assert perl_uses('print "\\N{SNOWMAN}"; my $t = do "unicore/Name.pl";')[0] == ["unicore/Name.pl", "_charnames"]
    found = brought(perl_start(PERL, ("-CS", "-e", 'print "\\N{SNOWMAN}\\n"'), "/"))
    assert {
        "/usr/share/perl/5.36/_charnames.pm",
        "/usr/share/perl/5.36/unicore/Name.pm",
        "/usr/share/perl/5.36/unicore/Name.pl",
    } <= found

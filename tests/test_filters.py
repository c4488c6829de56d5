"""Include/exclude globs as a user reads them: classes, anchors, folders, alternatives.

Every pattern matches the whole path relative to the watched directory (`a/b/c.txt`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from uploader.config import SourceConfig, validate_config
from uploader.errors import ConfigError
from uploader.filters import FileFilter
from uploader.sources.walk import TreeWalker


def wanted(relative: str, *, include: list[str] | None = None,
           exclude: list[str] | None = None) -> bool:
    source = SourceConfig(directory="/d", include=include or ["**"], exclude=exclude or [])
    return FileFilter(source).wants_file(relative)


# The audit's examples: each of these uploaded a file the user meant to keep out
# (or uploaded nothing the user meant to send).
@pytest.mark.parametrize(("include", "exclude", "relative", "expected"), [
    (["**"], ["/secret/**"], "secret/key.pem", False),
    (["**"], ["data-[0-9].csv"], "data-1.csv", False),
    (["*.[ch]"], [], "main.c", True),
    (["*.[ch]"], [], "util.h", True),
    (["**/*.{csv,gz}"], [], "a/b.gz", True),
    (["**"], ["tmp/"], "tmp/a.csv", False),
])
def test_the_audit_examples(include, exclude, relative, expected):
    assert wanted(relative, include=include, exclude=exclude) is expected


@pytest.mark.parametrize(("pattern", "relative", "expected"), [
    ("data-[0-9].csv", "data-7.csv", True),
    ("data-[0-9].csv", "data-x.csv", False),
    ("data-[0-9].csv", "data-10.csv", False),  # one character, as `?`
    ("*.[ch]", "main.o", False),
    ("[a-cx-z]*", "b.txt", True),
    ("[a-cx-z]*", "y.txt", True),
    ("[a-cx-z]*", "m.txt", False),
    ("data-[!0-9].csv", "data-x.csv", True),
    ("data-[!0-9].csv", "data-1.csv", False),
    ("data-[^0-9].csv", "data-x.csv", True),
    ("data-[^0-9].csv", "data-1.csv", False),
    ("a[!x]b", "a/b", False),  # a class never matches `/`, negated or not
    ("a[/]b", "a/b", False),
    ("a[+-0]b", "a/b", False),  # not even through a range that spans it
    ("a[+-0]b", "a.b", True),
    ("[]]x", "]x", True),  # `]` first in a class is a member
    ("[!]]x", "]x", False),
    ("[!]]x", "ax", True),
    ("[-a]x", "-x", True),  # `-` first or last is a member
    ("[a-]x", "-x", True),
    ("[[]1].txt", "[1].txt", True),  # the way to write a literal `[`
    ("[*]", "*", True),
    ("[*]", "x", False),
    ("[?]", "x", False),
    ("x[\\]", "x\\", True),
    ("x]", "x]", True),  # a `]` outside a class is itself
])
def test_character_classes(pattern, relative, expected):
    assert wanted(relative, include=[pattern]) is expected


@pytest.mark.parametrize(("pattern", "relative", "expected"), [
    ("/secret/**", "secret/key.pem", True),
    ("/secret/**", "a/secret/key.pem", False),
    ("/top.txt", "top.txt", True),
    ("/top.txt", "a/top.txt", False),
    # Without a leading `/`, the same: a pattern matches the path from the root,
    # never a name at any depth (write `**/` for that).
    ("top.txt", "top.txt", True),
    ("top.txt", "a/top.txt", False),
    ("*.log", "a/x.log", False),
    ("**/top.txt", "a/b/top.txt", True),
    ("**/top.txt", "top.txt", True),
])
def test_a_leading_slash_anchors_at_the_root_as_every_pattern_does(pattern, relative, expected):
    assert wanted(relative, include=[pattern]) is expected


@pytest.mark.parametrize(("pattern", "relative", "expected"), [
    ("tmp/", "tmp/a.csv", True),
    ("tmp/", "tmp/deep/er/b.csv", True),
    ("tmp/", "tmp", False),  # a file named tmp is no folder
    ("tmp/", "a/tmp/b.csv", False),
    ("tmp/", "tmpx/b.csv", False),
    ("**/cache/", "a/b/cache/x.bin", True),
    ("**/cache/", "cache/x.bin", True),
    ("**/cache/", "a/cache", False),
    ("build-[0-9]/", "build-3/out.o", True),
])
def test_a_trailing_slash_means_everything_below_a_folder(pattern, relative, expected):
    assert wanted(relative, exclude=[pattern]) is not expected


@pytest.mark.parametrize(("pattern", "relative", "expected"), [
    ("*.{csv,gz}", "x.csv", True),
    ("*.{csv,gz}", "x.gz", True),
    ("*.{csv,gz}", "x.txt", False),
    ("*.{csv,gz}", "x.csvgz", False),
    ("{a,b,c}/**", "c/d/e", True),
    ("{a,b,c}/**", "d/e", False),
    ("{,sub/}x.csv", "x.csv", True),  # an empty alternative
    ("{,sub/}x.csv", "sub/x.csv", True),
    ("{logs/**/,}*.gz", "logs/a/b/x.gz", True),
    ("{logs/**/,}*.gz", "logs/x.gz", True),
    ("{logs/**/,}*.gz", "x.gz", True),
    ("{logs/**/,}*.gz", "other/x.gz", False),
    ("{[ab],c}.txt", "b.txt", True),
    ("{[ab],c}.txt", "c.txt", True),
    ("{[,]x,y}", ",x", True),  # a comma in a class is no separator
    ("{[,]x,y}", "y", True),
    ("{/top,sub/}x", "topx", True),  # as if each alternative were written out
    ("{/top,sub/}x", "sub/x", True),
    ("{tmp/,*.bak}", "tmp/a", True),
    ("{tmp/,*.bak}", "x.bak", True),
    ("{tmp/,*.bak}", "tmp", False),
    ("a,b.csv", "a,b.csv", True),  # commas are literal outside braces
    ("a,b.csv", "a", False),
    ("x}", "x}", True),  # so is a `}` closing nothing
    ("[{]a,b}", "{a,b}", True),  # a literal `{`
    ("*.{csv,gz}.{1,2}", "x.gz.2", True),
])
def test_braces_list_alternatives(pattern, relative, expected):
    assert wanted(relative, include=[pattern]) is expected


@pytest.mark.parametrize(("pattern", "relative", "expected"), [
    ("**", "a/b/c.txt", True),
    ("**/*.txt", "c.txt", True),
    ("**/*.txt", "a/b/c.txt", True),
    ("a/**", "a/b/c", True),
    ("logs/**/*.gz", "logs/x.gz", True),
    ("logs/**/*.gz", "logs/a/b/x.gz", True),
    ("*.txt", "c.txt", True),
    ("*.txt", "a/c.txt", False),  # `*` stays within one name
    ("a/*", "a/b/c", False),
    ("?.bin", "x.bin", True),
    ("a?b", "a/b", False),  # and so does `?`
    ("?.bin", "xy.bin", False),
    ("a\\b", "a\\b", True),  # a backslash is an ordinary character
    ("(x)+.txt", "(x)+.txt", True),  # and so are regex characters
    ("(x)+.txt", "xx.txt", False),
])
def test_the_documented_globs_are_unchanged(pattern, relative, expected):
    assert wanted(relative, include=[pattern]) is expected


@pytest.mark.parametrize(("relative", "expected"), [
    ("a/b.csv", True), ("a/b.txt", False), ("tmp/b.csv", False), (".secret/b.csv", False),
    ("a/.b.csv", False), ("b.csv.part", False), ("b.csv~", False), ("data/#x#", False),
    ("data/.#lock", False), ("x.csv.crdownload", False), ("x.tmp", False),
])
def test_hidden_and_temporary_files_are_still_skipped(relative, expected):
    assert wanted(relative, include=["**/*.{csv,tmp}", "**/#*#", "**/*~", "**/*.part"],
                  exclude=["tmp/"]) is expected


@pytest.mark.parametrize(("pattern", "problem"), [
    ("data-[0-9.csv", "'[' is not closed"),
    ("[", "'[' is not closed"),
    ("[]", "'[' is not closed"),
    ("*.{csv,gz", "'{' is not closed"),
    ("{a,{b,c}}", "nested"),
    ("[z-a].txt", "z-a"),
    ("", "empty"),
    ("/", "empty"),
])
def test_a_pattern_that_cannot_mean_what_it_says_is_a_config_error(pattern, problem):
    for key in ("include", "exclude"):
        raw = {"source": {"directory": "/d", key: ["**/*.csv", pattern]},
               "s3": {"bucket": "my-bucket"}}
        with pytest.raises(ConfigError) as caught:
            validate_config(raw)
        message = str(caught.value)
        assert f"source.{key}: " in message and repr(pattern) in message
        assert problem in message


@pytest.mark.parametrize(("exclude", "folder", "skipped"), [
    (["tmp/"], "tmp", True),
    (["tmp/**"], "tmp", True),
    (["/tmp/"], "tmp", True),
    (["tmp/"], "tmp/deeper", True),
    (["**/node_modules/"], "a/b/node_modules", True),
    (["{build,dist}/"], "dist", True),
    (["**"], "anything", True),
    (["tmp/"], "a/tmp", False),
    (["tmp/*"], "tmp", False),  # files in tmp/ go, but not those further down
    (["tmp/*.log"], "tmp", False),
    (["tmp"], "tmp", False),  # that is a file named tmp
    (["*.bak"], "x.bak", False),
    ([], "tmp", False),
])
def test_a_folder_excluded_whole_is_not_descended_into(exclude, folder, skipped):
    wanted_dir = FileFilter(SourceConfig(directory="/d", exclude=exclude)).wants_directory
    assert wanted_dir(folder) is not skipped


def test_skipping_excluded_folders_loses_no_wanted_file(tmp_path: Path):
    """The walk finds exactly the files `wants_file` accepts, whichever folders it skips;
    an include cannot pull a file out of an excluded folder (exclude wins)."""
    paths = ["keep.csv", "tmp/keep.csv", "tmp/deep/x.csv", "a/tmp/x.csv", "logs/x.log",
             "logs/old/x.log", "build/out.o", "src/main.c", "node_modules/p/i.js"]
    for relative in paths:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x")
    source = SourceConfig(directory=tmp_path, include=["**/*.{csv,log,c}", "tmp/keep.csv"],
                          exclude=["tmp/", "logs/*/", "build/", "**/node_modules/**"])
    file_filter = FileFilter(source)
    walked = {found.relative for found in TreeWalker(root=tmp_path, file_filter=file_filter)
              .files()}
    assert walked == {p for p in paths if file_filter.wants_file(p)}
    assert walked == {"keep.csv", "a/tmp/x.csv", "logs/x.log", "src/main.c"}

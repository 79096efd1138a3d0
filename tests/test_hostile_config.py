"""Hostile and broken configuration files (issue 7): whatever the file holds,
`replicator validate` (and `run`, which loads the same way) answers with exit
0 or 2 and one `error: ...` line per problem, never a traceback, and never
prints a secret of the file.

The base document is examples/replicator.yaml with every secret given inline
as a distinctive value. Hypothesis mutates it (keys deleted, renamed, added;
values replaced by other types, wrapped in lists, given undefined ${VAR}s;
the text truncated, corrupted with random or non-UTF-8 bytes, re-indented,
lines duplicated, quotes left open, values given a YAML indicator such as
`!` or `*`). The bulk runs in-process through `reconciler.cli.main`, a few
fixed files through real `python -m reconciler validate|run` processes.

A secret may show up in the output only where the mutated *text* itself put
it under a key that is not a secret (e.g. a corrupted line joined onto a
`host:` value): that is the operator's text echoed at a non-secret place, not
a leak. Tree mutations never do that, so for them every secret is checked.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import re
import select
import socket
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import cli, secret
from reconciler.config.validate import SECRET_KEYS, load_schema
from tests.support.cli import argv as cli_argv
from tests.support.cli import replicator

pytestmark = pytest.mark.faults

load_module = importlib.import_module("reconciler.config.reader")
validate_module = importlib.import_module("reconciler.config.validate")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "replicator.yaml"

# path in the document -> (secret value, marker). The marker is a part of the value that
# nothing else prints, so that a secret cut in two (or re-cased) by a message is still found.
SECRETS: dict[tuple, tuple[str, str]] = {
    ("primary", "password"): ("Sekret-primary-9f3a", "primary-9f3a"),
    ("replica", "password"): ("Sekret-replica-4b7c", "replica-4b7c"),
    ("follower", "password"): ('Sekret-follower-2d8e "q" \\ #x', "follower-2d8e"),
    ("api", "token"): ("Sekret-apitoken-6a1f", "apitoken-6a1f"),
    ("backup", "targets", "offsite", "password"): ("Sekret-sftp-7f4a-\u00f1", "sftp-7f4a"),
    ("backup", "targets", "offsite", "passphrase"): ("Sekret-passphrase-1e9b", "passphrase-1e9b"),
    ("backup", "targets", "cloud", "access_key"): ("Sekret-s3access-8e2b", "s3access-8e2b"),
    ("backup", "targets", "cloud", "secret_key"): ("Sekret-s3secret-3c5d", "s3secret-3c5d"),
}
SIMPLE = {path: value for path, (value, _) in SECRETS.items() if re.fullmatch(r"[A-Za-z0-9-]+", value)}
LEGACY_VARIABLES = ("MASTER_ADDRESS", "MASTER_PASSWORD", "MASTER_PASSWORD_FILE", "REPLICA_ADDRESS",
                    "REPLICA_PASSWORD", "REPLICA_PASSWORD_FILE", "FOLLOWER_PASSWORD", "FOLLOWER_PASSWORD_FILE",
                    "DATADIR", "REPLICATOR_API_TOKEN", "REPLICATOR_API_TOKEN_FILE", "REPLICATOR_CONFIG",
                    "REPLICATOR_DEBUG")
UNDEFINED = "REPLICATOR_HOSTILE_TEST_UNDEFINED_7"


def _base_text() -> str:
    """The example, every secret inline (JSON strings are YAML double-quoted scalars)."""
    text = EXAMPLE.read_text()
    q = {path: json.dumps(value, ensure_ascii=False) for path, (value, _) in SECRETS.items()}
    edits = [
        ("${PRIMARY_HOST:-immudb-primary.example.internal}", "immudb-primary.example.internal"),
        ("${PRIMARY_PASSWORD:-change-Me-primary-1}", q["primary", "password"]),
        ("${REPLICA_PASSWORD:-change-Me-replica-1}", q["replica", "password"]),
        ("${FOLLOWER_PASSWORD:-change-Me-follower-1}", q["follower", "password"]),
        ("${REPLICATOR_API_TOKEN:-change-me-api-token}", q["api", "token"]),
        ("${S3_ACCESS_KEY:-AKIAEXAMPLE}", q["backup", "targets", "cloud", "access_key"]),
        ("${S3_SECRET_KEY:-change-me}", q["backup", "targets", "cloud", "secret_key"]),
        ("      username: immudb-backup\n",
         "      username: immudb-backup\n"
         f"      password: {q['backup', 'targets', 'offsite', 'password']}\n"
         f"      passphrase: {q['backup', 'targets', 'offsite', 'passphrase']}\n"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, f"examples/replicator.yaml changed: {old!r} not found once"
        text = text.replace(old, new)
    return text


BASE_TEXT = _base_text()
BASE = yaml.safe_load(BASE_TEXT)


def _get(doc, path):
    for part in path:
        doc = doc[part]
    return doc


def _known_names() -> frozenset[str]:
    """Every key the schema or the example knows: a renamed key never becomes one of
    them (that could put a secret under a key that is not a secret)."""
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            names.update(node.get("properties", {}) if isinstance(node.get("properties"), dict) else ())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema())

    def keys(node):
        if isinstance(node, dict):
            names.update(str(k) for k in node)
            for value in node.values():
                keys(value)
        elif isinstance(node, list):
            for value in node:
                keys(value)

    keys(BASE)
    return frozenset(names)


KNOWN_NAMES = _known_names()


# --------------------------------------------------------------------------- running and checking

@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """The Go tool's variables would override the file; none of the caller's may leak in."""
    for name in LEGACY_VARIABLES + (UNDEFINED,):
        monkeypatch.delenv(name, raising=False)


def validate_in_process(path: Path) -> tuple[int, str, str]:
    """`replicator validate -c path` in this process: (exit code, stdout, stderr).

    `redact` hides every secret the process has used so far; a fresh process has used
    none, so the registry is emptied first (and restored after) or secrets that earlier
    examples registered would hide a leak."""
    out, err = io.StringIO(), io.StringIO()
    saved = set(secret._revealed)
    secret._revealed.clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["validate", "-c", str(path)])
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        secret._revealed.clear()
        secret._revealed.update(saved)
    return code, out.getvalue(), err.getvalue()


def _forms(value: str) -> set[str]:
    """How a value may look once printed: as is, repr'd, JSON-escaped, URL-quoted."""
    return {f.lower() for f in (value, repr(value)[1:-1], json.dumps(value)[1:-1],
                                json.dumps(value, ensure_ascii=False)[1:-1],
                                urllib.parse.quote(value), urllib.parse.quote_plus(value))}


def leaked(text: str, exempt: frozenset[str] = frozenset()) -> list[str]:
    """The secrets (by marker) found in `text` in any form, but those exempted."""
    low = text.lower()
    return [marker for value, marker in SECRETS.values()
            if marker not in exempt and (marker in low or any(f in low for f in _forms(value)))]


def displaced(raw: bytes) -> frozenset[str]:
    """Markers of secrets that the text itself puts at a non-secret place: inside a key,
    or a value with no secret key (password, token, ...) on its path. Nothing when the
    text is not valid YAML (then nothing of it may be echoed)."""
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except Exception:  # noqa: BLE001 - unreadable: no exemption
        return frozenset()
    found: set[str] = set()
    seen: set[int] = set()

    def visit(text: str) -> None:
        found.update(marker for value, marker in SECRETS.values()
                     if marker in text.lower() or value.lower() in text.lower())

    def walk(node, under_secret: bool, depth: int) -> None:
        if depth > 100:
            return
        if isinstance(node, (dict, list)):
            if id(node) in seen:  # aliases: each container once
                return
            seen.add(id(node))
        if isinstance(node, dict):
            for key, value in node.items():
                visit(str(key))
                walk(value, under_secret or str(key) in SECRET_KEYS, depth + 1)
        elif isinstance(node, (list, set, tuple)):
            for value in node:
                walk(value, under_secret, depth + 1)
        elif not under_secret:
            visit(str(node))

    walk(data, False, 0)
    return frozenset(found)


def assert_refused_cleanly(code, out: str, err: str, exempt: frozenset[str] = frozenset()) -> None:
    both = out + err
    assert "Traceback" not in both, both
    assert "internal error" not in both, both
    assert code in (0, 2), (code, both)
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), err
    else:
        assert "valid" in out and not err.strip(), both
    found = leaked(both, exempt)
    assert not found, f"secrets {found} printed:\n{both}"


_files = iter(range(10**9))


def write(tmp_path: Path, raw: bytes | str) -> Path:
    path = tmp_path / f"hostile-{next(_files)}.yaml"
    path.write_bytes(raw.encode() if isinstance(raw, str) else raw)
    return path


# --------------------------------------------------------------------------- the base and the checker

def test_base_document_is_valid_and_prints_no_secret(tmp_path):
    for path, (value, _) in SECRETS.items():
        assert _get(BASE, path) == value
    code, out, err = validate_in_process(write(tmp_path, BASE_TEXT))
    assert code == 0, err
    assert_refused_cleanly(code, out, err)
    # and the dumped form that tree mutations start from is the same document
    code, out, err = validate_in_process(write(tmp_path, yaml.safe_dump(BASE, sort_keys=False)))
    assert code == 0, err


def _naive_yaml_messages(text):
    return text  # what load.py did before: PyYAML's message as is


def _naive_schema_messages(error, root):
    return (), error.message  # jsonschema's own message, which embeds the instance


@pytest.mark.parametrize("broken, module, name, document", [
    ("yaml messages echoed", load_module, "_without_values", BASE_TEXT.replace(
        json.dumps(SIMPLE["primary", "password"]), "*" + SIMPLE["primary", "password"])),
    ("jsonschema messages echoed", validate_module, "_describe", BASE_TEXT.replace(
        json.dumps(SIMPLE["api", "token"]), "[" + json.dumps(SIMPLE["api", "token"]) + "]")),
])
def test_the_checks_catch_a_leaking_implementation(tmp_path, monkeypatch, broken, module, name, document):
    """The assertions have teeth: the same document passes with the real code and is
    caught as a leak once the message is built the naive way."""
    path = write(tmp_path, document)
    code, out, err = validate_in_process(path)
    assert code == 2
    assert_refused_cleanly(code, out, err)
    monkeypatch.setattr(module, name, {"_without_values": _naive_yaml_messages,
                                       "_describe": _naive_schema_messages}[name])
    code, out, err = validate_in_process(path)
    assert code == 2 and leaked(out + err), f"{broken}: the checker missed it:\n{err}"
    with pytest.raises(AssertionError, match="printed"):
        assert_refused_cleanly(code, out, err)


# --------------------------------------------------------------------------- tree mutations

def _paths(doc, prefix=()) -> list[tuple]:
    out = []
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return out
    for key, value in items:
        out.append(prefix + (key,))
        out += _paths(value, prefix + (key,))
    return out


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=20),
                    st.sampled_from(["", "yes", "0x1F", "1e3", "~", "-", "*", "2024-01-01", "s3://", "../../etc/passwd",
                                     "\x00", "${" + UNDEFINED + "}"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=8), scalars, max_size=3))


def _typos(name: str) -> list[str]:
    out = [name[1:], name[:-1], name + "s", name.upper(), name.replace("_", "-"), name + "_", " " + name,
           name[::-1], name * 2]
    if len(name) > 2:
        out += [name[0] + name[2:], name[1] + name[0] + name[2:]]
    return [n for n in out if n and n not in KNOWN_NAMES]


def mutate_tree(data, doc) -> str:
    """One random change of `doc` in place; a description for the failure report."""
    paths = _paths(doc)
    kind = data.draw(st.sampled_from(["delete", "replace", "rename", "insert", "wrap", "undefined", "file_twin"]))
    if not paths:
        kind = "insert"
    if kind == "insert":
        dict_paths = [()] + [p for p in paths if isinstance(_get(doc, p), dict)]
        where = data.draw(st.sampled_from(dict_paths))
        name = data.draw(st.text(min_size=1, max_size=12).filter(lambda n: n not in KNOWN_NAMES))
        _get(doc, where)[name] = data.draw(values)
        return f"insert {where}+{name!r}"
    path = data.draw(st.sampled_from(paths))
    parent, key = _get(doc, path[:-1]), path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = data.draw(values)
    elif kind == "wrap":
        parent[key] = [parent[key]]
    elif kind == "rename":
        if not isinstance(parent, dict):
            return "rename (no key)"
        candidates = [n for n in _typos(str(key)) if n not in parent]
        new = data.draw(st.sampled_from(candidates) if candidates else st.just(f"x_{key}_x"))
        parent[new] = parent.pop(key)
    elif kind == "undefined":
        value = parent[key]
        ref = "${" + UNDEFINED + "}"
        parent[key] = value + ref if isinstance(value, str) else ref
    elif kind == "file_twin":  # a secret given both ways, or a secret file that does not exist
        if not isinstance(parent, dict) or key not in SECRET_KEYS:
            return "file_twin (not a secret)"
        if data.draw(st.booleans()):
            del parent[key]
        parent[f"{key}_file"] = "/nonexistent/replicator-hostile/secret"
    return f"{kind} {path}"


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_tree_mutations_are_refused_cleanly_without_any_secret(tmp_path, data):
    doc = copy.deepcopy(BASE)
    done = [mutate_tree(data, doc) for _ in range(data.draw(st.integers(1, 3), label="mutations"))]
    style = data.draw(st.sampled_from([False, None, True]), label="flow style")
    raw = yaml.safe_dump(doc, sort_keys=False, allow_unicode=data.draw(st.booleans()), default_flow_style=style)
    code, out, err = validate_in_process(write(tmp_path, raw))
    note = f"mutations: {done}\n--- file ---\n{raw}"
    try:
        assert_refused_cleanly(code, out, err)  # no exemption: these never move a secret
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{note}") from None


# --------------------------------------------------------------------------- text mutations

NON_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]
INDICATORS = "!*&|>%@`'\"{[?#-:"


TEXT_KINDS = ["truncate", "insert_text", "insert_bytes", "non_utf8", "overwrite", "indent", "tab", "duplicate_line",
              "drop_line", "open_quote", "indicator", "empty"]
LINE_KINDS = ["truncate", "insert_text", "overwrite", "indent", "tab", "duplicate_line", "drop_line", "open_quote",
              "indicator", "indicator"]


def _secret_lines(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if any(m.encode() in line.lower() for _, m in SECRETS.values())]


def mutate_text(data, raw: bytes, on_secret_lines: bool = False) -> tuple[bytes, str]:
    """One random change of the text. With `on_secret_lines`, a change of a line that
    holds a secret (or of the whole text when none is left)."""
    lines = raw.split(b"\n")
    targets = _secret_lines(lines) if on_secret_lines else []
    kind = data.draw(st.sampled_from(LINE_KINDS if targets else TEXT_KINDS), label="kind")
    line_no = data.draw(st.sampled_from(targets) if targets else st.integers(0, len(lines) - 1), label="line")
    line = lines[line_no]
    start = sum(len(x) + 1 for x in lines[:line_no])
    pos = data.draw(st.integers(start, start + len(line)) if targets else st.integers(0, len(raw)), label="byte")
    if kind == "truncate":
        raw = raw[:pos]
    elif kind == "insert_text":
        raw = raw[:pos] + data.draw(st.text(min_size=1, max_size=8)).encode() + raw[pos:]
    elif kind == "insert_bytes":
        raw = raw[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + raw[pos:]
    elif kind == "non_utf8":
        raw = raw[:pos] + data.draw(st.sampled_from(NON_UTF8)) + raw[pos:]
    elif kind == "overwrite":
        junk = data.draw(st.one_of(st.binary(min_size=1, max_size=6), st.text(min_size=1, max_size=6).map(str.encode)))
        raw = raw[:pos] + junk + raw[pos + len(junk):]
    elif kind == "empty":
        raw = data.draw(st.sampled_from([b"", b"\n", b"   \n", b"# nothing here\n", b"---\n", b"...\n", b"~\n",
                                         b"---\n---\n", b"\xef\xbb\xbf"]))
    else:
        if kind == "indent":
            delta = data.draw(st.integers(-4, 4))
            line = b" " * delta + line if delta >= 0 else line[min(-delta, len(line) - len(line.lstrip())):]
        elif kind == "tab":
            line = b"\t" + line.lstrip(b" ")
        elif kind == "duplicate_line":  # mostly duplicate keys
            lines.insert(line_no, line)
        elif kind == "drop_line":
            line = None
        else:  # open_quote, indicator: the value loses its closing quote, or starts with `!`, `*`, ...
            mark = data.draw(st.sampled_from(['"', "'"] if kind == "open_quote" else list(INDICATORS))).encode()
            cut = line.find(b": ")
            if cut < 0:
                line = line + mark
            else:
                value = line[cut + 2:]
                quote = value[:1]
                if kind == "indicator" and quote in (b'"', b"'") and quote in value[1:]:
                    end = value.index(quote, 1)
                    value = value[1:end] + value[end + 1:]  # unquote it first
                line = line[:cut + 2] + mark + value
        if line is None:
            del lines[line_no]
        else:
            lines[line_no] = line
        raw = b"\n".join(lines)
    return raw, f"{kind} at line {line_no + 1} / byte {pos}"


def _mutate_and_check(tmp_path, data, most: int, on_secret_lines: bool = False) -> None:
    """1..`most` text mutations of the base file, then the checks of _check_text."""
    raw = BASE_TEXT.encode()
    done = []
    for _ in range(data.draw(st.integers(1, most), label="mutations")):
        raw, what = mutate_text(data, raw, on_secret_lines=on_secret_lines)
        done.append(what)
    _check_text(tmp_path, raw, done)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_text_mutations_are_refused_cleanly_without_a_secret(tmp_path, data):
    _mutate_and_check(tmp_path, data, most=3)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_secret_lines_mutated_are_refused_cleanly_without_a_secret(tmp_path, data):
    """The lines that hold secrets, mutated: the likeliest way for a value to reach a message."""
    _mutate_and_check(tmp_path, data, most=2, on_secret_lines=True)


def _check_text(tmp_path: Path, raw: bytes, done: list[str]) -> None:
    code, out, err = validate_in_process(write(tmp_path, raw))
    try:
        assert_refused_cleanly(code, out, err, exempt=displaced(raw))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nmutations: {done}\n--- file ---\n{raw.decode(errors='replace')}") from None


# --------------------------------------------------------------------------- fixed hostile files

def _unquoted(path: tuple, prefix: str) -> str:
    """The base text with the secret at `path` written unquoted after a YAML indicator."""
    value = SIMPLE[path]
    assert BASE_TEXT.count(json.dumps(value)) == 1
    return BASE_TEXT.replace(json.dumps(value), prefix + value)


def _swap(old: str, new: str, text: str = BASE_TEXT) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


LAUGHS = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10 if i else ["lol"] * 10) + "]\n" for i in range(9))
PRIMARY_PW, REPLICA_PW = SIMPLE["primary", "password"], SIMPLE["replica", "password"]
TOKEN, S3_SECRET = SIMPLE["api", "token"], SIMPLE["backup", "targets", "cloud", "secret_key"]
HOSTILE = {
    # a password that starts with a YAML indicator and is not quoted: tag, alias, anchor
    "tag": _unquoted(("api", "token"), "!"),
    "alias": _unquoted(("primary", "password"), "*"),
    "anchor": _unquoted(("replica", "password"), "&"),
    "verbatim_tag": _swap(json.dumps(S3_SECRET), "!<" + S3_SECRET + "> x"),
    "duplicate_anchor": _swap(json.dumps(REPLICA_PW), f"&{PRIMARY_PW} y",
                              _swap(json.dumps(PRIMARY_PW), f"&{PRIMARY_PW} x")),
    "tag_directive": f"%TAG !e! tag:{TOKEN},2000:\n---\n" + _swap(json.dumps(TOKEN), "!e!x y"),
    # explicit tags whose constructor fails on the secret
    "int_tag": _swap(json.dumps(PRIMARY_PW), "!!int " + PRIMARY_PW),
    "float_tag": _swap(json.dumps(PRIMARY_PW), "!!float " + PRIMARY_PW),
    "bool_tag": _swap(json.dumps(REPLICA_PW), "!!bool " + REPLICA_PW),
    "binary_tag": _swap(json.dumps(REPLICA_PW), "!!binary " + REPLICA_PW),
    "timestamp_tag": _swap(json.dumps(REPLICA_PW), "!!timestamp 2024-13-45"),
    "python_tag": _swap(json.dumps(PRIMARY_PW), "!!python/object:os.system {}"),
    # a secret of the wrong type, given twice, or with an undefined variable
    "secret_in_list": _swap(json.dumps(TOKEN), f"[{TOKEN}]"),
    "secret_in_mapping": _swap(json.dumps(TOKEN), f"{{v: {TOKEN}}}"),
    "secret_as_key": _swap(json.dumps(TOKEN), f"{{{TOKEN}: 1}}"),
    "secret_and_file": _swap("  timeout: 10                # seconds any single call may take; default 10",
                             "  password_file: /nonexistent/pw"),
    "undefined_in_secret": _swap(json.dumps(PRIMARY_PW), json.dumps(PRIMARY_PW + "${" + UNDEFINED + "}")),
    "unterminated_quote": _swap(json.dumps(REPLICA_PW), '"' + REPLICA_PW),
    "duplicate_secret_key": _swap("  username: immudb           # default immudb\n",
                                  f"  username: immudb\n  password: {json.dumps(REPLICA_PW)}\n"),
    # documents that would eat the machine
    "recursive_alias": BASE_TEXT + "\nextra: &loop [*loop]\n",
    "recursive_secret": _swap(json.dumps(TOKEN), "&t [*t]"),
    "billion_laughs": BASE_TEXT + LAUGHS + "more: *l8\n",
    "laughs_in_a_known_list": _swap("api:\n", LAUGHS + "api:\n", _swap(
        "  file_target_dirs: [/var/backups/immudb]", "  file_target_dirs: *l8")),
    "deep_nesting": BASE_TEXT + "extra: " + "[" * 3000 + "]" * 3000 + "\n",
    "moderately_deep": _swap("    exclude: []", "    exclude: " + "[" * 90 + "x" + "]" * 90),
    "huge_number": _swap("interval: 3600 ", "interval: 1" + "0" * 5000 + " "),
    # encodings and empty files
    "non_utf8": BASE_TEXT.encode().replace(b"replica:\n", b"replica:\xff\xfe\n"),
    "utf16": BASE_TEXT.encode("utf-16"),
    "nul_byte": _swap("host: 127.0.0.1 ", "host: 127.0.0.1\x00 "),
    "empty": b"",
    "comment_only": "# nothing\n",
    "not_a_mapping": "- primary\n- replica\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_fixed_hostile_files_are_refused_cleanly(tmp_path, name):
    raw = HOSTILE[name]
    raw = raw if isinstance(raw, bytes) else raw.encode()
    code, out, err = validate_in_process(write(tmp_path, raw))
    assert code == 2, (code, out, err)
    assert_refused_cleanly(code, out, err)  # no exemption: none of them moves a secret


@pytest.mark.parametrize("path", sorted(SIMPLE))
@pytest.mark.parametrize("indicator", list("!*&|>%@`"))
def test_an_unquoted_secret_starting_with_an_indicator_is_not_echoed(tmp_path, path, indicator):
    code, out, err = validate_in_process(write(tmp_path, _unquoted(path, indicator)))
    assert_refused_cleanly(code, out, err)


# --------------------------------------------------------------------------- real processes

@pytest.fixture
def listeners():
    """Two listening sockets standing in for the primary and the replica: a `run` that
    refuses its config must not connect to either."""
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


def _process_cases(primary_port: int, replica_port: int) -> dict[str, bytes]:
    text = _swap("host: immudb-primary.example.internal   # required\n  port: 3322",
                 f"host: 127.0.0.1\n  port: {primary_port}")
    text = _swap("host: 127.0.0.1            # required\n  port: 3322",
                 f"host: 127.0.0.1\n  port: {replica_port}", text)
    text = _swap("listen: 127.0.0.1:8081", "listen: 127.0.0.1:1", text)  # never reached
    primary_pw, token = json.dumps(SIMPLE["primary", "password"]), json.dumps(SIMPLE["api", "token"])
    follower_pw = json.dumps(SECRETS["follower", "password"][0], ensure_ascii=False)
    schema_errors = _swap(follower_pw, f"[{follower_pw}]", _swap("interval: 3600", "interval: soon", text))
    return {
        "unquoted_alias_password": _swap(primary_pw, "*" + SIMPLE["primary", "password"], text).encode(),
        "unquoted_tag_token": _swap(token, "!" + SIMPLE["api", "token"], text).encode(),
        "schema_errors": _swap("  adopt_existing: false", "  adopt_existing: false\n  adopt_existin: true",
                               schema_errors).encode(),
        "billion_laughs": (text + LAUGHS + "more: *l8\n").encode(),
        "non_utf8": _swap("follower:\n", "follower:\udcc3(\n", text).encode(errors="surrogateescape"),
    }


def _environment(tmp_path: Path, debug: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEGACY_VARIABLES}
    env["HOME"] = str(tmp_path)
    if debug:
        env["REPLICATOR_DEBUG"] = "1"
    return env


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "REPLICATOR_DEBUG"])
def test_validate_and_run_processes_refuse_broken_files_without_connecting(tmp_path, listeners, debug):
    cases = _process_cases(*(s.getsockname()[1] for s in listeners))
    env = _environment(tmp_path, debug)
    for name, raw in cases.items():
        path = write(tmp_path, raw)
        for command in ("validate", "run"):
            done = replicator(command, "-c", str(path), env=env, timeout=60)
            try:
                assert done.returncode == 2, done.returncode
                assert_refused_cleanly(done.returncode, done.stdout, done.stderr)
            except AssertionError as exc:
                raise AssertionError(f"{command} {name}: {exc}\nstdout: {done.stdout}\nstderr: {done.stderr}") from None
    for s in listeners:
        with pytest.raises(BlockingIOError):
            s.accept()  # nobody connected


def test_run_process_with_a_valid_file_does_connect(tmp_path, listeners):
    """The counterpart that shows the listeners notice a connection: a valid file
    naming the same two ports makes `run` reach for them."""
    primary_port, replica_port = (s.getsockname()[1] for s in listeners)
    path = write(tmp_path, yaml.safe_dump({
        "primary": {"host": "127.0.0.1", "port": primary_port, "password": SIMPLE["primary", "password"], "timeout": 2},
        "replica": {"host": "127.0.0.1", "port": replica_port, "password": SIMPLE["replica", "password"], "timeout": 2,
                    "data_dir": str(tmp_path / "data")},
        "follower": {"password": SECRETS["follower", "password"][0]},
        "api": {"enabled": False},
    }))
    (tmp_path / "data").mkdir()
    assert validate_in_process(path)[0] == 0
    proc = subprocess.Popen(cli_argv("run", "-c", str(path)), cwd=ROOT,
                            env=_environment(tmp_path, False), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select(listeners, [], [], 60)
        assert ready, "run never connected to the primary or the replica"
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0].decode(errors="replace")
    assert not leaked(output), output

"""Hostile matrix files: property-based fuzzing of ``runner plan``.

The contract under test, for *any* bytes in a matrix file:

- ``main(["plan", FILE])`` returns 0 (a valid plan) or 2 (a user error), never another code,
  and no exception escapes it;
- on exit 2, stderr starts with ``error:`` and every problem line names FILE, with a line
  number whenever the problem is about the file's content;
- ``plan`` writes nothing: the project directory holds exactly what it held before
  (in particular no ``sweeps/`` and no ``mlruns.db``).

Every example runs in a fresh ``tempfile.TemporaryDirectory`` (pytest's function-scoped
fixtures are not reset between hypothesis examples). Runs are derandomized and use no example
database, so CI sees the same ~1,100 generated cases on every run.

The bugs this suite found are pinned at the end of this file as regression tests, each
commented with its BUG number; the generators no longer steer around them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from runner.cli import main
from runner.matrix.schema import MAX_CELLS
from runner.recipe import Recipe
from tests.conftest import ROOT

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

GROUPS: dict[str, list[str]] = Recipe.load("segmentation").groups
KNOWN_KEYS = [
    "name",
    "recipe",
    "base",
    "axes",
    "zip",
    "exclude",
    "include",
    "executor",
    "tracking",
    "sweep_dir",
]
# Keys of the composed config, with the type the recipe expects (None: anything goes).
CONFIG_KEYS = {
    "seed": 0,
    "optimizer.lr": 1e-3,
    "training.max_epochs": 2,
    "training.amp": "bf16",
    "data.root": "data/demo",
    "training.patch_size": [32, 32, 32],
    "loss.include_background": False,
    "training.checkpoint_dir": None,
    "model.dropout_prob": None,
}
# Messages that are about the file as a whole, or about a key that is absent: no line.
NO_LINE_OK = (
    "file not found",
    "is a directory",
    "cannot read",
    "required key is missing",
    "the matrix has no axes and no include",
)


def fuzz(examples: int) -> settings:
    """Reproducible hypothesis settings: fixed seed, no example database, no deadline."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --------------------------------------------------------------------------------------------
# Running `plan` in a fresh project directory and checking the contract
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    path: str  # the matrix path as given on the command line
    written: set[str]  # entries of the project directory that the run created
    seconds: float


@contextlib.contextmanager
def _fresh_project() -> Iterator[Path]:
    """A new, empty working directory for one example; the old cwd is restored after."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def plan_file(content: str | bytes | None, *, make_dir: bool = False, args: tuple = ()) -> Outcome:
    """Write ``content`` to matrix.yaml in a fresh project and run ``runner plan`` on it.

    ``content=None`` leaves the file absent; ``make_dir`` puts a directory in its place.
    """
    with _fresh_project() as project:
        path = project / "matrix.yaml"
        if make_dir:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content, encoding="utf-8")
        before = set(os.listdir(project))
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["plan", *args, str(path)])
        except BaseException as exc:  # anything escaping main() is the finding
            pytest.fail(
                f"{type(exc).__name__} escaped main(): {exc!r:.500}\nstderr: {err.getvalue()}"
            )
        seconds = time.perf_counter() - start
        if currently_in_test_context():
            event(f"exit {code}")  # shown by --hypothesis-show-statistics
        written = set(os.listdir(project)) - before
        return Outcome(code, out.getvalue(), err.getvalue(), str(path), written, seconds)


def _problems(err: str, path: str) -> list[str]:
    """The problems of an ``error:`` block: the rest of its first line, or else one per line
    below it. A problem spans several lines only where a key holds a newline (BUG-10, pinned
    below), so a line that does not start with the path continues the problem above it."""
    first, _, rest = err.partition("\n")
    head = first[len("error:") :].strip()
    if head:
        return [head + ("\n" + rest if rest.strip() else "")]
    return [p for p in re.split("\n(?=" + re.escape(path) + ")", rest) if p.strip()]


def assert_contract(o: Outcome, text: str | None = None) -> None:
    """Exit 0 or 2; no traceback; nothing written; errors name the file and (for content) a
    line within the file."""
    shown = f"exit {o.code}\n--- stdout\n{o.out[-2000:]}\n--- stderr\n{o.err[-3000:]}"
    assert o.code in (0, 2), shown
    assert "Traceback" not in o.out + o.err, shown
    assert not o.written, f"plan wrote {sorted(o.written)} into the project\n{shown}"
    if o.code == 0:
        return
    assert o.out == "", shown
    assert o.err.startswith("error:"), shown
    problems = _problems(o.err, o.path)
    assert problems, shown
    n_lines = len(text.splitlines()) + 1 if text is not None else None
    for p in problems:
        assert p.startswith(o.path + ":"), f"problem does not name the file: {p!r}\n{shown}"
        m = re.match(re.escape(o.path) + r":(\d+): ", p)
        if m is None:
            assert any(ok in p for ok in NO_LINE_OK), f"no line number in {p!r}\n{shown}"
        elif n_lines is not None:
            assert int(m.group(1)) in range(1, n_lines + 1), f"line out of range: {p!r}\n{shown}"


def dump(doc: Any, flow: bool | None = False) -> str:
    """YAML text for ``doc``; long strings stay on one line, so files stay short (an error on
    line 100 would hit BUG-13)."""
    return yaml.safe_dump(
        doc, allow_unicode=True, sort_keys=False, default_flow_style=flow, width=float("inf")
    )


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


SPECIAL = [
    "/",
    "..",
    "../../etc/passwd",
    "\\",
    "C:\\Windows",
    ":",
    ": ",
    "- ",
    "#",
    "&a",
    "*a",
    "!!python/name:os.system",
    "${oc.env:HOME}",
    "${",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "'",
    '"',
    "%",
    "@",
    "`",
    "|",
    ">",
    "~",
    "null",
    "yes",
    "off",
    "0x1F",
    "1e3",
    ".nan",
    "-.inf",
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u061c",  # ARABIC LETTER MARK
    "שלום",
    "مرحبا",
    "😀",
    "👩‍👩‍👧",
    "\ufeff",
    "\u2028",
    "\x85",
    "\x07",
    "\x1b[31m",
    "\t",
    "\n",
    "\r",
    " ",
    "",
    "İ",
    "ﬁ",
    "a" * 64,
    "segresnet",
    "unet",
    "model",
    "seed",
    "optimizer.lr",
]

_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
hostile_text = st.one_of(
    st.text(_chars, max_size=12),
    st.lists(st.sampled_from(SPECIAL), min_size=1, max_size=4).map("".join),
    # very long strings
    st.builds(
        lambda unit, n: unit * n,
        st.sampled_from(["a", "é", "😀", "/..", "\u202e", "x y", "\\"]),
        st.integers(100, 5000),
    ),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    hostile_text,
)
# No None or float keys: at the top level they are reported without a line (BUG-8). That
# includes strings like '0E0', which safe_dump leaves unquoted and runner reads as floats.
_EXP_FLOAT = re.compile(r"[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+")
keys = st.one_of(
    hostile_text.filter(lambda k: not _EXP_FLOAT.fullmatch(k)),
    st.sampled_from(KNOWN_KEYS),
    st.integers(-3, 3),
    st.booleans(),
)
yaml_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
    max_leaves=12,
)

VALID: dict[str, Any] = {
    "name": "fuzz",
    "recipe": "segmentation",
    "base": ["data=demo"],
    "axes": {"seed": [0, 1]},
}
# Places in a valid matrix where a generated value replaces the real one.
FIELDS: list[tuple[str | int, ...]] = [
    ("name",),
    ("recipe",),
    ("base",),
    ("base", 0),
    ("axes",),
    ("axes", "seed"),
    ("axes", "seed", 0),
    ("zip",),
    ("exclude",),
    ("include",),
    ("executor",),
    ("executor", "kind"),
    ("executor", "slots"),
    ("executor", "gpus"),
    ("executor", "threads_per_cell"),
    ("executor", "timeout_min"),
    ("tracking",),
    ("tracking", "uri"),
    ("sweep_dir",),
]


def _set(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = doc
    for part in path[:-1]:
        if isinstance(node, dict):
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return
    last = path[-1]
    in_list = isinstance(node, list) and isinstance(last, int) and last < len(node)
    if isinstance(node, dict) or in_list:
        node[last] = value


@st.composite
def wrong_types(draw: st.DrawFn) -> str:
    """A valid matrix with one to three fields replaced by arbitrary values (any type), plus
    unknown keys at the top level, in executor or in tracking."""
    doc = copy.deepcopy(VALID)
    for path in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        _set(
            doc,
            path,
            draw(yaml_values),
        )
    for where in draw(st.lists(st.sampled_from([(), ("executor",), ("tracking",)]), max_size=2)):
        _set(doc, (*where, draw(keys)), draw(yaml_values))
    return dump(doc, flow=draw(st.sampled_from([False, True, None])))


@st.composite
def arbitrary_documents(draw: st.DrawFn) -> str:
    """Any YAML-able structure as the whole file, or a mapping of known and unknown keys to
    arbitrary structures."""
    doc = draw(
        st.one_of(
            yaml_values,
            st.dictionaries(keys, yaml_values, max_size=6),
            st.fixed_dictionaries(
                {k: yaml_values for k in ("name", "recipe")},
                optional={k: yaml_values for k in KNOWN_KEYS[2:]},
            ),
        )
    )
    return dump(doc, flow=draw(st.sampled_from([False, True, None])))


def _axis_values(key: str) -> st.SearchStrategy[Any]:
    """Values for one axis: mostly of the type the recipe expects, some of any type."""
    typed: dict[type, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: st.integers(-5, 10**6),
        float: st.floats(),
        str: hostile_text,
        list: st.lists(st.integers(8, 64), min_size=3, max_size=3),
    }
    if key in GROUPS:
        valid = st.sampled_from(GROUPS[key])
    elif CONFIG_KEYS.get(key) is not None:
        valid = typed[type(CONFIG_KEYS[key])]
    else:
        valid = scalars
    small = st.recursive(scalars, lambda k: st.lists(k, max_size=3), max_leaves=4)
    return st.one_of(valid, valid, small)


@st.composite
def plausible_matrices(draw: st.DrawFn) -> str:
    """Matrices that look right: real recipe, real and bogus axis keys, valid and hostile
    values, empty axes, duplicates, and zip/include/exclude that contradict the axes (unequal
    zips, zips of non-axes, excluding everything, includes repeating a cell or naming unknown
    keys). At most one config-group axis of two values, to bound Hydra composition time."""
    axis_keys = draw(
        st.lists(
            st.one_of(st.sampled_from(list(CONFIG_KEYS)), hostile_text), max_size=3, unique=True
        )
    )
    group = draw(st.one_of(st.none(), st.sampled_from(sorted(GROUPS))))
    axes: dict[str, list[Any]] = {}
    if group:
        axes[group] = draw(st.lists(_axis_values(group), min_size=0, max_size=2))
    for k in axis_keys:
        axes[k] = draw(st.lists(_axis_values(k), min_size=0, max_size=3))
    names = [*axes, *draw(st.lists(hostile_text, max_size=1))]
    name_or_bogus = st.sampled_from(names) if names else hostile_text
    values = st.one_of(*(st.sampled_from(v) for v in axes.values() if v), scalars)
    doc: dict[str, Any] = {
        "name": draw(
            st.one_of(
                st.just("fuzz"),
                st.just("fuzz"),
                st.from_regex(r"[a-z0-9][a-z0-9_-]{0,70}", fullmatch=True),
                hostile_text,
            )
        ),
        "recipe": draw(
            st.sampled_from(["segmentation"] * 4 + ["../../etc", "components", "segmentation/.."])
        ),
        "base": draw(
            st.lists(
                st.sampled_from(["data=demo"] * 3 + ["training=fp32", "data=nope", "seed"]),
                max_size=2,
            )
        ),
        "axes": axes,
    }
    if draw(st.booleans()):
        doc["zip"] = draw(st.lists(st.lists(name_or_bogus, max_size=3), max_size=2))
    if draw(st.booleans()):
        doc["exclude"] = draw(
            st.lists(st.dictionaries(name_or_bogus, values, max_size=2), max_size=3)
        )
    if draw(st.booleans()):
        doc["include"] = draw(
            st.lists(st.dictionaries(name_or_bogus, values, max_size=2), max_size=2)
        )
    if draw(st.booleans()):
        doc["sweep_dir"] = draw(
            st.sampled_from(["sweeps", "", ".", "..", "/", "/proc/1", "a/../b", "C:\\x"])
        )
    return dump(doc, flow=draw(st.sampled_from([False, True, None])))


GOOD_TEXT = """\
# a comment
name: fuzz
recipe: segmentation
base: [data=demo]
axes:
  seed: [0, 1]
  optimizer.lr: [1.0e-3, 3.0e-4]
exclude:
  - {seed: 1, optimizer.lr: 3.0e-4}
executor: {kind: local, slots: 2}
"""
SNIPPETS = [
    "[",
    "]",
    "{",
    "}",
    "}}",
    ",",
    ":",
    ": x",
    "- ",
    "\t",
    "  ",
    "\n",
    "\n  ",
    "'",
    '"',
    "&a ",
    "*a",
    "*undefined",
    "<<: ",
    "? ",
    "!!str ",
    "!!binary ",
    "!!null ",
    "!!map ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!timestamp ",
    "!custom ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "|\n",
    ">-\n",
    "#",
    "name: dup\n",
    "axes:\n",
    "\u202e",
    "😀",
    "\ufeff",
]


@st.composite
def syntax_mutations(draw: st.DrawFn) -> str:
    """A valid matrix with 1-4 edits: snippets of YAML syntax inserted, characters or whole
    lines deleted or duplicated, indentation changed (unbalanced brackets, tabs, bad indents,
    duplicate keys, dangling anchors/aliases, stray tags, directives and documents)."""
    text = GOOD_TEXT
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        kind = draw(st.sampled_from(["insert", "delete", "dup_line", "del_line", "indent"]))
        if kind == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
        elif kind == "delete" and text:
            at = draw(st.integers(0, len(text) - 1))
            text = text[:at] + text[at + draw(st.integers(1, 3)) :]
        elif kind in ("dup_line", "del_line", "indent"):
            i = draw(st.integers(0, len(lines) - 1))
            if kind == "dup_line":
                lines.insert(i, lines[i])
            elif kind == "del_line":
                del lines[i]
            else:
                lines[i] = draw(st.sampled_from([" ", "   ", "\t", "- "])) + lines[i]
            text = "\n".join(lines)
    return text


@st.composite
def bad_encodings(draw: st.DrawFn) -> bytes:
    """Non-UTF-8 bytes: the good matrix in another encoding, or with stray high bytes."""
    text = GOOD_TEXT.replace("fuzz", "caf\u00e9")
    encoding = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252", "utf-8"]))
    raw = bytearray(text.encode(encoding))
    for _ in range(draw(st.integers(0 if encoding != "utf-8" else 1, 3))):
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = bytes([draw(st.integers(0x80, 0xFF))]) + draw(st.binary(max_size=2))
    return bytes(raw)


# --------------------------------------------------------------------------------------------
# Properties (in-process)
# --------------------------------------------------------------------------------------------


@fuzz(300)
@given(text=arbitrary_documents())
def test_arbitrary_structures_exit_0_or_2(text: str) -> None:
    """Any YAML structure at the top level and under every known key: exit 0 or 2 with a
    located message, nothing written."""
    assert_contract(plan_file(text), text)


@fuzz(280)
@given(text=wrong_types())
def test_wrong_types_and_unknown_keys_exit_0_or_2(text: str) -> None:
    """Every known key given a value of any type, and unknown keys at every level: exit 0 or 2
    with a located message, nothing written."""
    assert_contract(plan_file(text), text)


@fuzz(80)
@given(text=plausible_matrices())
def test_plausible_matrices_exit_0_or_2(text: str) -> None:
    """Near-valid matrices that reach Hydra (empty axes, duplicates, hostile unicode values,
    zip/include/exclude contradictions): exit 0 or 2 with a located message, nothing written."""
    assert_contract(plan_file(text), text)


@fuzz(220)
@given(text=syntax_mutations())
def test_yaml_syntax_mutations_exit_0_or_2(text: str) -> None:
    """Broken YAML (brackets, indentation, tabs, duplicate keys, aliases, tags, directives):
    exit 0 or 2, and a syntax error names a line that exists in the file."""
    assert_contract(plan_file(text), text)


@fuzz(80)
@given(raw=bad_encodings())
def test_non_utf8_bytes_exit_2_with_line(raw: bytes) -> None:
    """Bytes that are not UTF-8 always exit 2 with 'not valid UTF-8' and a line number."""
    try:
        raw.decode("utf-8")
        assume(False)  # the stray bytes happened to form UTF-8: not this property's case
    except UnicodeDecodeError:
        pass
    o = plan_file(raw)
    assert_contract(o)
    assert o.code == 2 and "not valid UTF-8" in o.err, o.err
    assert re.search(re.escape(o.path) + r":\d+: not valid UTF-8", o.err), o.err


@fuzz(40)
@given(
    n_axes=st.integers(5, 14),
    per_axis=st.integers(6, 12),
    use_config_keys=st.booleans(),
)
def test_huge_products_fail_fast(n_axes: int, per_axis: int, use_config_keys: bool) -> None:
    """Axes whose product exceeds the cell limit (up to 12**14 ~ 1e15 cells) fail within
    seconds, naming the product and the limit, instead of hanging or allocating."""
    if per_axis**n_axes <= MAX_CELLS:
        n_axes = 6 if per_axis >= 8 else 7  # always above the limit
    keys = [f"k{i}" for i in range(n_axes)]
    if use_config_keys:
        keys[:2] = ["seed", "training.max_epochs"]
    text = dump({**VALID, "axes": {k: list(range(per_axis)) for k in keys}})
    o = plan_file(text)
    assert_contract(o, text)
    assert o.code == 2
    assert f"the axes multiply to {per_axis**n_axes:,} cells" in o.err, o.err
    assert f"the limit is {MAX_CELLS:,}" in o.err, o.err
    assert o.seconds < 5, f"took {o.seconds:.1f}s"


# --------------------------------------------------------------------------------------------
# Explicit hostile corpus (cases the generators would only hit by luck)
# --------------------------------------------------------------------------------------------

BASE = "name: fuzz\nrecipe: segmentation\nbase: [data=demo]\naxes:\n  seed: [0, 1]\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("   \n\n", "got an empty file", id="whitespace-only"),
        pytest.param("# only a comment\n", "got an empty file", id="comment-only"),
        pytest.param("---\n...\n", "got an empty file", id="empty-document"),
        pytest.param(BASE.replace("  seed", "\tseed"), ":5: YAML syntax error", id="tab-indent"),
        pytest.param(BASE + " recipe: x\n", ":6: YAML syntax error", id="bad-indentation"),
        pytest.param(BASE + "zip: {\n", "YAML syntax error", id="unbalanced-brace"),
        pytest.param(BASE + "zip: []]\n", ":6: YAML syntax error", id="extra-bracket"),
        pytest.param(BASE + "zip: *nope\n", ":6: YAML syntax error", id="undefined-alias"),
        pytest.param(BASE + "? [a, b]\n: 1\n", "a key must be a plain value", id="complex-key"),
        pytest.param(BASE + "axes: {}\n", ":6: axes: duplicate key", id="duplicate-section"),
        pytest.param(BASE + "'name': other\n", "name: duplicate key", id="duplicate-quoted-key"),
        pytest.param(
            BASE.replace("[0, 1]", "[0, !custom 1]"), ":5: YAML syntax error", id="custom-tag"
        ),
        pytest.param("%YAML 9.9\n---\n" + BASE, "YAML syntax error", id="bad-directive"),
        pytest.param(BASE + "---\n" + BASE, ":6: YAML syntax error", id="two-documents"),
        pytest.param(BASE.replace("\n", "\r\n") + "zip: [[\r\n", "YAML syntax error", id="crlf"),
        pytest.param(
            "\ufeff" + BASE + "zip: x\n", ":6: zip: input should be a valid list", id="bom"
        ),
        pytest.param(BASE + "tracking: {uri: 5}\n", ":6: tracking.uri", id="tracking-uri-int"),
        pytest.param(BASE + "zip: [[seed, seed]]\n", "already in zip group 1", id="zip-twice"),
        pytest.param(
            BASE + "  optimizer.lr: [0.1]\nzip: [[seed, optimizer.lr]]\n",
            "zipped axes must have equal lengths; got seed: 2, optimizer.lr: 1",
            id="zip-unequal",
        ),
        pytest.param(
            BASE + "zip: [[seed, nope]]\n", "'nope' is not an axis; axes: seed", id="zip-non-axis"
        ),
        pytest.param(
            BASE + "exclude: [{}]\n", "every cell is excluded", id="exclude-empty-pattern"
        ),
        pytest.param(
            BASE + "exclude: [{seed: 0}, {seed: 1}]\n", "every cell is excluded", id="exclude-all"
        ),
        pytest.param(
            BASE + "include: [{}]\n", ":6: include[0]: empty include entry", id="include-empty"
        ),
        pytest.param(
            BASE + "include: [{seed: 0, bogus_key: 1}]\n",
            "include[0].bogus_key: 'bogus_key' is neither a config group",
            id="include-unknown-key",
        ),
        pytest.param(
            BASE.replace("[0, 1]", "[]"), ":5: axes.seed: axis 'seed' is empty", id="empty-axis"
        ),
        pytest.param(
            BASE.replace("name: fuzz", "name: " + "n" * 100_000),
            ":1: name: invalid name",
            id="100k-char-name",
        ),
        pytest.param(
            BASE.replace("name: fuzz", "name: ../../etc"), ":1: name: invalid name", id="name-path"
        ),
        pytest.param(
            BASE.replace("name: fuzz", "name: '\u202eevil'"),
            ":1: name: invalid name",
            id="name-rtl",
        ),
    ],
)
def test_explicit_hostile_inputs(content: str, expected: str) -> None:
    """Hand-picked syntax and structure errors: exit 2, located, nothing written."""
    o = plan_file(content)
    assert_contract(o, content)
    assert o.code == 2, o.out
    assert expected in o.err, o.err


def test_huge_axis_value_plans_without_writing() -> None:
    """A 100,000-character string in a string-typed axis plans fine (exit 0) and writes
    nothing."""
    text = BASE + "  data.root: ['" + "r" * 100_000 + "']\n"
    o = plan_file(text)
    assert_contract(o, text)
    assert o.code == 0, o.err


def test_include_repeating_a_cell_is_a_warning() -> None:
    """An include that repeats an axes cell is ignored with a warning, not an error."""
    o = plan_file(BASE + "include: [{seed: 0}]\n")
    assert_contract(o)
    assert o.code == 0, o.err
    assert "warning:" in o.err and "repeats a cell of the axes; ignored" in o.err


def test_product_just_over_the_limit() -> None:
    """MAX_CELLS + 1 cells (a prime-ish product: 100,001 = 11 x 9,091) is rejected."""
    text = dump({**VALID, "axes": {"seed": list(range(9091)), "k": list(range(11))}})
    o = plan_file(text)
    assert_contract(o, text)
    assert o.code == 2 and f"multiply to {MAX_CELLS + 1:,} cells" in o.err, o.err


def test_directory_and_missing_file() -> None:
    """A directory or a missing path in place of the matrix: exit 2, one line, the path."""
    for o in (plan_file(None, make_dir=True), plan_file(None)):
        assert_contract(o)
        assert o.code == 2
        assert o.err.count("\n") == 1 and o.path in o.err, o.err


PWNED_DOCS = {
    "top-level": '!!python/object/apply:os.system ["touch PWNED"]\n',
    "in-a-list": BASE.replace("[0, 1]", '[!!python/object/apply:os.system ["touch PWNED"]]'),
    "as-a-key": BASE + '!!python/object/apply:os.system ["touch PWNED"]: 1\n',
    "python-name": BASE.replace("[0, 1]", '[!!python/name:os.system ""]'),
}


@pytest.mark.parametrize("content", list(PWNED_DOCS.values()), ids=list(PWNED_DOCS))
def test_python_tags_are_not_executed(content: str) -> None:
    """YAML is loaded safely: python/* tags never run code (no PWNED file) and exit 2."""
    o = plan_file(content)
    assert "PWNED" not in o.written
    assert not Path("PWNED").exists()
    assert_contract(o, content)
    assert o.code == 2, o.out


# --------------------------------------------------------------------------------------------
# The real process
# --------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow  # 20 real `runner plan` processes
@fuzz(20)
@given(
    content=st.one_of(
        arbitrary_documents(),
        wrong_types(),
        syntax_mutations(),
        bad_encodings(),
    )
)
def test_real_process_exits_0_or_2_without_traceback(content: str | bytes) -> None:
    """Generated files through ``python -m runner plan``: the process exits 0 or 2, never
    prints a traceback, errors start with 'error:', and the project stays untouched."""
    with tempfile.TemporaryDirectory(prefix="hostile-proc-") as tmp:
        path = Path(tmp) / "matrix.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "plan", str(path)],
            cwd=tmp,
            capture_output=True,
            text=True,
            errors="replace",
            env=_env(),
            timeout=120,
        )
        shown = f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert proc.returncode in (0, 2), shown
        assert "Traceback" not in proc.stdout + proc.stderr, shown
        if proc.returncode == 2:
            assert proc.stderr.startswith("error:") and str(path) in proc.stderr, shown
        assert sorted(os.listdir(tmp)) == ["matrix.yaml"], shown


# --------------------------------------------------------------------------------------------
# Regressions: bugs the fuzzing found, each with the input that triggered it
# --------------------------------------------------------------------------------------------


# Regression (found by fuzzing, fixed): BUG-1: axis/include values are rendered as rich markup
# in the plan table; '[/]' raises rich.errors.MarkupError out of main()
@pytest.mark.parametrize(
    "extra",
    [
        "  data.root: ['[/]']\n",
        "include: [{seed: 5, data.root: '[/x]'}]\n",
    ],
    ids=["axis-value", "include-value"],
)
def test_bug_markup_in_values_crashes_plan(extra: str) -> None:
    assert_contract(plan_file(BASE + extra))


# Regression (found by fuzzing, fixed): BUG-13: messages go through rich's emoji replacement:
# 'matrix.yaml:100: ...' is printed as 'matrix.yaml💯 ...' (any error on line 100), and user text
# such as ':thumbs_up:' or '[bold]' is misquoted in messages
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("#\n" * 94 + BASE + "zip: x\n", ":100: zip:"),  # BASE has 5 lines
        (
            BASE.replace("name: fuzz", "name: 'bad:thumbs_up:[bold]name'"),
            "'bad:thumbs_up:[bold]name'",
        ),
    ],
    ids=["error-on-line-100", "emoji-and-markup-in-value"],
)
def test_bug_messages_are_mangled_by_rich(content: str, needle: str) -> None:
    o = plan_file(content)
    assert o.code == 2
    assert needle in o.err, o.err


# Regression (found by fuzzing, fixed): BUG-2: tags on YAML sequences/mappings are ignored
# (yaml_lines._construct builds a plain list/dict), so '!!python/object/apply:os.system [...]'
# is accepted as a list and plan exits 0 instead of rejecting the tag (nothing is executed)
@pytest.mark.parametrize(
    "extra",
    [
        '  data.root: !!python/object/apply:os.system ["touch PWNED"]\n',
        "  data.root: !custom [a, b]\n",
    ],
    ids=["python-apply", "custom-tag"],
)
def test_bug_tags_on_collections_are_ignored(extra: str) -> None:
    o = plan_file(BASE + extra)
    assert not o.written
    assert o.code == 2, o.out


def _alias_bomb(levels: int, width: int = 9) -> str:
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return BASE + "\n".join(lines) + "\n"


def _limit_memory() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


# Regression (found by fuzzing, fixed): BUG-3: aliases are expanded node by node
# (yaml_lines._construct walks every alias occurrence and records a line per path): a 9-level
# 'billion laughs' file runs for minutes and grows memory without bound instead of failing fast
# with exit 2
def test_bug_alias_bomb_fails_fast() -> None:
    with tempfile.TemporaryDirectory(prefix="hostile-bomb-") as tmp:
        path = Path(tmp) / "matrix.yaml"
        path.write_text(_alias_bomb(9))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "runner", "plan", str(path)],
                cwd=tmp,
                capture_output=True,
                text=True,
                env=_env(),
                timeout=8,
                preexec_fn=_limit_memory,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("plan of an alias bomb still running after 8 s")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_small_alias_fanout_is_fine() -> None:
    """Ordinary anchors and aliases (a few levels) still load quickly."""
    o = plan_file(_alias_bomb(3))
    assert_contract(o)
    assert o.code == 2 and "unknown key 'l0'" in o.err and o.seconds < 5


# Regression (found by fuzzing, fixed): BUG-4: explicit scalar tags whose text the tag cannot
# parse, and ints over 4,300 digits, raise ValueError/KeyError/AttributeError/IndexError from
# PyYAML's constructors out of main() (yaml_lines.load_yaml only catches YAMLError and
# RecursionError)
@pytest.mark.parametrize(
    "value",
    ["!!int x", "!!int ''", "!!float x", "!!bool maybe", "!!timestamp x", "9" * 5000],
    ids=["int-x", "int-empty", "float-x", "bool-maybe", "timestamp-x", "5000-digit-int"],
)
def test_bug_scalar_constructor_errors_escape(value: str) -> None:
    o = plan_file(BASE.replace("[0, 1]", f"[0, {value}]"))
    assert_contract(o)
    assert ":5: " in o.err, o.err


# Regression (found by fuzzing, fixed): BUG-11: a cell product over 4,300 digits (e.g. 4,400
# axes of 10 values) raises ValueError while formatting 'the axes multiply to {total:,} cells'
def test_bug_astronomic_product_escapes() -> None:
    o = plan_file(dump({**VALID, "axes": {f"k{i}": list(range(10)) for i in range(4400)}}))
    assert_contract(o)
    assert "the limit is" in o.err, o.err


# Regression (found by fuzzing, fixed): BUG-5: values nested ~300-490 levels deep pass the YAML
# loader but overflow the stack in runner.matrix.cells.override_value: RecursionError escapes main()
def test_bug_deep_values_overflow_the_stack() -> None:
    # Deepest first: depths the loader refuses exit 2 ('nested too deeply'); the first depth
    # it accepts must plan (exit 0) or be refused (exit 2), never raise.
    for depth in range(600, 0, -20):
        value = "[" * depth + "1" + "]" * depth
        o = plan_file(BASE + f"  training.checkpoint_dir: [{value}]\n")  # fails on a raise
        assert o.code in (0, 2) and "Traceback" not in o.err, o.err
        if o.code == 0:
            break


# Regression (found by fuzzing, fixed): BUG-6: sweep_dir is used unchecked: a file, a NUL byte
# or a >255-byte component raises NotADirectoryError/ValueError/OSError from
# ledger.CellRecord.run_id
@pytest.mark.parametrize(
    "sweep_dir",
    ["matrix.yaml", '"a\\0b"', "s" * 300],
    ids=["is-a-file", "nul-byte", "name-too-long"],
)
def test_bug_bad_sweep_dir_escapes(sweep_dir: str) -> None:
    o = plan_file(BASE + f"sweep_dir: {sweep_dir}\n")
    assert_contract(o)
    assert o.code == 2 and ":6: sweep_dir:" in o.err, o.err


# Regression (found by fuzzing, fixed): BUG-7: characters PyYAML's reader refuses (control
# characters, NUL, U+FFFE) give 'YAML error: unacceptable character ...' without a line number,
# plus a second line 'in \
@pytest.mark.parametrize("char", ["\x07", "\x00", "\ufffe"], ids=["bell", "nul", "u+fffe"])
def test_bug_control_characters_have_no_line(char: str) -> None:
    o = plan_file(BASE + f"zip: [a{char}]\n")
    assert_contract(o)
    assert ":6: " in o.err, o.err


# Regression (found by fuzzing, fixed): BUG-8: content problems reported without a line: top-
# level keys that are floats, null or dates ('matrix.yaml: 1.5: keys should be strings'), and
# 'YAML nested too deeply' for a recursive alias or deep nesting
@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ("1.5: 1\n", 6),
        ("~: 1\n", 6),
        ("2001-01-01: 1\n", 6),
        ("loop: &a [*a]\n", 6),
        ("deep: " + "[" * 5000 + "]" * 5000 + "\n", 6),
    ],
    ids=["float-key", "null-key", "date-key", "recursive-alias", "nested-5000"],
)
def test_bug_problems_without_line(extra: str, line: int) -> None:
    o = plan_file(BASE + extra)
    assert o.code == 2
    assert re.search(re.escape(o.path) + f":{line}: ", o.err), o.err


def test_markup_in_a_warning_is_printed_verbatim() -> None:
    """An exclude value that looks like rich markup is quoted as is in its warning."""
    o = plan_file(BASE + "exclude: [{seed: '[/]'}]\n")
    assert_contract(o)
    assert o.code == 0 and "exclude {'seed': '[/]'} matches no cell" in o.err, o.err


def test_plan_json_with_nan_is_strict_json() -> None:
    """plan --json stays strict JSON (no bare NaN/Infinity) for .nan/.inf axis values."""
    import json

    o = plan_file(BASE + "  optimizer.lr: [.nan, .inf]\n", args=("--json",))
    assert_contract(o)
    assert o.code == 0, o.err

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    assert json.loads(o.out, parse_constant=refuse)["count"] == 4


# Regression (found by fuzzing, fixed): BUG-10: keys and zip names are interpolated raw
# ('{key}', not repr), so a key holding a newline splits its one-line message over several lines
@pytest.mark.parametrize(
    "extra",
    ['"a\\nb": 1\n', 'executor: {"x\\ny": 1}\n', 'zip: [[seed, "x\\ny"]]\n'],
    ids=["top-level-key", "executor-key", "zip-name"],
)
def test_bug_keys_with_newlines_break_the_message(extra: str) -> None:
    o = plan_file(BASE + extra)
    assert o.code == 2
    assert o.err.count("\n") == 1, repr(o.err)


# Regression (found by fuzzing, fixed): BUG-12: a mapping where an axis value is expected is
# reported as five problems naming pydantic's union members ('axes.seed[0].str: ... .int: ...
# .list[any]: ...')
@pytest.mark.parametrize(
    "content",
    [
        BASE.replace("[0, 1]", "[{a: 1}]"),
        BASE + "exclude: [{seed: {a: 1}}]\n",
        BASE + "include: [{seed: {a: 1}}]\n",
    ],
    ids=["axis", "exclude", "include"],
)
def test_bug_mapping_value_gives_union_noise(content: str) -> None:
    o = plan_file(content)
    assert o.code == 2
    assert len(_problems(o.err, o.path)) == 1 and ".str:" not in o.err, o.err

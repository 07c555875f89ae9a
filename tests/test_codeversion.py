"""Code versions change with what a pipeline's code means, never with its layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.config.loader import load_pipeline_file
from headwater.engine.codeversion import MISSING, CodeVersion, code_version, sql_hash, sql_tokens

PIPELINE = """\
name: orders
triggers:
  - code_change: true
steps:
  - id: raw
    source: {type: files, path: landing/*.csv}
  - id: clean
    sql: sql/clean.sql
  - id: enriched
    python: transforms.orders:enrich
    input: clean
"""

ORDERS_PY = """\
import json

from transforms.helpers import RATE


def enrich(table):
    return table  # unchanged
"""

CLEAN_SQL = "SELECT * FROM raw WHERE amount >= {{ params.min_amount }}\n"


def _project(root: Path) -> Path:
    (root / "pipelines").mkdir()
    (root / "transforms").mkdir()
    (root / "sql").mkdir()
    (root / "headwater.yaml").write_text("name: shop\n")
    (root / "pipelines" / "orders.yaml").write_text(PIPELINE)
    (root / "transforms" / "__init__.py").write_text("")
    (root / "transforms" / "orders.py").write_text(ORDERS_PY)
    (root / "transforms" / "helpers.py").write_text("from . import units\nRATE = 1.5\n")
    (root / "transforms" / "units.py").write_text("CENTS = 100\n")
    (root / "sql" / "clean.sql").write_text(CLEAN_SQL)
    return root


def _version(root: Path) -> CodeVersion:
    return code_version(root, load_pipeline_file(root / "pipelines" / "orders.yaml", root))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_hash_is_sixteen_hex_and_lists_every_file_used(tmp_path: Path) -> None:
    """The version names the project settings, the YAML, the SQL file and every project
    module reached by imports."""
    version = _version(_project(tmp_path))
    expected = [
        "headwater.yaml",
        "pipelines/orders.yaml",
        "sql/clean.sql",
        "transforms/__init__.py",
        "transforms/helpers.py",
        "transforms/orders.py",
        "transforms/units.py",
    ]
    assert expected == sorted(version.files)
    expected_length = 16
    assert expected_length == len(version.hash)
    assert set("0123456789abcdef") >= set(version.hash)


def test_same_meaning_in_another_folder_has_the_same_hash(tmp_path: Path) -> None:
    """The hash depends on content and relative paths only, so it is stable across machines."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _version(_project(tmp_path / "a"))
    two = _version(_project(tmp_path / "b"))
    assert one == two


def test_comment_and_formatting_edits_keep_the_hash(tmp_path: Path) -> None:
    """Comments, blank lines, reformatting, YAML key order and SQL keyword case do not count."""
    root = _project(tmp_path)
    before = _version(root)
    _edit(root / "transforms" / "orders.py", "def enrich(table):",
          "# a new comment\n\ndef enrich(\n    table,\n):")
    _edit(root / "transforms" / "helpers.py", "RATE = 1.5", "RATE = (1.5)  # per unit")
    _edit(root / "sql" / "clean.sql", "SELECT * FROM raw",
          "-- cleaned orders\nselect *\n  from   raw /* all */")
    _edit(root / "pipelines" / "orders.yaml", "steps:", "# the steps\nsteps:")
    _edit(root / "pipelines" / "orders.yaml", "{type: files, path: landing/*.csv}",
          "\n      path: landing/*.csv\n      type: files")
    assert before == _version(root)


def test_changed_constant_changes_the_hash(tmp_path: Path) -> None:
    """A changed literal in the transform module is a new code version."""
    root = _project(tmp_path)
    before = _version(root)
    _edit(root / "transforms" / "orders.py", "return table", "return table.slice(1)")
    after = _version(root)
    assert before.hash != after.hash
    expected_changed = ["transforms/orders.py"]
    assert expected_changed == after.changed_files(before)


def test_changed_transitively_imported_module_changes_the_hash(tmp_path: Path) -> None:
    """A module imported by a module the pipeline uses (via a relative import) counts too."""
    root = _project(tmp_path)
    before = _version(root)
    _edit(root / "transforms" / "units.py", "100", "1000")
    after = _version(root)
    expected = ["transforms/units.py"]
    assert expected == after.changed_files(before)


def test_changed_sql_file_changes_the_hash(tmp_path: Path) -> None:
    """A changed operator in the referenced SQL file is a new code version."""
    root = _project(tmp_path)
    before = _version(root)
    _edit(root / "sql" / "clean.sql", ">=", ">")
    after = _version(root)
    expected = ["sql/clean.sql"]
    assert expected == after.changed_files(before)


def test_string_literal_case_and_spacing_count(tmp_path: Path) -> None:
    """Only keywords and bare identifiers are case-insensitive; quoted text is meaning."""
    assert sql_tokens("select 'A b'") != sql_tokens("select 'a  b'")
    assert sql_tokens('SELECT "Col"') != sql_tokens('SELECT "col"')
    assert sql_tokens("SELECT {{ params.X }}") != sql_tokens("SELECT {{ params.x }}")


def test_missing_files_are_hashed_as_markers(tmp_path: Path) -> None:
    """A missing SQL file or module is recorded, not raised; creating it changes the hash."""
    root = _project(tmp_path)
    (root / "sql" / "clean.sql").unlink()
    (root / "transforms" / "orders.py").unlink()
    missing = _version(root)
    expected = {"sql/clean.sql": MISSING, "transforms/orders.py": MISSING}
    assert expected == {path: missing.files[path] for path in expected}
    (root / "sql" / "clean.sql").write_text(CLEAN_SQL)
    assert missing.hash != _version(root).hash


def test_library_imports_are_not_project_files(tmp_path: Path) -> None:
    """``import json`` names no project file, so nothing outside the project is hashed."""
    version = _version(_project(tmp_path))
    assert not any("json" in path for path in version.files)


_WORDS = st.sampled_from(
    ["SELECT", "select", "a", "b_1", "FROM", "t", "WHERE", "x", "AND", "y", "*", ",", "(", ")",
     "=", ">=", "42", "3.5", "'text'", "'it''s'", '"Quoted"', "::", "{{", "params.p", "}}"]
)
_COMMENT_TEXT = st.text(alphabet="abc xyz-*/#", max_size=12).filter(
    lambda s: "*/" not in s and not s.endswith("*") and not s.startswith("/"))
_GAP = st.one_of(
    st.text(alphabet=" \t\n\r", min_size=1, max_size=4),
    _COMMENT_TEXT.map(lambda c: f" /*{c}*/ "),
    _COMMENT_TEXT.map(lambda c: f" --{c}\n"),
)


@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(_WORDS, min_size=1, max_size=25), data=st.data())
def test_whitespace_and_comments_never_change_the_sql_hash(
    tokens: list[str], data: st.DataObject
) -> None:
    """Any whitespace or comment between tokens leaves the SQL fingerprint unchanged."""
    plain = " ".join(tokens)
    gaps = data.draw(st.lists(_GAP, min_size=len(tokens) + 1, max_size=len(tokens) + 1))
    noisy = gaps[0] + "".join(t + g for t, g in zip(tokens, gaps[1:], strict=True))
    assert sql_hash(plain) == sql_hash(noisy)


INLINE = """\
name: orders
params: {min_amount: 0}
steps:
  - id: raw
    source: {type: files, path: landing/*.csv}
  - id: clean
    sql: SELECT * FROM raw WHERE amount >= {{ params.min_amount }}
  - id: checked
    validate: {input: clean, rules: ["amount < 100"]}
"""


def _inline_version(root: Path, text: str) -> str:
    (root / "pipelines").mkdir(exist_ok=True)
    if not (root / "headwater.yaml").exists():
        (root / "headwater.yaml").write_text("name: shop\n")
    (root / "pipelines" / "orders.yaml").write_text(text)
    return _version(root).hash


def test_inline_sql_comments_and_layout_do_not_change_the_version(tmp_path: Path) -> None:
    """Inline SQL (a ``sql:`` step, a validate rule) is hashed by its tokens, as ``.sql``
    files are: a comment, line breaks or keyword case change nothing; the query does."""
    base = _inline_version(tmp_path, INLINE)
    commented = INLINE.replace(
        "    sql: SELECT * FROM raw WHERE amount >= {{ params.min_amount }}\n",
        "    sql: |\n      -- only real orders\n      select *\n      FROM raw\n"
        "      WHERE amount >= {{ params.min_amount }}  /* inclusive */\n")
    assert base == _inline_version(tmp_path, commented)
    rule_comment = INLINE.replace('"amount < 100"', '"amount  <  100 -- cap"')
    assert base == _inline_version(tmp_path, rule_comment)
    assert base != _inline_version(tmp_path, INLINE.replace(">=", ">"))
    assert base != _inline_version(tmp_path, INLINE.replace("100", "1000"))


SETTINGS = """\
name: shop
warehouse: ./warehouse
params: {rate: 1.5}
connections:
  shop_db: {type: postgres, host: db1, password: "${env:SHOP_PW}"}
  other: {type: postgres, host: elsewhere}
"""

USES_DB = """\
name: orders
steps:
  - id: raw
    source: {type: sql, connection: shop_db, table: orders}
"""


def _settings_version(root: Path, settings: str) -> str:
    (root / "headwater.yaml").write_text(settings)
    return _inline_version(root, USES_DB)


def test_project_settings_that_change_the_result_change_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Project params, the warehouse and the settings of a connection the pipeline names
    are part of its code version; an unused connection, a comment, and the *value* of a
    secret are not (the text ``${env:SHOP_PW}`` is hashed, never what it resolves to)."""
    base = _settings_version(tmp_path, SETTINGS)
    assert base != _settings_version(tmp_path, SETTINGS.replace("rate: 1.5", "rate: 2"))
    assert base != _settings_version(tmp_path, SETTINGS.replace("host: db1", "host: db2"))
    assert base != _settings_version(tmp_path, SETTINGS.replace("./warehouse", "./wh2"))
    assert base == _settings_version(tmp_path, SETTINGS.replace("elsewhere", "there"))
    assert base == _settings_version(tmp_path, "# the shop\n" + SETTINGS)
    monkeypatch.setenv("SHOP_PW", "first")
    first = _settings_version(tmp_path, SETTINGS)
    monkeypatch.setenv("SHOP_PW", "second")
    assert first == _settings_version(tmp_path, SETTINGS) == base
    before = _version(tmp_path)
    _settings_version(tmp_path, SETTINGS.replace("rate: 1.5", "rate: 3"))
    assert ["headwater.yaml"] == _version(tmp_path).changed_files(before)

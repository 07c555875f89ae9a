"""The builder's YAML rewrite (config/roundtrip): only what changed changes in the file."""

from __future__ import annotations

from headwater.config.roundtrip import load, render

TEXT = """\
# top comment
name: p   # the name
params: {a: 1, b: "x"}
triggers:
    - interval: 15m   # often
steps:
    # sources first
    - id: raw
      source: {type: files, path: "in/*.csv"}
    - id: out
      publish: {input: raw, dataset: d}
"""


def test_unchanged_document_is_byte_identical() -> None:
    """Loading and rendering without a change gives the file back exactly."""
    assert TEXT == render(load(TEXT), TEXT)


def test_one_value_changes_one_line() -> None:
    """A changed scalar keeps the flow style, quoting and comments around it."""
    doc = load(TEXT)
    doc["params"]["b"] = "y"
    assert TEXT.replace('b: "x"', 'b: "y"') == render(doc, TEXT)


def test_steps_are_matched_by_id() -> None:
    """A step inserted in the middle leaves the others (and their comments) as they were,
    in the file's own list indentation."""
    doc = load(TEXT)
    doc["steps"].insert(1, {"id": "clean", "sql": "SELECT 1 AS x FROM raw"})
    doc["steps"][2]["publish"]["input"] = "clean"
    expected = TEXT.replace("""    - id: out
      publish: {input: raw, dataset: d}""", """    - id: clean
      sql: SELECT 1 AS x FROM raw
    - id: out
      publish: {input: clean, dataset: d}""")
    assert expected == render(doc, TEXT)


def test_removed_keys_go_and_types_are_kept() -> None:
    """A dropped key disappears; ``1`` becoming ``true`` is a change, not an equal value."""
    doc = load(TEXT)
    del doc["triggers"]
    doc["params"]["a"] = True
    out = render(doc, TEXT)
    assert "triggers" not in out and "# often" not in out
    assert {"a": True, "b": "x"} == load(out)["params"]


def test_a_new_file_is_block_style() -> None:
    """Without an old text the document is written as a person would, lists indented."""
    out = render({"name": "n", "steps": [{"id": "raw", "source": {"type": "files",
                                                                  "path": "a"}}]})
    assert "name: n\nsteps:\n  - id: raw\n    source:\n      type: files\n      path: a\n" \
        == out

"""Publish modes through the real engine: merge, schema contracts, splits, partitions."""

from __future__ import annotations

from pathlib import Path

import pytest

import headwater as hw
from tests.conftest import ProjectFactory, write


def _pipeline(publish: str) -> str:
    return f"""
    name: p
    steps:
      - id: raw
        source: {{type: files, path: landing/*.csv, incremental: true}}
      - id: out
        publish: {{input: raw, dataset: d, {publish}}}
    """


def _run(project: hw.Project) -> hw.Run:
    return project.run("p")


def test_merge_upserts_by_key_newest_wins(make_project: ProjectFactory) -> None:
    """A merge updates existing keys and inserts new ones; duplicates in one batch resolve
    to the newest by ``order_by``."""
    root = make_project({"p": _pipeline("mode: merge, key: [id], order_by: ts")})
    write(root / "landing/a.csv", "id,v,ts\n1,a,1\n2,b,1\n")
    with hw.Project(root) as project:
        assert _run(project).ok
        write(root / "landing/b.csv", "id,v,ts\n2,old,2\n2,new,3\n3,c,1\n")
        run = _run(project)
        assert run.ok, run.error
        rows = sorted(project.dataset("d").to_arrow().select(["id", "v"]).to_pylist(),
                      key=lambda r: r["id"])
        assert [{"id": 1, "v": "a"}, {"id": 2, "v": "new"}, {"id": 3, "v": "c"}] == rows
        assert 1 == project.dataset("d").record(2)["rows_added"]


def test_merge_with_duplicate_keys_and_no_order_fails(make_project: ProjectFactory) -> None:
    """Without ``order_by``, a batch with a duplicate key fails naming the key; nothing is
    written."""
    root = make_project({"p": _pipeline("mode: merge, key: [id]")})
    write(root / "landing/a.csv", "id,v\n1,a\n")
    with hw.Project(root) as project:
        assert _run(project).ok
        write(root / "landing/b.csv", "id,v\n2,x\n2,y\n")
        run = _run(project)
        assert "failed" == run.status
        assert "not unique" in (run.error or "")
        assert "order_by" in (run.error or "")
        assert [1] == project.dataset("d").versions()


def test_freeze_refuses_a_new_column(make_project: ProjectFactory) -> None:
    """Under ``schema: freeze`` a new column fails the run naming it; under ``evolve`` it is
    added and the old rows read NULL."""
    frozen = make_project({"p": _pipeline("schema: freeze")}, name="frozen")
    write(frozen / "landing/a.csv", "id,v\n1,a\n")
    with hw.Project(frozen) as project:
        assert _run(project).ok
        write(frozen / "landing/b.csv", "id,v,extra\n2,b,x\n")
        run = _run(project)
        assert "failed" == run.status
        assert "new column 'extra'" in (run.error or "")
        assert "nothing was written" in (run.error or "")
        assert [1] == project.dataset("d").versions()
    evolving = make_project({"p": _pipeline("schema: evolve")}, name="evolving")
    write(evolving / "landing/a.csv", "id,v\n1,a\n")
    with hw.Project(evolving) as project:
        assert _run(project).ok
        write(evolving / "landing/b.csv", "id,v,extra\n2,b,x\n")
        assert _run(project).ok
        rows = sorted(project.dataset("d").to_arrow().to_pylist(), key=lambda r: r["id"])
        assert [None, "x"] == [r["extra"] for r in rows]


def test_splits_are_stable_across_versions(make_project: ProjectFactory) -> None:
    """A key keeps its split in every later version; ``to_pandas(split=...)`` filters."""
    root = make_project({"p": _pipeline("split: {by: customer, train: 0.6, validation: 0.2, "
                                        "test: 0.2}")})
    write(root / "landing/a.csv", "customer,n\n" + "".join(f"c{i},{i}\n" for i in range(300)))
    with hw.Project(root) as project:
        assert _run(project).ok
        first = {r["customer"]: r["_split"] for r in project.dataset("d").to_arrow().to_pylist()}
        write(root / "landing/b.csv", "customer,n\n" + "".join(f"c{i},{i}\n"
                                                                 for i in range(150, 450)))
        assert _run(project).ok
        ds = project.dataset("d")
        second = ds.to_arrow().to_pylist()
        assert all(first[r["customer"]] == r["_split"] for r in second if r["customer"] in first)
        assert {"train", "validation", "test"} == set(first.values())
        train = ds.to_pandas(split="train")
        assert set(train["_split"]) == {"train"}
        assert 0.45 < len(train) / len(second) < 0.75
        with pytest.raises(hw.HeadwaterError, match="split must be one of"):
            ds.to_arrow(split="holdout")


def test_partitioned_dataset_reads_back_whole(make_project: ProjectFactory) -> None:
    """``partition_by`` writes Hive partitions; reads restore the partition column."""
    root = make_project({"p": _pipeline("partition_by: [country]")})
    write(root / "landing/a.csv", "id,country\n1,DE\n2,FR\n3,DE\n")
    with hw.Project(root) as project:
        assert _run(project).ok
        table = project.dataset("d").to_arrow()
        assert [(1, "DE"), (2, "FR"), (3, "DE")] == sorted(
            zip(table["id"].to_pylist(), table["country"].to_pylist(), strict=True))
        assert (Path(project.dataset("d").uri) / "country=DE").is_dir()


def test_stats_and_drift_are_recorded(make_project: ProjectFactory) -> None:
    """Each version stores column statistics, and drift against the one before."""
    root = make_project({"p": _pipeline("mode: append")})
    write(root / "landing/a.csv", "x,c\n" + "".join(f"{i % 10},a\n" for i in range(200)))
    with hw.Project(root) as project:
        assert _run(project).ok
        write(root / "landing/b.csv", "x,c\n" + "".join(f"{50 + i % 10},b\n" for i in range(400)))
        assert _run(project).ok
        stats = project.dataset("d").stats(2)
        assert 600 == stats["rows"]
        assert stats["columns"]
        assert stats["drift"] is not None


def test_large_versions_sample_distributions_but_keep_exact_facts(
        make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the sample size, rows, nulls, min and max stay exact (from the Delta log);
    the rest is estimated from a sample the document declares."""
    import headwater.datasets.version_stats as version_stats

    monkeypatch.setattr(version_stats, "SAMPLE_ROWS", 500)
    root = make_project({"p": _pipeline("mode: append")})
    lines = [f"{i},{'' if i % 10 == 0 else i * 0.5}\n" for i in range(20_000)]
    write(root / "landing/a.csv", "id,v\n" + "".join(lines))
    with hw.Project(root) as project:
        assert _run(project).ok
        stats = project.dataset("d").stats(1)
    columns = stats["columns"]
    assert 20_000 == stats["rows"]
    assert (0, 19_999) == (columns["id"]["min"], columns["id"]["max"])
    assert 2_000 == columns["v"]["nulls"]
    assert 0.5 == columns["v"]["min"]
    assert columns["v"]["sampled"]

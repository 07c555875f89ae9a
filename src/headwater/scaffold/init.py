"""``headwater init``: the example project, with sample data generated on the spot.

The sample is a small shop: order CSV files landing in a folder (a few rows deliberately
malformed, so quarantine shows up on the first run), a SQL step, a Python step, a
validation contract and a publish with deterministic splits. Data is generated from a
fixed seed, so every new project starts identical.
"""

from __future__ import annotations

import csv
import random
from datetime import datetime, timedelta
from pathlib import Path

from headwater.exceptions import HeadwaterError

SCHEMA_DIR = "schema"
"""Where ``init`` writes the JSON Schemas editors validate against (committed with the
project, unlike ``.headwater/``, so a fresh clone validates too)."""

PROJECT_YAML = """\
# yaml-language-server: $schema=schema/project.schema.json
# headwater project settings: every key is in docs/reference.md of headwater.
name: shop
store: sqlite:///.headwater/headwater.db   # or postgresql+psycopg://user@127.0.0.1/db
warehouse: ./warehouse                     # a folder or an fsspec URL (az://container/path)
max_concurrent_runs: 4
connections: {}
environments:            # 'headwater --env qa ...' applies an overlay of the keys above
  qa:
    store: sqlite:///.headwater/qa.db      # e.g. postgresql+psycopg://headwater@qa-db/hw
    warehouse: ./warehouse-qa
    triggers: false                        # qa runs on demand only
  prod:
    store: sqlite:///.headwater/prod.db    # e.g. postgresql+psycopg://headwater@prod-db/hw
    warehouse: ./warehouse-prod            # e.g. az://datasets/prod
"""

ORDERS_YAML = """\
# yaml-language-server: $schema=../schema/pipeline.schema.json
name: orders
description: Orders for the churn model
params: {min_amount: 0}
triggers:
  - files: {path: landing/orders, pattern: "*.csv", settle: 1s}
  - schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}
  - code_change: true
steps:
  - id: raw
    source:
      type: files
      path: landing/orders/*.csv
      format: csv
      incremental: true          # read only files not ingested before
      bad_rows: quarantine       # unparsable rows go to orders__rejected with reasons
      columns: {order_id: int64, amount: float64}
  - id: clean
    sql: sql/clean.sql
  - id: enriched
    python: transforms.orders:enrich
    input: clean
  - id: checked
    validate:
      input: enriched
      columns:
        order_id: {type: int64, nullable: false, unique: true}
        amount:   {type: float64, min: 0}
        country:  {type: string, in: [DE, FR, US, GB]}
      rules: ["shipped_at IS NULL OR shipped_at >= ordered_at"]
      on_error: quarantine
      max_error_ratio: 0.05
  - id: publish
    publish:
      input: checked
      dataset: orders
      mode: merge
      key: [order_id]
      split: {by: customer_id, train: 0.8, validation: 0.1, test: 0.1}
"""

CLEAN_SQL = """\
-- Orders worth keeping: a positive amount, normalised country codes.
SELECT
    order_id,
    customer_id,
    upper(trim(country)) AS country,
    amount,
    ordered_at,
    shipped_at
FROM raw
WHERE amount >= {{ params.min_amount }}
"""

TRANSFORM_PY = '''\
"""Python steps take and return Arrow tables (or Polars/pandas frames, by annotation)."""

import polars as pl


def enrich(clean: pl.DataFrame) -> pl.DataFrame:
    """Add the order's weekday and a size bucket, features the churn model uses."""
    return clean.with_columns(
        pl.col("ordered_at").dt.weekday().alias("weekday"),
        pl.when(pl.col("amount") >= 100).then(pl.lit("large"))
        .otherwise(pl.lit("small")).alias("size"),
    )
'''

GITIGNORE = ".headwater/\nwarehouse/\nwarehouse-*/\n"

PRE_COMMIT = """\
# 'pre-commit install' runs 'headwater check' before each commit that touches the project.
# A local hook: it uses the headwater you installed (the version your CI pins), so the
# check at commit time is the check CI runs.
repos:
  - repo: local
    hooks:
      - id: headwater-check
        name: headwater check
        entry: headwater check
        language: system
        pass_filenames: false
        files: ^(headwater\\.yaml|pipelines/|sql/|transforms/)
"""

COUNTRIES = ["DE", "FR", "US", "GB", "de", " fr"]


def write_orders(path: Path, start_id: int, rows: int, seed: int, bad: bool = True) -> None:
    """One CSV of orders; with ``bad``, two unparsable rows and two that break the contract."""
    rng = random.Random(seed)
    base = datetime(2026, 1, 1)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["order_id", "customer_id", "country", "amount", "ordered_at",
                         "shipped_at"])
        for i in range(rows):
            ordered = base + timedelta(minutes=rng.randrange(0, 60 * 24 * 300))
            shipped = ordered + timedelta(hours=rng.randrange(1, 96)) \
                if rng.random() > 0.2 else None
            writer.writerow([start_id + i, f"c{rng.randrange(1, rows // 3 + 2):05d}",
                             rng.choice(COUNTRIES), f"{rng.uniform(1, 400):.2f}",
                             ordered.isoformat(sep=" "),
                             shipped.isoformat(sep=" ") if shipped else ""])
    if bad:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"{start_id + rows},c00001,DE,not-a-number,2026-02-01 10:00:00,\n")
            handle.write(f"{start_id + rows + 1},c00002,FR,12.50\n")
            handle.write(f"{start_id + rows + 2},c00003,US,25.00,2026-02-03 10:00:00,"
                         f"2026-02-01 09:00:00\n")
            handle.write(f"{start_id + rows + 3},c00004,XX,30.00,2026-02-04 10:00:00,\n")


def scaffold(directory: Path, force: bool = False) -> Path:
    """Create the example project in ``directory``; returns its absolute path."""
    root = directory.resolve()
    if (root / "headwater.yaml").exists() and not force:
        raise HeadwaterError(f"{root} already holds a headwater project (use --force to "
                             "overwrite the example files)")
    if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")) \
            and not force and not (root / "headwater.yaml").exists():
        raise HeadwaterError(f"{root} is not empty; choose a new folder or pass --force")
    for folder in ("pipelines", "sql", "transforms", "landing/orders"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "headwater.yaml").write_text(PROJECT_YAML, encoding="utf-8")
    (root / "pipelines" / "orders.yaml").write_text(ORDERS_YAML, encoding="utf-8")
    (root / "sql" / "clean.sql").write_text(CLEAN_SQL, encoding="utf-8")
    (root / "transforms" / "__init__.py").write_text("", encoding="utf-8")
    (root / "transforms" / "orders.py").write_text(TRANSFORM_PY, encoding="utf-8")
    (root / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    (root / ".pre-commit-config.yaml").write_text(PRE_COMMIT, encoding="utf-8")
    write_schemas(root)
    write_orders(root / "landing" / "orders" / "orders-001.csv", 1, 500, seed=1)
    write_orders(root / "landing" / "orders" / "orders-002.csv", 1001, 500, seed=2, bad=False)
    scaffold_test_case(root)
    return root


def write_schemas(root: Path) -> None:
    """``schema/pipeline.schema.json`` and ``schema/project.schema.json``: the same JSON
    Schema ``headwater schema`` prints, for the ``yaml-language-server`` headers."""
    from headwater.config.schema import render

    folder = root / SCHEMA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("pipeline", "project"):
        (folder / f"{kind}.schema.json").write_text(render(kind), encoding="utf-8")


CASE_YAML = """\
# A pipeline test: inputs/ replaces each source step, expected/ is what must be published.
# Run it with 'headwater test'; after a deliberate change, 'headwater test --update' and
# review the diff of expected/ like code.
description: Sixty orders, two unparsable and two breaking the contract
params: {min_amount: 0}
"""


def scaffold_test_case(root: Path) -> None:
    """``tests/orders/basic/``: small fixture input and expectations made by running it."""
    from headwater.project import Project
    from headwater.testing.cases import Case
    from headwater.testing.run import run_case

    folder = root / "tests" / "orders" / "basic"
    (folder / "inputs" / "raw").mkdir(parents=True, exist_ok=True)
    (folder / "case.yaml").write_text(CASE_YAML, encoding="utf-8")
    write_orders(folder / "inputs" / "raw" / "orders.csv", 1, 60, seed=3)
    case = Case("orders", "basic", folder, params={"min_amount": 0})
    with Project(root) as project:
        result = run_case(root, case, project.runtime.pipeline("orders").config, update=True)
    if not result.ok:  # pragma: no cover - the example must always pass
        raise HeadwaterError(f"the example test case failed: {result.error}")

"""Deterministic train / validation / test splits as DuckDB SQL (SPEC §3, ``publish.split``).

A row's split is a pure function of its key and the seed, so a key never changes split
between versions, machines or DuckDB releases: the key's text form is hashed with MD5 (a
fixed, standard function; DuckDB's own ``hash()`` may change between releases), the first
52 bits of the digest are read as a fraction in [0, 1), and the ratios cut that interval
into ``train``, ``validation`` and ``test``, in that order.

* The key's text form is ``CAST(col AS VARCHAR)``: the integer 42 and the string ``'42'``
  land in the same split, so a column that changes from text to integer keeps its splits.
* ``by`` may name several columns, comma-separated (``"customer_id, country"``); their text
  forms are joined with the unit separator and a NULL part is written ``\\N``.
* A NULL key (every ``by`` column NULL) has nothing stable to hash and always goes to
  ``train``: it is never evaluated on, which is the safe side for a leak.

The same fraction is easy to reproduce outside DuckDB::

    int(md5(f"{seed}\\x1f{key}".encode()).hexdigest()[:13], 16) / 2**52

This module must never import the engine, the server or the CLI.
"""

from __future__ import annotations

import math

from headwater.config.models import SplitConfig
from headwater.exceptions import ConfigError
from headwater.sqltext import ident as _ident
from headwater.sqltext import subquery as _subquery

SPLITS = ("train", "validation", "test")
"""The values of ``_split``, in the order the ratios cut the unit interval."""

SPLIT_COLUMN = "_split"

_BITS = 52
"""Digest bits read as the fraction: a double holds them exactly."""


def split_columns(config: SplitConfig) -> list[str]:
    """The key columns named by ``by`` (one, or several separated by commas)."""
    columns = [part.strip() for part in config.by.split(",")]
    if not all(columns):
        raise ConfigError(f"split.by {config.by!r} has an empty column name", key="split.by")
    return columns


def check_ratios(config: SplitConfig) -> None:
    """Raise ConfigError unless train + validation + test is 1 (to within rounding)."""
    ratios = (config.train, config.validation, config.test)
    if not math.isclose(sum(ratios), 1.0, abs_tol=1e-9):
        raise ConfigError(
            f"split ratios must add up to 1, but train {config.train} + validation "
            f"{config.validation} + test {config.test} = {sum(ratios):g}",
            key="split",
        )


def _key_text(columns: list[str]) -> str:
    if len(columns) == 1:
        return f"CAST({_ident(columns[0])} AS VARCHAR)"
    parts = ", ".join(f"coalesce(CAST({_ident(c)} AS VARCHAR), '\\N')" for c in columns)
    return f"concat_ws(chr(31), {parts})"


def _all_null(columns: list[str]) -> str:
    return " AND ".join(f"{_ident(c)} IS NULL" for c in columns)


def fraction_expression(config: SplitConfig) -> str:
    """SQL for the key's stable position in [0, 1) (NULL for a NULL key)."""
    seed = "'" + str(config.seed) + "'"
    digest = f"md5(concat({seed}, chr(31), {_key_text(split_columns(config))}))"
    return f"(CAST('0x' || left({digest}, {_BITS // 4}) AS BIGINT) / {float(2**_BITS)!r})"


def _case(config: SplitConfig, fraction: str) -> str:
    """The CASE turning a key's ``fraction`` (SQL) into its split name."""
    check_ratios(config)
    ratios = dict(zip(SPLITS, (config.train, config.validation, config.test), strict=True))
    used = [name for name in SPLITS if ratios[name] > 0]
    whens, cut = [f"WHEN {_all_null(split_columns(config))} THEN 'train'"], 0.0
    for name in used[:-1]:
        cut += ratios[name]
        whens.append(f"WHEN {fraction} < {cut!r} THEN '{name}'")
    return f"(CASE {' '.join(whens)} ELSE '{used[-1]}' END)"


def split_expression(config: SplitConfig) -> str:
    """A DuckDB SQL expression giving ``'train'``, ``'validation'`` or ``'test'`` per row.

    A split with ratio 0 is never produced; the last split with a positive ratio takes the
    remainder, so rounding in the ratios cannot leak a row into an empty split. The hash is
    written once per split boundary; :func:`add_split` computes it only once per row.
    """
    return _case(config, fraction_expression(config))


def add_split(relation: str, config: SplitConfig) -> str:
    """SQL for ``relation`` with a ``_split`` column (replacing one already there)."""
    case = _case(config, "__hw_fraction")
    keep = f"COLUMNS(lambda c: c NOT IN ('{SPLIT_COLUMN}', '__hw_fraction'))"
    inner = (
        f"SELECT *, {fraction_expression(config)} AS __hw_fraction "
        f"FROM {_subquery(relation)} AS __hw_s"
    )
    return f"SELECT {keep}, {case} AS {SPLIT_COLUMN} FROM ({inner}) AS __hw_f"

"""The guard in front of analysts' SQL: ClickHouse's own parser decides what a query is.

`readonly = 1` is not enough on chDB: the scalar `file()` reads any file the
process can read and `INTO OUTFILE` writes one (see NOTES). So before a query
runs, the guard asks the engine about it, in three steps, none of which runs it:

1. `formatQuerySingleLine(<sql>)`, with the text passed as a query *parameter*:
   the engine parses it, refuses more than one statement, and gives back its own
   rendering of the one statement. That rendering is what is checked and run, so
   the text checked is the text executed.
2. `EXPLAIN AST <rendering>`: the engine's syntax tree, one node per line.
3. Rules over the tree: one SELECT / WITH / EXPLAIN / SHOW TABLES / SHOW CREATE /
   DESCRIBE; no INTO OUTFILE, FORMAT or SETTINGS clause; no function that reads
   or writes outside the warehouse (`file`, `url`, `s3`, `remote`, `dictGet`, ...);
   tables and table functions from an allowlist (sinks/analyst.py) only.

Verdicts are cached by query text: query parameters are restricted to value types
(String, numbers, dates), which cannot change the tree, so a query shape that was
allowed once (the Stats API's queries) is not parsed again.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client
from tally.sinks.analyst import ANALYST_TABLES, ANALYST_VIEWS, SYSTEM_TABLES, TABLE_FUNCTIONS

MAX_SQL_BYTES = 256 * 1024
EXPLAIN_FORMAT = "TabSeparatedRaw"

# Functions that read or write outside the warehouse, or describe users, grants and
# server files. Matched on the lower-cased name, exactly or by prefix.
DENIED_FUNCTIONS = frozenset({
    "file", "url", "urlcluster", "s3", "hdfs", "remote", "remotesecure", "cluster", "input",
    "executable", "dictionary", "merge", "loop", "view", "viewexplain", "joinget", "joingetornull",
    "gcs", "oss", "cosn", "odbc", "jdbc", "sqlite", "redis", "hascolumnintable", "getclienthttpheader",
    "currentprofiles", "enabledprofiles", "defaultprofiles", "currentroles", "enabledroles",
    "defaultroles", "generateserialid", "demangle", "getmacro",
})
DENIED_PREFIXES = (
    "dict", "file", "s3", "hdfs", "remote", "cluster", "executable", "azure", "iceberg", "deltalake",
    "hudi", "paimon", "mysql", "postgres", "mongo", "python", "catboost", "addressto", "getserver",
    "getmergetree", "arrowflight", "ytsaurus", "timeseries", "mergetree", "fuzz", "naivebayes",
)
# `x IN t` reads table t when t is a bare name.
IN_FUNCTIONS = frozenset({"in", "notin", "globalin", "globalnotin", "nullin", "notnullin",
                          "globalnullin", "globalnotnullin", "inignoreset", "notinignoreset"})
ROOTS = {"SelectWithUnionQuery": "SELECT", "Explain": "EXPLAIN", "ShowTables": "SHOW TABLES",
         "ShowCreateTableQuery": "SHOW CREATE TABLE", "ShowCreateViewQuery": "SHOW CREATE VIEW",
         "DescribeQuery": "DESCRIBE"}
SAFE_PARAM_TYPE = re.compile(
    r"^(?:Nullable\()?(?:String|UUID|Bool|Date|Date32|DateTime|DateTime64\(\d\)|U?Int(?:8|16|32|64)|Float(?:32|64)|"
    r"Array\((?:String|U?Int(?:8|16|32|64)|Date)\))\)?$")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TABLE_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
# Lexing the engine's canonical rendering: quoted strings, quoted identifiers, placeholders.
_TOKEN = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\{\s*([A-Za-z_]\w*)\s*:\s*([^{}]+?)\s*\}", re.S)
_CHILDREN = re.compile(r" \(children \d+\)$")


class Refused(ValueError):
    """The query is not one the guard lets through; the message says why."""


@dataclass
class Node:
    kind: str
    text: str  # what follows the kind on its line, without "(children N)"
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The node's name (function, identifier) without its alias."""
        return self.text.split(" (alias ", 1)[0].strip()


def parse_tree(text: str) -> Node:
    """The tree of an `EXPLAIN AST` answer: one node per line, one space of indent per level."""
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        kind, _, rest = _CHILDREN.sub("", line.strip()).partition(" ")
        rest = rest.strip()
        while stack and stack[-1][0] >= depth:
            stack.pop()
        node = Node(kind, rest, stack[-1][1] if stack else None)
        if node.parent is None:
            if root is not None:
                raise Refused("the engine described more than one statement")
            root = node
        else:
            node.parent.children.append(node)
        stack.append((depth, node))
    if root is None:
        raise Refused("empty query")
    return root


def walk(node: Node):
    yield node
    for child in node.children:
        yield from walk(child)


def function_denied(name: str) -> bool:
    low = name.lower()
    return low in DENIED_FUNCTIONS or low.startswith(DENIED_PREFIXES)


@dataclass(frozen=True)
class Checked:
    sql: str  # the engine's rendering of the one statement: run this, not the original text
    kind: str  # SELECT, EXPLAIN, SHOW TABLES, ...


class Guard:
    """Checks analysts' SQL on the engine it will run on. Thread-safe; one per process."""

    def __init__(self, cache_size: int = 2048, tables_ttl: float = 60.0) -> None:
        self.allowed_tables = self._allowed("default")
        self._cache: OrderedDict[str, Checked] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._tables: frozenset[str] = frozenset()
        self._tables_at = -1e9
        self._tables_ttl = tables_ttl

    def check(self, client: Client, sql: str, params: Mapping[str, Any] | None = None) -> Checked:
        params = dict(params or {})
        check_params(params)
        with self._lock:
            hit = self._cache.get(sql)
            if hit is not None:
                self._cache.move_to_end(sql)
        if hit is not None:
            return hit
        checked = self._check(client, sql, params)
        with self._lock:
            self._cache[sql] = checked
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return checked

    def _check(self, client: Client, sql: str, params: dict[str, Any]) -> Checked:
        if not sql.strip():
            raise Refused("empty query")
        if len(sql.encode()) > MAX_SQL_BYTES:
            raise Refused(f"query longer than {MAX_SQL_BYTES // 1024} KiB")
        try:
            rendered = client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": sql}).result_rows[0][0]
        except Exception as exc:
            raise Refused(engine_message(exc)) from None
        check_lexemes(rendered, params)
        try:
            text = client.raw_query(f"EXPLAIN AST {rendered}", fmt=EXPLAIN_FORMAT, parameters=params or None).decode()
        except Exception as exc:
            message = engine_message(exc)
            if "READONLY" in message or "readonly mode" in message:
                raise Refused("SETTINGS clauses are not accepted: analyst queries run with fixed limits") from None
            raise Refused(message) from None
        kind = self.check_tree(parse_tree(text), client)
        return Checked(rendered, kind)

    def check_tree(self, root: Node, client: Client | None = None) -> str:
        kind = ROOTS.get(root.kind)
        if kind is None:
            what = root.kind.removesuffix("Query") if root.kind.endswith("Query") else \
                f"{root.kind} {root.text.removesuffix(' query')}".strip()
            raise Refused(f"only one SELECT, WITH, EXPLAIN, SHOW TABLES, SHOW CREATE or DESCRIBE statement "
                          f"is accepted (this is {what})")
        if root.kind == "Explain" and (not root.children or root.children[0].kind != "SelectWithUnionQuery"):
            raise Refused("EXPLAIN is accepted for SELECT queries only")
        if root.kind.startswith("ShowCreate"):
            parts = root.text.split()
            self._check_table(".".join(parts) if len(parts) > 1 else (parts[0] if parts else ""), client)
        for node in walk(root):
            self._check_node(node, client)
        return kind

    def _check_node(self, node: Node, client: Client | None) -> None:
        parent = node.parent
        if node.kind == "Set":
            raise Refused("SETTINGS clauses are not accepted: analyst queries run with fixed limits")
        if parent is not None and parent.kind == "SelectWithUnionQuery":
            if node.kind == "Literal":
                raise Refused("INTO OUTFILE is not accepted: analyst queries cannot write files "
                              "(use --format csv and redirect the output)")
            if node.kind == "Identifier" and node.name != EXPLAIN_FORMAT:
                raise Refused("FORMAT clauses are not accepted: choose the output with --format")
        if node.kind == "Function":
            self._check_function(node)
        elif node.kind == "TableIdentifier":
            self._check_table(node.name, client)

    def _check_function(self, node: Node) -> None:
        name = node.name
        if node.parent is not None and node.parent.kind == "TableExpression":
            if name.lower() in TABLE_FUNCTIONS or name in ANALYST_VIEWS:
                return
            raise Refused(f"the table function `{name}` is not accepted: analyst queries read the analyst "
                          f"tables and views only (docs/analysts.md)")
        if function_denied(name):
            raise Refused(f"the function `{name}` is not accepted: it reads or writes outside the warehouse "
                          f"or describes users, grants or server files")
        if name.lower() in IN_FUNCTIONS and node.children:
            args = node.children[0].children
            if len(args) > 1 and args[1].kind == "Identifier":
                raise Refused(f"`IN {args[1].name}` is not accepted: write `IN (SELECT ... FROM <table>)`")

    def _check_table(self, name: str, client: Client | None) -> None:
        existing = self.existing_tables(client)  # also learns the current database's name
        if name in self.allowed_tables:
            return
        if not TABLE_NAME.match(name):
            raise Refused(f"the table name `{name}` is not accepted (letters, digits, `_` and `.` only)")
        if "." not in name and name not in existing:
            return  # a WITH (CTE) name: a real table of that name would be in the list
        raise Refused(f"`{name}` is not an analyst table; analysts read: "
                      f"{', '.join(sorted(ANALYST_TABLES | ANALYST_VIEWS))}, and system.{{{', '.join(sorted(SYSTEM_TABLES))}}}")

    @staticmethod
    def _allowed(database: str) -> frozenset[str]:
        analyst = ANALYST_TABLES | ANALYST_VIEWS
        return frozenset(analyst | {f"{database}.{t}" for t in analyst} | {f"system.{t}" for t in SYSTEM_TABLES})

    def existing_tables(self, client: Client | None) -> frozenset[str]:
        """Names of the tables, views and dictionaries of the current database."""
        now = time.monotonic()
        if client is not None and now - self._tables_at > self._tables_ttl:
            rows = client.query("SELECT currentDatabase(), name FROM system.tables "
                                "WHERE database = currentDatabase()").result_rows
            self._tables = frozenset(r[1] for r in rows)
            if rows:
                self.allowed_tables = self._allowed(rows[0][0])
            self._tables_at = now
        return self._tables


def check_params(params: Mapping[str, Any]) -> None:
    for name, value in params.items():
        if not PARAM_NAME.match(name):
            raise Refused(f"query parameter name {name!r} is not an identifier")
        values = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, str | int | float) for v in values):
            raise Refused(f"query parameter {name!r} must be a string, a number or a list of them")


def check_lexemes(rendered: str, params: Mapping[str, Any]) -> None:
    """On the engine's canonical rendering: identifiers carry no escaped characters (a
    newline in a name would forge a line of EXPLAIN AST's answer), and every query
    parameter is a value type, so no parameter can become a table or a function."""
    for m in _TOKEN.finditer(rendered):
        token = m.group(0)
        if token.startswith("`") and "\\" in token:
            raise Refused(f"the identifier {token} holds escaped characters, which are not accepted")
        if m.group(1) is not None:
            name, ptype = m.group(1), m.group(2)
            if not SAFE_PARAM_TYPE.match(ptype):
                raise Refused(f"query parameter {{{name}:{ptype}}}: only value types (String, numbers, dates) are accepted")
            if name not in params:
                raise Refused(f"query parameter {{{name}:{ptype}}} has no value")


def engine_message(exc: BaseException) -> str:
    """ClickHouse's own message, without the repeated code prefix, the echo of the guard's
    own wrapper query and stack noise."""
    text = str(exc).strip()
    idx = text.rfind("DB::Exception: ")
    if idx >= 0:
        text = text[idx + len("DB::Exception: "):]
    text = text.split("\nStack trace", 1)[0].split(": In scope SELECT formatQuerySingleLine", 1)[0]
    return text.strip()[:2000]

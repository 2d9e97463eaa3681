"""The OpenAPI document as a test oracle: which statuses an operation may
answer, whether a decoded msgpack value fits a schema, and Hypothesis
strategies that generate request bodies from the schemas (well-formed, or
with one field wrong)."""
from __future__ import annotations

from hypothesis import strategies as st

from vault_raft.api.openapi import OPENAPI

U64 = (1 << 64) - 1


def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        node = OPENAPI
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def operation(path: str, method: str) -> dict | None:
    item = OPENAPI["paths"].get(path)
    if item is None:
        return None
    return item.get("get" if method == "HEAD" else method.lower())


def documented(path: str, method: str) -> set[int]:
    """Statuses a request to ``method path`` may be answered with."""
    op = operation(path, method)
    if op is not None:
        return {int(s) for s in op["responses"]}
    item = OPENAPI["paths"].get(path)
    if item is not None:  # a method the path does not have
        any_op = next(iter(item.values()))
        return {int(s) for s in any_op["responses"] if int(s) >= 400}
    return {400, 404, 405, 413, 417, 503}  # unknown path (or unparsable request)


def response_schema(path: str, method: str, status: int) -> dict | None:
    op = operation(path, method)
    resp = op["responses"].get(str(status)) if op is not None else None
    if resp is None:
        if status >= 400:
            return resolve({"$ref": "#/components/schemas/Error"})
        return None
    content = resp.get("content", {})
    if not content:
        return None
    return resolve(next(iter(content.values()))["schema"])


_PY = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list,
       "null": type(None)}


def _is(value, t: str, fmt: str | None) -> bool:
    if t == "string" and fmt == "binary":
        return isinstance(value, bytes)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _PY[t])


def errors(schema: dict, value, where: str = "$") -> list[str]:
    """Why ``value`` does not fit ``schema`` (empty: it fits)."""
    schema = resolve(schema)
    out: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is(value, t, schema.get("format")) for t in types):
            return [f"{where}: {type(value).__name__} is not {types} "
                    f"({schema.get('format', '')})"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, (bytes, str)):
        if len(value) < schema.get("minLength", 0):
            out.append(f"{where}: length {len(value)} < {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{where}: length {len(value)} > {schema['maxLength']}")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                out.append(f"{where}: {k} missing")
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                out += errors(sub, value[k], f"{where}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += errors(schema["items"], v, f"{where}[{i}]")
    return out


# ------------------------------------------------------------- generation

def junk() -> st.SearchStrategy:
    """Any msgpack value, mostly of the wrong kind for some field."""
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), U64),
                       st.floats(allow_nan=True), st.text(max_size=40),
                       st.binary(max_size=300))
    return st.recursive(scalar, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=8)


def value(schema: dict, cap: int = 2048) -> st.SearchStrategy:
    """A value that fits ``schema`` (binary lengths within bounds, capped)."""
    schema = resolve(schema)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    t = schema.get("type")
    t = t[0] if isinstance(t, list) else t
    if t == "string" and schema.get("format") == "binary":
        lo = schema.get("minLength", 0)
        hi = min(schema.get("maxLength", lo + cap), lo + cap)
        return st.binary(min_size=lo, max_size=hi)
    if t == "string":
        return st.text(min_size=schema.get("minLength", 0),
                       max_size=min(schema.get("maxLength", 40), 40))
    if t == "integer":
        return st.integers(schema.get("minimum", -(1 << 63)), schema.get("maximum", U64))
    if t == "boolean":
        return st.booleans()
    if t == "object":
        props = schema.get("properties", {})
        req = schema.get("required", [])
        return st.fixed_dictionaries({k: value(props[k], cap) for k in req},
                                     optional={k: value(s, cap) for k, s in props.items()
                                               if k not in req})
    return junk()


def off_by_one(schema: dict) -> st.SearchStrategy:
    """A value just outside ``schema``'s bounds (or of the wrong kind)."""
    schema = resolve(schema)
    t = schema.get("type")
    options = [junk()]
    if t == "string" and schema.get("format") == "binary":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if lo > 0:
            options.append(st.binary(min_size=lo - 1, max_size=lo - 1))
        if hi is not None and hi < 70_000:
            options.append(st.binary(min_size=hi + 1, max_size=hi + 1))
        options.append(st.text(min_size=lo, max_size=max(lo, 1)))  # str, not bin
    if t == "integer":
        if "minimum" in schema and schema["minimum"] > -(1 << 63):
            options.append(st.just(schema["minimum"] - 1))
        if "maximum" in schema and schema["maximum"] < U64:
            options.append(st.just(schema["maximum"] + 1))
        options.append(st.booleans())
        options.append(st.floats(allow_nan=False, allow_infinity=False))
    if "enum" in schema:
        options.append(st.text(max_size=12).filter(lambda v: v not in schema["enum"]))
    return st.one_of(*options)


def request_schema(path: str, method: str) -> dict | None:
    op = operation(path, method)
    if op is None or "requestBody" not in op:
        return None
    return resolve(next(iter(op["requestBody"]["content"].values()))["schema"])


@st.composite
def body(draw, schema: dict, special: dict | None = None) -> dict:
    """A map from ``schema``: well-formed, or with a field missing, wrong or
    extra.  ``special`` may give a field its own strategy (real KE1s, known
    users)."""
    special = special or {}
    props = schema.get("properties", {})
    out = {}
    for k, sub in props.items():
        if k in schema.get("required", []) or k in special or draw(st.booleans()):
            out[k] = draw(special[k]) if k in special and draw(st.booleans()) \
                else draw(value(sub))
    mode = draw(st.sampled_from(["valid", "valid", "wrong", "missing", "extra", "edge"]))
    if mode == "wrong" and props:
        k = draw(st.sampled_from(sorted(props)))
        out[k] = draw(junk())
    elif mode == "edge" and props:
        k = draw(st.sampled_from(sorted(props)))
        out[k] = draw(off_by_one(props[k]))
    elif mode == "missing" and out:
        out.pop(draw(st.sampled_from(sorted(out))))
    elif mode == "extra":
        out[draw(st.text(min_size=1, max_size=10))] = draw(junk())
    return out

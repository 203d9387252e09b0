"""Sparkplug B payloads written and read by Google's protobuf package (independent of `runtime.protowire`), from
the schema of Eclipse Tahu's sparkplug_b.proto (the fields the tests use: Payload, Metric with its value oneof,
PropertySet, PropertyValue), built at import without protoc."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
DATATYPES = {"Int8": 1, "Int16": 2, "Int32": 3, "Int64": 4, "UInt8": 5, "UInt16": 6, "UInt32": 7, "UInt64": 8,
             "Float": 9, "Double": 10, "Boolean": 11, "String": 12, "DateTime": 13, "Bytes": 17}  # fmt: skip


def _message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> descriptor_pb2.DescriptorProto:
    m = descriptor_pb2.DescriptorProto(name=name)
    for fname, number, ftype, label, type_name in fields:
        m.field.add(
            name=fname, number=number, type=ftype, label=label, **({"type_name": type_name} if type_name else {})
        )
    return m


def _schema() -> Any:
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    pkg = ".org.eclipse.tahu.protobuf.Payload"
    value = _message("PropertyValue", [
        ("type", 1, F.TYPE_UINT32, opt, None), ("is_null", 2, F.TYPE_BOOL, opt, None),
        ("int_value", 3, F.TYPE_UINT32, opt, None), ("long_value", 4, F.TYPE_UINT64, opt, None),
        ("float_value", 5, F.TYPE_FLOAT, opt, None), ("double_value", 6, F.TYPE_DOUBLE, opt, None),
        ("boolean_value", 7, F.TYPE_BOOL, opt, None), ("string_value", 8, F.TYPE_STRING, opt, None),
    ])  # fmt: skip
    props = _message("PropertySet", [("keys", 1, F.TYPE_STRING, rep, None),
                                     ("values", 2, F.TYPE_MESSAGE, rep, f"{pkg}.PropertyValue")])  # fmt: skip
    metric = _message("Metric", [
        ("name", 1, F.TYPE_STRING, opt, None), ("alias", 2, F.TYPE_UINT64, opt, None),
        ("timestamp", 3, F.TYPE_UINT64, opt, None), ("datatype", 4, F.TYPE_UINT32, opt, None),
        ("is_historical", 5, F.TYPE_BOOL, opt, None), ("is_transient", 6, F.TYPE_BOOL, opt, None),
        ("is_null", 7, F.TYPE_BOOL, opt, None), ("properties", 9, F.TYPE_MESSAGE, opt, f"{pkg}.PropertySet"),
        ("int_value", 10, F.TYPE_UINT32, opt, None), ("long_value", 11, F.TYPE_UINT64, opt, None),
        ("float_value", 12, F.TYPE_FLOAT, opt, None), ("double_value", 13, F.TYPE_DOUBLE, opt, None),
        ("boolean_value", 14, F.TYPE_BOOL, opt, None), ("string_value", 15, F.TYPE_STRING, opt, None),
        ("bytes_value", 16, F.TYPE_BYTES, opt, None),
    ])  # fmt: skip
    payload = _message("Payload", [
        ("timestamp", 1, F.TYPE_UINT64, opt, None), ("metrics", 2, F.TYPE_MESSAGE, rep, f"{pkg}.Metric"),
        ("seq", 3, F.TYPE_UINT64, opt, None), ("uuid", 4, F.TYPE_STRING, opt, None),
    ])  # fmt: skip
    metric.oneof_decl.add(name="value")
    for f in metric.field:
        if f.number >= 10:
            f.oneof_index = 0
    payload.nested_type.extend([value, props, metric])
    proto = descriptor_pb2.FileDescriptorProto(name="sparkplug_b_test.proto", package="org.eclipse.tahu.protobuf",
                                               syntax="proto2")  # fmt: skip
    proto.message_type.append(payload)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))


Payload = _schema()


def metric(payload: Any, name: str | None = None, value: Any = None, datatype: str | None = None,
           alias: int | None = None, ts: int | None = None, quality: int | None = None,
           typed: bool = True) -> Any:  # fmt: skip
    """Add one metric to `payload`: the value in the field of its datatype (None: is_null; Int8..Int32 negatives
    as Java's Tahu sends them, sign-extended to 32 bits), a Quality property when given; `typed` False leaves the
    datatype out (as data messages may: their birth gave it)."""
    m = payload.metrics.add()
    if name is not None:
        m.name = name
    if alias is not None:
        m.alias = alias
    if ts is not None:
        m.timestamp = ts
    if datatype is not None and typed:
        m.datatype = DATATYPES[datatype]
    if quality is not None:
        m.properties.keys.append("Quality")
        m.properties.values.add(type=3, int_value=quality)
    if value is None:
        m.is_null = True
    elif datatype in ("Int8", "Int16", "Int32", "UInt8", "UInt16", "UInt32"):
        m.int_value = value % 2**32
    elif datatype in ("Int64", "UInt64", "DateTime"):
        m.long_value = value % 2**64
    elif datatype == "Float":
        m.float_value = value
    elif datatype == "Boolean":
        m.boolean_value = value
    elif datatype == "String":
        m.string_value = value
    else:
        m.double_value = value
    return m

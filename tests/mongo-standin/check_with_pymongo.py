#!/usr/bin/env python3
"""Checks coffer's MongoDB stand-in with the official Python driver.

Usage: check_with_pymongo.py PATH_TO_coffer-mongo-standin

Starts the stand-in binary several times (standalone, replica set, with
users, with a capped oplog), talks to it with pymongo, and exits non-zero
if any check fails. tests/it/mongo_standin.rs runs it.
"""

import base64
import datetime
import hashlib
import hmac
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

import bson
import pymongo
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, monitoring
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure

BINARY = sys.argv[1]
RESULTS = []


class Server:
    """One stand-in process on a free port."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [BINARY, "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError(f"stand-in did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(m.group(1))

    def client(self, **kw):
        kw.setdefault("directConnection", "replicaSet" not in kw)
        kw.setdefault("serverSelectionTimeoutMS", 5000)
        kw.setdefault("uuidRepresentation", "standard")
        return MongoClient("127.0.0.1", self.port, **kw)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Recorder(monitoring.CommandListener):
    """Records the commands pymongo sends and the replies it gets."""

    def __init__(self):
        self.names = []
        self.replies = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        self.replies.append(event.reply)

    def failed(self, event):
        pass


def check(name):
    def wrap(fn):
        def run(*a):
            try:
                fn(*a)
                RESULTS.append((name, None))
                print(f"ok   {name}", flush=True)
            except Exception:  # noqa: BLE001 (report every failure)
                RESULTS.append((name, traceback.format_exc()))
                print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)

        return run

    return wrap


def expect_failure(code, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except OperationFailure as e:
        assert e.code == code, f"expected code {code}, got {e.code}: {e.details}"
        return e
    raise AssertionError(f"expected OperationFailure code {code}, nothing raised")


# ---------------------------------------------------------------------------
# Standalone server

@check("handshake: server_info, hello fields, buildInfo 7.0")
def handshake(srv):
    c = srv.client()
    info = c.server_info()
    assert info["version"] == "7.0.14", info
    assert info["versionArray"][:2] == [7, 0]
    hello = c.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert hello["maxBsonObjectSize"] == 16777216
    assert hello["maxMessageSizeBytes"] == 48000000
    assert hello["maxWriteBatchSize"] == 100000
    assert hello["maxWireVersion"] == 21 and hello["minWireVersion"] == 0
    assert isinstance(hello["localTime"], datetime.datetime)
    assert "setName" not in hello
    legacy = c.admin.command("isMaster")
    assert legacy["ismaster"] is True and "isWritablePrimary" not in legacy
    assert c.admin.command("ping")["ok"] == 1.0
    c.close()


@check("unknown command: code 59 CommandNotFound")
def unknown_command(srv):
    c = srv.client()
    e = expect_failure(59, c.admin.command, "noSuchThing")
    assert e.details["codeName"] == "CommandNotFound"
    assert e.details["errmsg"] == "no such command: 'noSuchThing'", e.details
    assert e.details["ok"] == 0.0


@check("create_collection with options, a view, a time-series; list_collections")
def collections(srv):
    c = srv.client()
    db = c.colls
    db.create_collection("capped", capped=True, size=65536, max=100)
    db.create_collection("validated", validator={"a": {"$exists": True}}, collation={"locale": "simple"})
    db.plain.insert_one({"_id": 1, "a": 1})
    db.create_collection("v", viewOn="plain", pipeline=[{"$match": {"a": 1}}])
    db.create_collection("ts", timeseries={"timeField": "t", "granularity": "seconds"})
    infos = {i["name"]: i for i in db.list_collections()}
    assert infos["capped"]["type"] == "collection"
    assert infos["capped"]["options"] == {"capped": True, "size": 65536, "max": 100}, infos["capped"]
    # Commands decode with pymongo's default codec options: a subtype 4 Binary.
    ui = infos["capped"]["info"]["uuid"]
    assert isinstance(ui, Binary) and ui.subtype == 4 and len(ui) == 16, ui
    assert infos["capped"]["info"]["readOnly"] is False
    assert infos["capped"]["idIndex"] == {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    assert infos["validated"]["options"]["validator"] == {"a": {"$exists": True}}
    assert infos["v"]["type"] == "view" and infos["v"]["options"]["viewOn"] == "plain"
    assert infos["v"]["info"] == {"readOnly": True}
    assert infos["ts"]["type"] == "timeseries"
    assert infos["ts"]["options"] == {"timeseries": {"timeField": "t", "granularity": "seconds", "bucketMaxSpanSeconds": 3600}}
    assert infos["ts"]["info"] == {"readOnly": False}, infos["ts"]
    buckets = infos["system.buckets.ts"]
    assert buckets["options"]["clusteredIndex"] is True and "idIndex" not in buckets, buckets
    e = expect_failure(40415, db.command, "create", "odd", bogus=1)
    assert e.details["errmsg"] == "BSON field 'create.bogus' is an unknown field.", e.details
    db.command("collMod", "validated", validator={"b": {"$exists": True}})
    assert db.list_collections(filter={"name": "validated"}).next()["options"]["validator"] == {"b": {"$exists": True}}
    assert list(db.v.find()) == [{"_id": 1, "a": 1}]
    names = db.list_collection_names(filter={"type": "view"})
    assert names == ["v"], names
    assert sorted(db.list_collection_names()) == sorted(infos)
    assert "colls" in c.list_database_names()
    dbs = c.admin.command("listDatabases")
    entry = [d for d in dbs["databases"] if d["name"] == "colls"][0]
    assert entry["sizeOnDisk"] > 0 and entry["empty"] is False
    assert "totalSize" in dbs
    only = c.admin.command("listDatabases", nameOnly=True, filter={"name": "colls"})
    assert only["databases"] == [{"name": "colls"}], only
    # A second create with other options fails like MongoDB's.
    e = expect_failure(48, db.command, "create", "capped", capped=True, size=1)
    assert e.details["errmsg"] == "Collection colls.capped already exists.", e.details


@check("insert_many ordered and unordered with duplicate keys: BulkWriteError 11000")
def duplicates(srv):
    c = srv.client()
    coll = c.dup.c
    coll.insert_one({"_id": 2})
    try:
        coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}], ordered=True)
        raise AssertionError("no error")
    except BulkWriteError as e:
        r = e.details
        assert r["nInserted"] == 1, r
        assert len(r["writeErrors"]) == 1
        we = r["writeErrors"][0]
        assert we["index"] == 1 and we["code"] == 11000, we
        assert we["errmsg"] == "E11000 duplicate key error collection: dup.c index: _id_ dup key: { _id: 2 }", we
        assert we["keyValue"] == {"_id": 2}
    try:
        coll.insert_many([{"_id": 4}, {"_id": 2}, {"_id": 5}, {"_id": 1}], ordered=False)
        raise AssertionError("no error")
    except BulkWriteError as e:
        r = e.details
        assert r["nInserted"] == 2, r
        assert [w["index"] for w in r["writeErrors"]] == [1, 3], r
    assert sorted(d["_id"] for d in coll.find()) == [1, 2, 4, 5]


@check("find: sort, hint, skip, limit, projection, batch_size over several getMores")
def find_batches(srv):
    rec = Recorder()
    c = srv.client(event_listeners=[rec])
    coll = c.find.c
    coll.insert_many([{"_id": i, "x": i % 7, "s": "v" * (i % 5)} for i in range(1000)])
    rec.names.clear()
    got = [d["_id"] for d in coll.find().sort("_id", -1).hint([("_id", 1)]).batch_size(100)]
    assert got == list(range(999, -1, -1)), got[:5]
    assert rec.names.count("getMore") == 9, rec.names
    got = list(coll.find({"x": {"$gte": 5}, "_id": {"$lt": 30}}, {"x": 1}).sort("_id", 1).skip(2).limit(3))
    assert got == [{"_id": 12, "x": 5}, {"_id": 13, "x": 6}, {"_id": 19, "x": 5}], got
    assert [d["_id"] for d in coll.find({"_id": {"$in": [3, 5, 2000]}})] == [3, 5]
    assert coll.find_one({"s": {"$exists": False}}) is None
    assert coll.count_documents({}) == 1000
    assert coll.count_documents({"x": 3}) == len([i for i in range(1000) if i % 7 == 3])
    assert coll.count_documents({"x": 3}, skip=10, limit=5) == 5
    assert coll.estimated_document_count() == 1000
    # The default first batch is 101 documents.
    rec.replies.clear()
    list(coll.find())
    batches = [len(r["cursor"].get("firstBatch", r["cursor"].get("nextBatch", []))) for r in rec.replies if "cursor" in r]
    assert batches == [101, 899], batches
    e = expect_failure(2, lambda: list(coll.find().hint("no_such_index")))
    assert "hint provided does not correspond to an existing index" in e.details["errmsg"]


@check("cursor close sends killCursors; the cursor is gone (CursorNotFound 43)")
def kill_cursors(srv):
    rec = Recorder()
    c = srv.client(event_listeners=[rec])
    coll = c.kill.c
    coll.insert_many([{"_id": i} for i in range(50)])
    cur = coll.find().batch_size(10)
    cur.next()
    cid = cur.cursor_id
    assert cid
    e = expect_failure(2, c.kill.command, "getMore", Int64(cid), collection="c", maxTimeMS=100)
    assert e.details["errmsg"] == "cannot set maxTimeMS on getMore command for a non-awaitData cursor", e.details
    cur.close()
    assert "killCursors" in rec.names, rec.names
    e = expect_failure(43, c.kill.command, "getMore", Int64(cid), collection="c")
    assert e.details["errmsg"] == f"cursor id {cid} not found", e.details
    r = c.kill.command("killCursors", "c", cursors=[Int64(cid)])
    assert r["cursorsNotFound"] == [cid], r


@check("create_index, index_information, drop_index, list_indexes on a missing collection")
def indexes(srv):
    c = srv.client()
    coll = c.idx.c
    coll.insert_one({"a": 1, "b": 2})
    assert coll.create_index([("a", 1), ("b", -1)], unique=True) == "a_1_b_-1"
    assert coll.create_index("b", name="by_b") == "by_b"
    info = coll.index_information()
    assert info["_id_"] == {"v": 2, "key": [("_id", 1)]}, info
    assert info["a_1_b_-1"] == {"v": 2, "key": [("a", 1), ("b", -1)], "unique": True}, info
    e = expect_failure(11000, coll.insert_one, {"a": 1, "b": 2})
    assert e.details["errmsg"] == "E11000 duplicate key error collection: idx.c index: a_1_b_-1 dup key: { a: 1, b: 2 }", e.details
    assert e.details["keyPattern"] == {"a": 1, "b": -1} and e.details["keyValue"] == {"a": 1, "b": 2}, e.details
    coll.insert_many([{"z": 1, "a": 5}, {"z": 1, "a": 6}])  # missing fields index as null
    e = expect_failure(11000, coll.create_index, "z", unique=True)
    assert e.details["errmsg"].startswith("Index build failed: "), e.details
    assert e.details["errmsg"].endswith("E11000 duplicate key error collection: idx.c index: z_1 dup key: { z: 1 }"), e.details
    assert "z_1" not in coll.index_information()
    coll.create_index("s", unique=True, sparse=True)  # documents without s are left out
    again = c.idx.command("createIndexes", "c", indexes=[{"key": {"b": 1}, "name": "by_b"}])
    assert again["note"] == "all indexes already exist", again
    coll.drop_index("by_b")
    assert sorted(coll.index_information()) == ["_id_", "a_1_b_-1", "s_1"]
    assert list(c.idx.nothing.list_indexes()) == []  # pymongo hides NamespaceNotFound
    e = expect_failure(26, c.idx.command, "listIndexes", "nothing")
    assert e.details["errmsg"] == "ns does not exist: idx.nothing"
    e = expect_failure(27, coll.drop_index, "nope")
    assert e.details["codeName"] == "IndexNotFound"


@check("update ($set/$unset/$inc, replacement, upsert) and delete")
def updates(srv):
    c = srv.client()
    coll = c.upd.c
    coll.insert_many([{"_id": 1, "a": 1, "b": "x"}, {"_id": 2, "a": 2}])
    r = coll.update_one({"_id": 1}, {"$set": {"c.d": 5}, "$unset": {"b": ""}, "$inc": {"a": 10}})
    assert (r.matched_count, r.modified_count) == (1, 1)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": 11, "c": {"d": 5}}
    r = coll.replace_one({"_id": 2}, {"z": True})
    assert coll.find_one({"_id": 2}) == {"_id": 2, "z": True}
    r = coll.update_one({"_id": 3}, {"$set": {"a": 3}}, upsert=True)
    assert r.upserted_id == 3 and coll.find_one({"_id": 3}) == {"_id": 3, "a": 3}
    r = coll.update_many({}, {"$set": {"all": 1}})
    assert r.matched_count == 3 and r.modified_count == 3
    r = coll.update_one({"_id": 1}, {"$set": {"all": 1}})
    assert (r.matched_count, r.modified_count) == (1, 0)
    e = expect_failure(66, coll.update_one, {"_id": 1}, {"$set": {"_id": 9}})
    assert "would modify the immutable field '_id'" in e.details["errmsg"], e.details
    assert coll.delete_one({"all": 1}).deleted_count == 1
    assert coll.delete_many({}).deleted_count == 2
    assert coll.count_documents({}) == 0
    c.upd.drop_collection("c")
    assert "c" not in c.upd.list_collection_names()
    c.drop_database("upd")
    assert "upd" not in c.list_database_names()


def typed_documents():
    return [
        {"_id": ObjectId(), "i32": 1, "i64": Int64(1), "dbl": 1.0, "neg0": -0.0, "nan": float("nan"),
         "dec": Decimal128("1.10"), "s": "héllo ✓", "t": True, "n": None,
         "d": datetime.datetime(2024, 1, 2, 3, 4, 5, 678000),
         "ts": Timestamp(1700000000, 7), "re": Regex("^a.*b$", "im"),
         "bin0": Binary(b"\x00\x01\x02", 0), "bin4": Binary(uuid.uuid4().bytes, 4), "bin128": Binary(b"x", 128),
         "code": Code("function(){}"), "min": MinKey(), "max": MaxKey(),
         "nested": {"z": 1, "a": [1, "two", {"three": 3.0}], "e": {}}, "arr": []},
        {"_id": "string id", "b": {"b": {"b": {"b": [[], [[]]]}}}},
        {"_id": {"compound": 1, "key": "k"}, "x": 1},
        {"_id": 7.5},
    ]


@check("documents round-trip byte for byte (RawBSONDocument)")
def round_trip(srv):
    c = srv.client()
    opts = CodecOptions(document_class=RawBSONDocument, uuid_representation=4)
    coll = c.raw.get_collection("c", codec_options=opts)
    raws = [RawBSONDocument(bson.encode(d)) for d in typed_documents()]
    coll.insert_many(raws)
    back = list(coll.find())
    assert len(back) == len(raws)
    for want, got in zip(raws, back):
        assert want.raw == got.raw, (want.raw, got.raw)
    # A document whose _id is not its first field comes back with _id first,
    # as mongod stores it.
    coll.insert_one(RawBSONDocument(bson.encode({"a": 1, "_id": 99})))
    assert coll.find_one({"_id": 99}).raw == bson.encode({"_id": 99, "a": 1})


@check("documents over 16 MiB: DocumentTooLarge in pymongo, BSONObjectTooLarge 10334 from the server")
def too_large(srv):
    c = srv.client()
    coll = c.big.c
    big = {"_id": 1, "x": "a" * (16 * 1024 * 1024)}
    doc = bson.encode(big)
    # pymongo sends a document up to maxBsonObjectSize + 16 KiB; the server
    # refuses it as a write error.
    e = expect_failure(10334, coll.insert_one, big)
    assert e.details["errmsg"] == f"object to insert too large. size in bytes: {len(doc)}, max size: 16777216", e.details
    try:
        coll.insert_one({"_id": 1, "x": "a" * (17 * 1024 * 1024)})
        raise AssertionError("pymongo sent a document over maxBsonObjectSize + 16 KiB")
    except DocumentTooLarge:
        pass
    # The same over a raw socket, and past the parser's own limit.
    reply = raw_command(srv.port, {"insert": "c", "$db": "big"}, ("documents", [doc]))
    assert reply["ok"] == 1.0, reply
    we = reply["writeErrors"][0]
    assert we["code"] == 10334 and we["index"] == 0, we
    assert we["errmsg"] == f"object to insert too large. size in bytes: {len(doc)}, max size: 16777216", we
    huge = bson.encode({"_id": 2, "x": "a" * (17 * 1024 * 1024)})
    reply = raw_command(srv.port, {"insert": "c", "$db": "big"}, ("documents", [huge]))
    assert reply["ok"] == 0.0 and reply["code"] == 10334 and reply["codeName"] == "BSONObjectTooLarge", reply
    assert coll.count_documents({}) == 0
    # A message over maxMessageSizeBytes: the server closes the connection.
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(struct.pack("<iiii", 48000001, 1, 0, 2013))
    s.settimeout(5)
    assert s.recv(1) == b"", "the connection stays open"
    s.close()


def raw_command(port, body, sequence=None, flags=0):
    """Sends one OP_MSG (kind 0 body, optional kind 1 sequence) and returns
    the reply's body."""
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
    if sequence:
        ident, docs = sequence
        inner = ident.encode() + b"\x00" + b"".join(docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(inner)) + inner
    msg = struct.pack("<iiii", 16 + len(payload), 7, 0, 2013) + payload
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(30)
    s.sendall(msg)
    header = recv_exact(s, 16)
    length, _, response_to, op = struct.unpack("<iiii", header)
    assert response_to == 7 and op == 2013, (response_to, op)
    rest = recv_exact(s, length - 16)
    s.close()
    assert rest[4] == 0
    return bson.decode(rest[5:])


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise AssertionError("connection closed")
        buf += chunk
    return buf


@check("OP_MSG with checksumPresent and moreToCome")
def op_msg_flags(srv):
    body = bson.encode({"ping": 1, "$db": "admin"})
    payload = struct.pack("<I", 1) + b"\x00" + body
    header = struct.pack("<iiii", 16 + len(payload) + 4, 9, 0, 2013)
    crc = crc32c(header + payload)
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.settimeout(10)
    s.sendall(header + payload + struct.pack("<I", crc))
    h = recv_exact(s, 16)
    length = struct.unpack("<i", h[:4])[0]
    rest = recv_exact(s, length - 16)
    assert bson.decode(rest[5:])["ok"] == 1.0
    # moreToCome: an unacknowledged insert gets no reply; the next command does.
    ins = bson.encode({"insert": "c", "documents": [{"_id": 1}], "writeConcern": {"w": 0}, "$db": "w0"})
    p2 = struct.pack("<I", 2) + b"\x00" + ins
    s.sendall(struct.pack("<iiii", 16 + len(p2), 10, 0, 2013) + p2)
    p3 = struct.pack("<I", 0) + b"\x00" + bson.encode({"count": "c", "$db": "w0"})
    s.sendall(struct.pack("<iiii", 16 + len(p3), 11, 0, 2013) + p3)
    h = recv_exact(s, 16)
    length, _, response_to, _ = struct.unpack("<iiii", h)
    assert response_to == 11, response_to
    rest = recv_exact(s, length - 16)
    assert bson.decode(rest[5:])["n"] == 1
    s.close()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@check("snappy compression (when python-snappy is importable)")
def snappy(srv):
    try:
        import snappy  # noqa: F401
    except ImportError:
        print("     (python-snappy is not installed: compression checked in Rust only)")
        return
    c = srv.client(compressors="snappy")
    c.comp.c.insert_many([{"_id": i, "s": "x" * 100} for i in range(200)])
    assert len(list(c.comp.c.find())) == 200


# ---------------------------------------------------------------------------
# Replica set

@check("replica set: hello fields, replicaSet=rs0 discovery, replSetGetStatus")
def replset(srv):
    c = srv.client(replicaSet="rs0")
    c.admin.command("ping")
    assert c.primary == ("127.0.0.1", srv.port), c.primary
    hello = c.admin.command("hello")
    assert hello["setName"] == "rs0" and hello["hosts"] == [f"127.0.0.1:{srv.port}"]
    assert hello["primary"] == hello["me"] == f"127.0.0.1:{srv.port}"
    assert isinstance(hello["lastWrite"]["opTime"]["ts"], Timestamp)
    assert isinstance(hello["electionId"], ObjectId)
    conf = c.admin.command("replSetGetConfig")["config"]
    assert conf["_id"] == "rs0" and conf["members"][0]["host"] == f"127.0.0.1:{srv.port}", conf
    assert c.local["system.replset"].find_one() == conf
    st = c.admin.command("replSetGetStatus")
    assert st["set"] == "rs0" and st["members"][0]["stateStr"] == "PRIMARY"
    assert "$clusterTime" in hello and "operationTime" in hello


class Heartbeats(monitoring.ServerHeartbeatListener):
    def __init__(self):
        self.started_count = 0
        self.awaited = 0

    def started(self, event):
        self.started_count += 1
        self.awaited += bool(event.awaited)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


@check("monitoring: awaitable hello with exhaustAllowed streams heartbeats at maxAwaitTimeMS")
def heartbeats(srv):
    hb = Heartbeats()
    c = srv.client(replicaSet="rs0", heartbeatFrequencyMS=500, event_listeners=[hb])
    c.admin.command("ping")
    time.sleep(2.2)
    c.close()
    # A server that answered at once would see thousands.
    assert 3 <= hb.started_count <= 12, hb.started_count
    assert hb.awaited >= 2, (hb.started_count, hb.awaited)


@check("oplog entries are shaped like MongoDB 7.0's")
def oplog_shape(srv):
    c = srv.client(replicaSet="rs0")
    oplog = c.local["oplog.rs"]
    start = oplog.find().sort("$natural", -1).limit(1).next()["ts"]
    coll = c.op.c
    coll.insert_one({"_id": 1, "a": 1})
    coll.update_one({"_id": 1}, {"$set": {"a": 2, "b": 1}, "$unset": {"zz": 1}})
    coll.replace_one({"_id": 1}, {"r": 1})
    coll.delete_one({"_id": 1})
    coll.create_index("r")
    c.op.drop_collection("c")
    entries = list(oplog.find({"ts": {"$gt": start}}))
    ops = [(e["op"], e["ns"]) for e in entries]
    assert ops == [("c", "op.$cmd"), ("i", "op.c"), ("u", "op.c"), ("u", "op.c"), ("d", "op.c"),
                   ("c", "op.$cmd"), ("c", "op.$cmd")], ops
    create, ins, upd, rep, dele, cidx, drop = entries
    # pymongo's writes are retryable: the entries carry the session.
    assert list(ins) == ["lsid", "txnNumber", "op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall", "stmtId",
                         "prevOpTime"], list(ins)
    assert ins["lsid"]["uid"] == hashlib.sha256(b"").digest(), ins["lsid"]
    assert isinstance(ins["lsid"]["id"], uuid.UUID) and ins["stmtId"] == 0
    assert ins["prevOpTime"] == {"ts": Timestamp(0, 0), "t": -1}, ins["prevOpTime"]
    assert "lsid" not in create and "lsid" not in cidx
    assert ins["o"] == {"_id": 1, "a": 1} and ins["o2"] == {"_id": 1}
    assert isinstance(ins["ui"], uuid.UUID) and ins["t"] == 1 and isinstance(ins["t"], int)
    assert ins["v"] == 2 and isinstance(ins["wall"], datetime.datetime)
    assert upd["o"] == {"$v": 2, "diff": {"u": {"a": 2}, "i": {"b": 1}}}, upd["o"]
    assert upd["o2"] == {"_id": 1}
    assert rep["o"] == {"_id": 1, "r": 1}, rep["o"]
    assert dele["o"] == {"_id": 1} and "o2" not in dele
    assert create["o"]["create"] == "c" and create["o"]["idIndex"]["name"] == "_id_"
    assert cidx["o"] == {"createIndexes": "c", "v": 2, "key": {"r": 1}, "name": "r_1"}, cidx["o"]
    assert drop["o"] == {"drop": "c"} and drop["ui"] == ins["ui"]
    many = c.op.m
    many.insert_many([{"_id": i} for i in range(3)])
    batch = list(oplog.find({"ns": "op.m", "op": "i"}))
    assert [e["stmtId"] for e in batch] == [0, 1, 2], batch
    assert batch[1]["prevOpTime"]["ts"] == batch[0]["ts"] and batch[2]["prevOpTime"]["ts"] == batch[1]["ts"]
    assert len({e["txnNumber"] for e in batch}) == 1
    plain = srv.client(replicaSet="rs0", retryWrites=False)
    plain.op.m.insert_one({"_id": 9})
    last = oplog.find().sort("$natural", -1).limit(1).next()
    assert list(last) == ["op", "ns", "ui", "o", "o2", "ts", "t", "v", "wall"], list(last)
    tss = [e["ts"] for e in entries]
    assert all(a < b for a, b in zip(tss, tss[1:])), tss
    # The collection's uuid is the one listCollections reported.
    coll.insert_one({"_id": 2})
    info = c.op.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"][0]
    last = oplog.find().sort("$natural", -1).limit(1).next()
    assert last["ui"] == info["info"]["uuid"].as_uuid()


@check("tailable awaitData cursor on local.oplog.rs sees new writes")
def tail_oplog(srv):
    c = srv.client(replicaSet="rs0")
    oplog = c.local["oplog.rs"]
    last = oplog.find().sort("$natural", -1).limit(1).next()["ts"]
    cur = oplog.find({"ts": {"$gt": last}}, cursor_type=pymongo.CursorType.TAILABLE_AWAIT).max_await_time_ms(500)

    def writer():
        time.sleep(0.3)
        w = srv.client(replicaSet="rs0")
        for i in range(3):
            w.tail.c.insert_one({"_id": i})
            time.sleep(0.1)

    t = threading.Thread(target=writer)
    t.start()
    seen = []
    deadline = time.time() + 10
    while len([e for e in seen if e["op"] == "i"]) < 3 and time.time() < deadline and cur.alive:
        for e in cur:
            seen.append(e)
    t.join()
    inserts = [e["o"]["_id"] for e in seen if e["op"] == "i" and e["ns"] == "tail.c"]
    assert inserts == [0, 1, 2], seen
    assert cur.alive
    cur.close()
    e = expect_failure(2, lambda: list(c.tail.c.find(cursor_type=pymongo.CursorType.TAILABLE)))
    assert "tailable cursor requested on non capped collection" in e.details["errmsg"]


@check("applyOps replays oplog entries (i, u with $v:2 diff, d, c)")
def apply_ops(srv):
    c = srv.client(replicaSet="rs0")
    ops = [
        {"op": "c", "ns": "ap.$cmd", "o": {"create": "c"}},
        {"op": "i", "ns": "ap.c", "o": {"_id": 1, "a": 1, "b": {"x": 1}}},
        {"op": "i", "ns": "ap.c", "o": {"_id": 2}},
        {"op": "u", "ns": "ap.c", "o2": {"_id": 1}, "o": {"$v": 2, "diff": {"u": {"a": 5}, "i": {"n": 1}, "sb": {"i": {"y": 2}}}}},
        {"op": "u", "ns": "ap.c", "o2": {"_id": 2}, "o": {"$set": {"s": 1}}},
        {"op": "d", "ns": "ap.c", "o": {"_id": 2}},
        {"op": "c", "ns": "ap.$cmd", "o": {"createIndexes": "c", "v": 2, "key": {"a": 1}, "name": "a_1"}},
        {"op": "n", "ns": "", "o": {"msg": "noop"}},
        # Replaying an insert that is already there upserts it.
        {"op": "i", "ns": "ap.c", "o": {"_id": 3}},
        {"op": "i", "ns": "ap.c", "o": {"_id": 3, "again": True}},
        {"op": "c", "ns": "ap.$cmd", "o": {"collMod": "c", "validator": {"a": {"$exists": True}}}},
        # A transaction's commit: its operations inside one entry.
        {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [
            {"op": "i", "ns": "ap.t", "o": {"_id": "x"}},
            {"op": "u", "ns": "ap.c", "o2": {"_id": 3}, "o": {"$v": 2, "diff": {"d": {"again": False}}}},
        ]}},
    ]
    r = c.admin.command("applyOps", ops)
    assert r["applied"] == len(ops) and r["results"] == [True] * len(ops), r
    assert list(c.ap.c.find()) == [{"_id": 1, "a": 5, "b": {"x": 1, "y": 2}, "n": 1}, {"_id": 3}]
    assert "a_1" in c.ap.c.index_information()
    assert list(c.ap.t.find()) == [{"_id": "x"}]
    # A failing operation: the error, with what was applied before it.
    bad = [{"op": "i", "ns": "ap.c", "o": {"_id": 10}},
           {"op": "u", "ns": "ap.nothing", "o2": {"_id": 1}, "o": {"$set": {"a": 1}}}]
    e = expect_failure(26, c.admin.command, "applyOps", bad, alwaysUpsert=False)
    assert e.details["applied"] == 1 and e.details["results"] == [True, False], e.details
    assert c.ap.c.find_one({"_id": 10}) == {"_id": 10}
    assert c.ap.list_collections(filter={"name": "c"}).next()["options"] == {"validator": {"a": {"$exists": True}}}


@check("capped oplog: the oldest entries fall off, a resume point before them is detectable")
def capped_oplog(srv):
    c = srv.client(replicaSet="rs0")
    oplog = c.local["oplog.rs"]
    c.cap.c.insert_one({"_id": 0})
    first_ts = oplog.find({"op": "i", "ns": "cap.c"}).next()["ts"]
    c.cap.c.insert_many([{"_id": i} for i in range(1, 30)])
    assert oplog.estimated_document_count() == 10, oplog.estimated_document_count()
    got = list(oplog.find({"ts": {"$gte": first_ts}}))
    assert got[0]["ts"] > first_ts
    assert got[-1]["o"]["_id"] == 29


# ---------------------------------------------------------------------------
# Authentication

@check("SCRAM-SHA-256 and SCRAM-SHA-1 log in; a wrong password fails with code 18")
def auth_mechanisms(srv):
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", None):
        kw = {"authMechanism": mech} if mech else {}
        c = srv.client(username="root", password="secret", authSource="admin", **kw)
        assert c.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"] == [{"user": "root", "db": "admin"}]
        c.close()
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        c = srv.client(username="root", password="wrong", authSource="admin", authMechanism=mech)
        e = expect_failure(18, c.admin.command, "ping")
        assert e.details["errmsg"] == "Authentication failed.", e.details
        assert e.details["codeName"] == "AuthenticationFailed"
    hello = srv.client().admin.command("hello", saslSupportedMechs="admin.root")
    assert hello["saslSupportedMechs"] == ["SCRAM-SHA-1", "SCRAM-SHA-256"], hello


@check("authorization: unauthenticated (13), unauthorized find (13), roles")
def authorization(srv):
    anon = srv.client()
    e = expect_failure(13, lambda: list(anon.db1.c.find()))
    assert e.details["errmsg"] == "Command find requires authentication", e.details
    root = srv.client(username="root", password="secret")
    root.db1.c.insert_one({"_id": 1})
    root.db2.c.insert_one({"_id": 1})
    reader = srv.client(username="reader", password="pw", authSource="admin")
    assert list(reader.db1.c.find()) == [{"_id": 1}]
    e = expect_failure(13, lambda: list(reader.db2.c.find()))
    msg = e.details["errmsg"]
    assert msg.startswith('not authorized on db2 to execute command { find: "c"'), msg
    assert e.details["codeName"] == "Unauthorized"
    e = expect_failure(13, reader.db1.c.insert_one, {"_id": 2})
    assert reader.list_database_names() == ["db1"], reader.list_database_names()
    backup = srv.client(username="backup", password="pw")
    users = list(backup.admin["system.users"].find())
    root_doc = [u for u in users if u["_id"] == "admin.root"][0]
    assert root_doc["user"] == "root" and root_doc["db"] == "admin"
    creds = root_doc["credentials"]
    assert creds["SCRAM-SHA-1"]["iterationCount"] == 10000
    assert creds["SCRAM-SHA-256"]["iterationCount"] == 15000
    assert set(creds["SCRAM-SHA-256"]) == {"iterationCount", "salt", "storedKey", "serverKey"}
    assert root_doc["roles"] == [{"role": "root", "db": "admin"}]
    assert len(list(backup.local["oplog.rs"].find().limit(1))) == 1
    expect_failure(13, lambda: list(reader.admin["system.users"].find()))
    # A user written into admin.system.users (as a restore does) logs in.
    salt = os.urandom(28)
    salted = hashlib.pbkdf2_hmac("sha256", b"restored-pw", salt, 15000)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    cred = {"iterationCount": 15000, "salt": base64.b64encode(salt).decode(),
            "storedKey": base64.b64encode(hashlib.sha256(client_key).digest()).decode(),
            "serverKey": base64.b64encode(hmac.new(salted, b"Server Key", "sha256").digest()).decode()}
    root.admin["system.users"].insert_one({"_id": "admin.restored", "userId": Binary(os.urandom(16), 4),
                                           "user": "restored", "db": "admin",
                                           "credentials": {"SCRAM-SHA-256": cred},
                                           "roles": [{"role": "read", "db": "db2"}]})
    restored = srv.client(username="restored", password="restored-pw", authMechanism="SCRAM-SHA-256")
    assert list(restored.db2.c.find()) == [{"_id": 1}]
    expect_failure(13, lambda: list(restored.db1.c.find()))
    wrong = srv.client(username="restored", password="nope", authMechanism="SCRAM-SHA-256")
    expect_failure(18, wrong.admin.command, "ping")


@check("TLS: pymongo with tls=True and the server's CA; without TLS nothing answers")
def tls(srv, ca):
    c = srv.client(tls=True, tlsCAFile=ca)
    assert c.admin.command("ping")["ok"] == 1.0
    c.tls.c.insert_one({"_id": 1})
    assert c.tls.c.find_one() == {"_id": 1}
    plain = srv.client(serverSelectionTimeoutMS=1000)
    try:
        plain.admin.command("ping")
        raise AssertionError("plain TCP got an answer from the TLS port")
    except pymongo.errors.ServerSelectionTimeoutError:
        pass


def main():
    srv = Server("--compressors", "snappy")
    try:
        for fn in (handshake, unknown_command, collections, duplicates, find_batches, kill_cursors, indexes,
                   updates, round_trip, too_large, op_msg_flags, snappy):
            fn(srv)
    finally:
        srv.stop()
    srv = Server("--replset", "rs0")
    try:
        for fn in (replset, heartbeats, oplog_shape, tail_oplog, apply_ops):
            fn(srv)
    finally:
        srv.stop()
    srv = Server("--replset", "rs0", "--oplog-max-entries", "10")
    try:
        capped_oplog(srv)
    finally:
        srv.stop()
    srv = Server("--replset", "rs0", "--user", "admin:root:secret:root@admin",
                 "--user", "admin:reader:pw:read@db1", "--user", "admin:backup:pw:backup@admin")
    try:
        auth_mechanisms(srv)
        authorization(srv)
    finally:
        srv.stop()
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        srv = Server("--tls-cert", cert, "--tls-key", key)
        try:
            tls(srv, cert)
        finally:
            srv.stop()
    failed = [n for n, e in RESULTS if e]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed (pymongo {pymongo.version})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

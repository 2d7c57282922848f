"""Compares what coffer's mongodb plugin backed up and restored with the
source server, through pymongo's own BSON decoder: for each namespace, the
source's documents in _id order (as raw BSON through pymongo), the
documents of the restored mongodump file, and the restored server's
documents must be the same bytes, and every one must decode fully.

usage: pymongo_compare.py SOURCE_URL RESTORED_URL DUMP_DIR DB.COLL...
"""

import sys

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

RAW = CodecOptions(document_class=RawBSONDocument)


def server_docs(client, ns):
    db, coll = ns.split(".", 1)
    c = client.get_database(db, codec_options=RAW)[coll]
    return [d.raw for d in c.find({}, sort=[("_id", 1)])]


def file_docs(path):
    with open(path, "rb") as f:
        return [d.raw for d in bson.decode_file_iter(f, codec_options=RAW)]


def main():
    src_url, dst_url, dump_dir, *namespaces = sys.argv[1:]
    src = MongoClient(src_url, directConnection=True, serverSelectionTimeoutMS=5000)
    dst = MongoClient(dst_url, directConnection=True, serverSelectionTimeoutMS=5000)
    total = 0
    for ns in namespaces:
        db, coll = ns.split(".", 1)
        want = server_docs(src, ns)
        dumped = file_docs(f"{dump_dir}/{db}/{coll}.bson")
        restored = server_docs(dst, ns)
        for name, got in (("the dump file", dumped), ("the restored server", restored)):
            if got != want:
                diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                print(f"FAIL {ns}: {name} holds {len(got)} documents, the source {len(want)}; first difference at {diff}")
                sys.exit(1)
        for raw in want:
            bson.decode(raw)  # every field, through pymongo's decoder
        total += len(want)
    print(f"{total} documents in {len(namespaces)} namespaces equal through pymongo")


if __name__ == "__main__":
    main()

//! Targets for the `mongodb` plugin's readers: `mongodump --archive` files
//! (streamed in reads of any size, planned, and copied one collection at a
//! time), and the `.bson` files inside them.

use std::io::Cursor;

use coffer_fuzz_formats::archive::{self, ArchiveEvent, ArchiveReader, ArchiveWriter};

use crate::{Pieces, control};

/// Each namespace (database, collection) with its documents' bytes, in
/// order of first appearance.
type Documents = Vec<((String, String), Vec<u8>)>;

/// Every event of an archive read in pieces of `piece` bytes, as
/// (namespace, its documents' bytes) in order of first appearance, and
/// whether the archive was whole.
fn stream(data: &[u8], piece: usize) -> Option<(Documents, bool)> {
    let mut r = ArchiveReader::new(Pieces { data, piece }, "fuzz").ok()?;
    let mut out: Documents = Vec::new();
    let mut current = 0;
    loop {
        match r.next_event() {
            Ok(None) => return Some((out, true)),
            Err(_) => return Some((out, false)),
            Ok(Some(ArchiveEvent::Begin { db, collection, .. })) => {
                let ns = (db.to_string(), collection.to_string());
                current = match out.iter().position(|(n, _)| *n == ns) {
                    Some(i) => i,
                    None => {
                        out.push((ns, Vec::new()));
                        out.len() - 1
                    }
                };
            }
            Ok(Some(ArchiveEvent::Document { bytes, .. })) => out[current].1.extend_from_slice(bytes),
            Ok(Some(ArchiveEvent::End { .. })) => {}
        }
    }
}

/// A mongodump archive after a control byte (its low 6 bits + 1 are the
/// size of the reads). The streaming reader and the plan read the same
/// documents whatever the size of the reads; copying each namespace out of
/// the plan gives them back; an archive read whole is written again, and
/// the copy reads back to the same documents.
pub(crate) fn archive(data: &[u8]) {
    let Some((c, file)) = control(data) else { return };
    let piece = usize::from(c & 0x3f) + 1;
    let Some((streamed, whole)) = stream(file, piece) else {
        assert!(archive::plan_reader(file, "fuzz").is_err(), "a plan of an archive whose prelude the reader refuses");
        return;
    };
    let Some((in_one, whole_in_one)) = stream(file, file.len().max(1)) else {
        panic!("the prelude reads in pieces but not whole");
    };
    assert_eq!((&streamed, whole), (&in_one, whole_in_one), "the documents depend on the size of the reads");
    let plan = archive::plan_reader(file, "fuzz").expect("the prelude read above");
    assert_eq!(plan.damage.is_none(), whole, "the plan and the reader disagree on the damage");
    for ((db, coll), docs) in &streamed {
        let n = plan.namespaces.iter().find(|n| n.db == *db && n.collection == *coll).expect("planned");
        let mut out = Vec::new();
        let stats = archive::copy_collection(&mut Cursor::new(file), &plan, n, &mut out).expect("planned");
        assert_eq!(out, *docs, "{db}.{coll}: copied out of the plan, other documents than streamed");
        assert_eq!(stats.bytes, docs.len() as u64);
    }
    if !whole {
        return;
    }
    // Written again, one segment per namespace: the same documents.
    let prelude = &plan.prelude;
    if archive::parse_server_version(&prelude.header.server_version).is_none() {
        return;
    }
    let Ok(mut w) = ArchiveWriter::new(Vec::new(), "copy", &prelude.header, &prelude.collections) else { return };
    let mut written = Vec::new();
    for ((db, coll), docs) in &streamed {
        // Namespaces the prelude does not list are refused, and a
        // time-series collection's blocks may take the other of its names.
        let Ok(w) = w.write_collection(db, coll, &docs[..]) else { return };
        written.push(((w.db, w.collection), docs));
    }
    let Ok((copy, _)) = w.finish() else { return };
    let Some((again, again_whole)) = stream(&copy, copy.len().max(1)) else { panic!("the copy's prelude is refused") };
    assert!(again_whole, "the copy of a whole archive is not whole");
    for (ns, docs) in written {
        let got = again.iter().find(|(n, _)| *n == ns).map(|(_, d)| d);
        assert_eq!(got, Some(docs), "{ns:?}: the copy has other documents");
    }
}

//! `hnsw_verify(index)`: checks the stored graph's invariants and reports what it finds,
//! for DBAs after a crash or a vacuum, and for the tests.

use super::page::{self, read_meta, Buffer};
use ragtune_core::hnsw::tuple::{parse_chunk, Element, Tid, CHUNK, ELEMENT};
use ragtune_core::error::{Error, ErrorKind};
use crate::pg::error::OrRaise;
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet, VecDeque};

struct Node {
    level: usize,
    deleted: bool,
    heap_tids: usize,
    neighbors: Vec<Vec<Tid>>,
}

/// Summary of the graph and the list of problems found (empty when healthy).
#[pg_extern(sql = false)]
fn hnsw_verify(
    index: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(elements, i64),
        name!(deleted, i64),
        name!(heap_tids, i64),
        name!(edges, i64),
        name!(unreachable, i64),
        name!(problems, Vec<String>),
    ),
> {
    // SAFETY: the relation is opened with AccessShareLock and closed before returning.
    let result = unsafe {
        // The graph holds the table's vectors: only those who may read the table (or own
        // it) may inspect it. Checked before the lock, which others must not be able to take.
        let table = pg_sys::IndexGetRelation(index, true);
        if table != pg_sys::InvalidOid {
            let user = pg_sys::GetUserId();
            if !pg_sys::pg_class_ownercheck(table, user) {
                let acl = pg_sys::pg_class_aclcheck(table, user, pg_sys::ACL_SELECT as pg_sys::AclMode);
                if acl != pg_sys::AclResult::ACLCHECK_OK {
                    pg_sys::aclcheck_error(acl, pg_sys::ObjectType::OBJECT_TABLE, pg_sys::get_rel_name(table));
                }
            }
        }
        let relation = pg_sys::index_open(index, pg_sys::AccessShareLock as i32);
        let handler = pg_sys::get_am_name((*(*relation).rd_rel).relam);
        let is_hnsw = !handler.is_null() && std::ffi::CStr::from_ptr(handler).to_bytes() == b"hnsw";
        let result = if is_hnsw {
            verify(relation)
        } else {
            Err(Error::new(ErrorKind::InvalidParameterValue, "not an hnsw index"))
        };
        pg_sys::index_close(relation, pg_sys::AccessShareLock as i32);
        result.or_raise()
    };
    TableIterator::once(result)
}

unsafe fn verify(index: pg_sys::Relation) -> Result<(i64, i64, i64, i64, i64, Vec<String>), Error> {
    // SAFETY: the index is open; every page is share-locked while read.
    unsafe {
        let meta = read_meta(index)?;
        let m = usize::from(meta.m);
        let mut nodes: HashMap<Tid, Node> = HashMap::new();
        let mut chunks: HashSet<Tid> = HashSet::new();
        let mut problems = Vec::new();
        let blocks = pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
        for block in page::META_BLOCK + 1..blocks {
            pg_sys::check_for_interrupts!();
            let buffer = Buffer::read(index, block);
            buffer.lock_share();
            let page = buffer.page();
            for offset in 1..=pg_sys::PageGetMaxOffsetNumber(page) {
                let tid = Tid { block, offset };
                let Some(bytes) = page::item(page, offset) else { continue };
                match bytes.first() {
                    Some(&ELEMENT) => match Element::parse(bytes, m) {
                        Some(element) => {
                            let neighbors = (0..=element.level()).map(|l| element.neighbors(l).collect()).collect();
                            nodes.insert(tid, Node {
                                level: element.level(),
                                deleted: element.is_deleted(),
                                heap_tids: element.heap_tids().count(),
                                neighbors,
                            });
                        }
                        None => problems.push(format!("malformed element at ({block},{offset})")),
                    },
                    Some(&CHUNK) if parse_chunk(bytes).is_some() => {
                        chunks.insert(tid);
                    }
                    _ => problems.push(format!("unknown tuple at ({block},{offset})")),
                }
            }
            buffer.unlock_release();
        }

        let mut edges = 0i64;
        for (&tid, node) in &nodes {
            for (layer, list) in node.neighbors.iter().enumerate() {
                let mut seen = HashSet::new();
                for &neighbor in list {
                    edges += 1;
                    if neighbor == tid {
                        problems.push(format!("({},{}) lists itself at layer {layer}", tid.block, tid.offset));
                    }
                    if !seen.insert(neighbor) {
                        problems.push(format!("({},{}) lists ({},{}) twice at layer {layer}", tid.block, tid.offset, neighbor.block, neighbor.offset));
                    }
                    match nodes.get(&neighbor) {
                        None => problems.push(format!(
                            "({},{}) links to ({},{}), which is not an element",
                            tid.block, tid.offset, neighbor.block, neighbor.offset
                        )),
                        Some(target) if target.level < layer => problems.push(format!(
                            "({},{}) links to ({},{}) at layer {layer} above that element's level",
                            tid.block, tid.offset, neighbor.block, neighbor.offset
                        )),
                        Some(target) if target.deleted && !node.deleted => problems.push(format!(
                            "({},{}) links to deleted element ({},{})",
                            tid.block, tid.offset, neighbor.block, neighbor.offset
                        )),
                        Some(_) => {}
                    }
                }
            }
        }

        let live: Vec<Tid> = nodes.iter().filter(|(_, n)| !n.deleted).map(|(&t, _)| t).collect();
        let mut unreachable = 0i64;
        if meta.entry.is_valid() {
            match nodes.get(&meta.entry) {
                None => problems.push("entry point is not an element".into()),
                Some(entry) => {
                    if entry.deleted {
                        problems.push("entry point is deleted".into());
                    }
                    if entry.level != usize::from(meta.entry_level) {
                        problems.push(format!("entry level {} differs from the entry element's level {}", meta.entry_level, entry.level));
                    }
                    if let Some(top) = live.iter().map(|t| nodes[t].level).max().filter(|&top| top > entry.level) {
                        problems.push(format!("an element has level {top}, above the entry point's"));
                    }
                    // Layer 0 must reach every live element from the entry point.
                    let mut reached = HashSet::from([meta.entry]);
                    let mut queue = VecDeque::from([meta.entry]);
                    while let Some(tid) = queue.pop_front() {
                        for &next in nodes.get(&tid).and_then(|n| n.neighbors.first()).into_iter().flatten() {
                            if reached.insert(next) {
                                queue.push_back(next);
                            }
                        }
                    }
                    unreachable = live.iter().filter(|t| !reached.contains(t)).count() as i64;
                }
            }
        } else if !live.is_empty() {
            problems.push("no entry point but live elements exist".into());
        }
        let deleted = (nodes.len() - live.len()) as i64;
        let heap_tids = nodes.values().map(|n| n.heap_tids as i64).sum();
        Ok((nodes.len() as i64, deleted, heap_tids, edges, unreachable, problems))
    }
}

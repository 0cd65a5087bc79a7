//! HNSW search and neighbour selection (Malkov & Yashunin, "Efficient and robust
//! approximate nearest neighbor search using Hierarchical Navigable Small World graphs"),
//! generic over where the graph lives: the in-memory build graph and the on-disk index
//! both implement [`GraphAccess`].

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::hash::Hash;

use crate::kernels::cosine_distance_from_terms;
use crate::types::element::VectorElement;

/// Distance the index orders by. Cosine is normally handled by the caller normalising
/// vectors and using InnerProduct (as pgvector does); Cosine stays for callers that don't.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    L2,
    InnerProduct,
    Cosine,
    L1,
}

impl Metric {
    /// Smaller is nearer: squared L2, negated dot, 1 - cosine similarity, or L1.
    #[inline]
    pub fn distance<E: VectorElement>(self, a: &[E], b: &[E]) -> f32 {
        match self {
            Metric::L2 => E::l2_squared(a, b),
            Metric::InnerProduct => -E::dot(a, b),
            Metric::Cosine => {
                let (dot, na, nb) = E::cosine_terms(a, b);
                cosine_distance_from_terms(dot, na, nb) as f32
            }
            Metric::L1 => E::l1(a, b),
        }
    }
}

/// An element and its distance from whatever the search or selection is centred on.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<Id> {
    pub distance: f32,
    pub id: Id,
}

/// Orders distances with NaN (a zero vector under cosine) after every number, so heaps
/// and sorts stay total and such elements are the first to be dropped.
#[inline]
fn cmp_distance(a: f32, b: f32) -> Ordering {
    a.partial_cmp(&b)
        .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

impl<Id: Ord> Ord for Candidate<Id> {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_distance(self.distance, other.distance).then_with(|| self.id.cmp(&other.id))
    }
}

impl<Id: Ord> PartialOrd for Candidate<Id> {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<Id: Ord> PartialEq for Candidate<Id> {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<Id: Ord> Eq for Candidate<Id> {}

/// Storage-agnostic view used by search. The on-disk implementation reads Postgres pages.
pub trait GraphAccess {
    type Id: Copy + Eq + Ord + Hash;
    /// Distance from the current query to `id`, or None if the element no longer exists
    /// (deleted/being vacuumed): such elements are skipped but their neighbours still explored.
    fn distance_to_query(&mut self, id: Self::Id) -> Option<f32>;
    /// Appends the neighbours of `id` at `layer` to `out` (out is cleared by the caller).
    fn neighbors(&mut self, id: Self::Id, layer: usize, out: &mut Vec<Self::Id>);
    /// Hint that `distance_to_query` follows shortly for each of `ids`, in their order:
    /// search announces a whole neighbour list before scoring it, so storage can overlap
    /// the cache misses instead of waiting out each in turn. Doing nothing is correct.
    fn prefetch(&mut self, _ids: &[Self::Id]) {}
}

/// The set of elements one layer search has already seen.
pub trait Visited<Id> {
    /// Forgets everything; called at the start of every layer search.
    fn clear(&mut self);
    /// Marks `id` seen; true if it was not seen before.
    fn insert(&mut self, id: Id) -> bool;
}

/// Visited set for dense u32 ids: one epoch stamp per id, so clearing is O(1) rather
/// than O(ids) and a lookup is one array access instead of a hash probe.
pub struct VisitedList {
    marks: Vec<u16>,
    epoch: u16,
}

impl VisitedList {
    pub fn new(capacity: usize) -> Self {
        Self::from_marks(vec![0; capacity])
    }

    /// Over `marks`, all zero, one per node (allocated by the caller, fallibly).
    pub fn from_marks(marks: Vec<u16>) -> Self {
        Self { marks, epoch: 1 }
    }
}

impl Visited<u32> for VisitedList {
    #[inline]
    fn clear(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        // Stamps from 65535 searches ago would now look current.
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    #[inline]
    fn insert(&mut self, id: u32) -> bool {
        let i = id as usize;
        if i >= self.marks.len() {
            self.marks.resize(i + 1, 0);
        }
        std::mem::replace(&mut self.marks[i], self.epoch) != self.epoch
    }
}

/// Reusable search state (visited set, heaps, buffers), so repeated searches allocate
/// nothing.
pub struct Searcher<Id, V> {
    visited: V,
    /// Min-heap of elements still to expand (C in the paper).
    candidates: BinaryHeap<Reverse<Candidate<Id>>>,
    /// Max-heap of the `ef` nearest found so far (W in the paper).
    nearest: BinaryHeap<Candidate<Id>>,
    neighbors: Vec<Id>,
    /// Elements without a distance whose neighbours still need exploring.
    skipped: Vec<Id>,
    /// Set by [`Searcher::search_iteratively`]: what [`Searcher::resume`] continues from.
    iteration: Option<Iteration<Id>>,
    /// Distances computed by the current query search, descent and later batches included.
    pub scored: usize,
}

/// State kept between the batches of an iterative scan.
struct Iteration<Id> {
    /// Scored elements that did not make (or fell out of) the `ef` nearest, nearest
    /// first: the next batch starts from them.
    discarded: BinaryHeap<Reverse<Candidate<Id>>>,
    /// The last batch, whose neighbours the next batch explores too (the beam may have
    /// stopped before expanding them).
    returned: Vec<Id>,
}

impl<Id: Copy + Ord, V: Visited<Id>> Searcher<Id, V> {
    pub fn new(visited: V) -> Self {
        Self {
            visited,
            candidates: BinaryHeap::new(),
            nearest: BinaryHeap::new(),
            neighbors: Vec::new(),
            skipped: Vec::new(),
            iteration: None,
            scored: 0,
        }
    }

    /// HNSW Algorithm 2 (SEARCH-LAYER): best-first beam search on one layer from
    /// already-scored `entry`, returning up to `ef` nearest found, ascending.
    pub fn search_layer<G: GraphAccess<Id = Id>>(
        &mut self,
        g: &mut G,
        entry: &[Candidate<Id>],
        ef: usize,
        layer: usize,
    ) -> Vec<Candidate<Id>> {
        self.layer_search(g, entry, &[], ef, layer, true)
    }

    /// Query search: greedy descent from `entry` to layer 1, then a beam of `ef` on
    /// layer 0. Returns up to `ef` candidates, ascending.
    pub fn search<G: GraphAccess<Id = Id>>(
        &mut self,
        g: &mut G,
        entry: Id,
        entry_level: usize,
        ef: usize,
    ) -> Vec<Candidate<Id>> {
        self.query_search(g, entry, entry_level, ef, false)
    }

    /// [`Searcher::search`] that can be continued with [`Searcher::resume`] for more
    /// results (iterative scans, for queries whose filter rejects most of the nearest).
    pub fn search_iteratively<G: GraphAccess<Id = Id>>(
        &mut self,
        g: &mut G,
        entry: Id,
        entry_level: usize,
        ef: usize,
    ) -> Vec<Candidate<Id>> {
        self.query_search(g, entry, entry_level, ef, true)
    }

    fn query_search<G: GraphAccess<Id = Id>>(
        &mut self,
        g: &mut G,
        entry: Id,
        entry_level: usize,
        ef: usize,
        iterative: bool,
    ) -> Vec<Candidate<Id>> {
        let ep = self.descend(g, entry, entry_level, 0);
        if iterative {
            // Only layer 0 feeds later batches: every element is on it.
            self.iteration = Some(Iteration { discarded: BinaryHeap::new(), returned: Vec::new() });
        }
        let found = self.layer_search(g, &ep, unscored(&ep, entry).as_slice(), ef, 0, true);
        self.remember_returned(&found);
        found
    }

    /// The next batch of up to `ef` elements not returned before, ascending within the
    /// batch (a batch may hold elements nearer than the previous batch's furthest).
    /// Starts from the nearest discarded elements and the last batch's neighbours, and
    /// never scores an element twice. Empty when the graph has nothing more to offer.
    pub fn resume<G: GraphAccess<Id = Id>>(&mut self, g: &mut G, ef: usize) -> Vec<Candidate<Id>> {
        let Some(iteration) = self.iteration.as_mut() else {
            return Vec::new();
        };
        let seeds: Vec<Candidate<Id>> =
            std::iter::from_fn(|| iteration.discarded.pop().map(|Reverse(c)| c)).take(ef.max(1)).collect();
        let explore = std::mem::take(&mut iteration.returned);
        let found = self.layer_search(g, &seeds, &explore, ef, 0, false);
        self.remember_returned(&found);
        found
    }

    fn remember_returned(&mut self, found: &[Candidate<Id>]) {
        if let Some(iteration) = self.iteration.as_mut() {
            iteration.returned.clear();
            iteration.returned.extend(found.iter().map(|c| c.id));
        }
    }

    /// Insertion search for an element of `level`: greedy descent above `level`, then a
    /// beam of `ef_construction` on each layer `min(level, entry_level)..=0`, each layer
    /// seeded with the previous layer's result. Index = layer; layers above
    /// `entry_level` are absent (the new element is alone there).
    pub fn search_for_insert<G: GraphAccess<Id = Id>>(
        &mut self,
        g: &mut G,
        entry: Id,
        entry_level: usize,
        level: usize,
        ef_construction: usize,
    ) -> Vec<Vec<Candidate<Id>>> {
        let top = level.min(entry_level);
        let mut ep = self.descend(g, entry, entry_level, top);
        let mut layers = vec![Vec::new(); top + 1];
        for layer in (0..=top).rev() {
            ep = self.layer_search(g, &ep, unscored(&ep, entry).as_slice(), ef_construction, layer, true);
            layers[layer] = ep.clone();
        }
        layers
    }

    /// Scores `entry` and walks greedily (ef = 1) down to layer `target + 1`, returning
    /// the entry set for layer `target` (empty while every element met lacked a distance).
    fn descend<G: GraphAccess<Id = Id>>(
        &mut self,
        g: &mut G,
        entry: Id,
        entry_level: usize,
        target: usize,
    ) -> Vec<Candidate<Id>> {
        self.iteration = None;
        self.scored = 1;
        let mut ep: Vec<Candidate<Id>> = g
            .distance_to_query(entry)
            .map(|distance| Candidate {
                distance,
                id: entry,
            })
            .into_iter()
            .collect();
        for layer in (target + 1..=entry_level).rev() {
            ep = self.layer_search(g, &ep, unscored(&ep, entry).as_slice(), 1, layer, true);
        }
        ep
    }

    /// Algorithm 2, also accepting `unscored` seeds (a deleted entry point, or a resumed
    /// batch) whose neighbours are explored without the seeds entering the result.
    /// `fresh` starts a new visited set; otherwise the seeds were visited before.
    fn layer_search<G: GraphAccess<Id = Id>>(
        &mut self,
        g: &mut G,
        entry: &[Candidate<Id>],
        unscored: &[Id],
        ef: usize,
        layer: usize,
        fresh: bool,
    ) -> Vec<Candidate<Id>> {
        let ef = ef.max(1);
        if fresh {
            self.visited.clear();
        }
        self.candidates.clear();
        self.nearest.clear();
        for &c in entry {
            if !fresh || self.visited.insert(c.id) {
                self.offer(c, ef);
            }
        }
        for &id in unscored {
            if !fresh || self.visited.insert(id) {
                self.skipped.push(id);
            }
        }
        self.explore_skipped(g, layer, ef);
        while let Some(Reverse(c)) = self.candidates.pop() {
            // Nothing left to expand is nearer than the furthest of the ef kept.
            if self
                .nearest
                .peek()
                .is_some_and(|f| cmp_distance(c.distance, f.distance).is_gt())
            {
                break;
            }
            let mut neighbors = std::mem::take(&mut self.neighbors);
            neighbors.clear();
            g.neighbors(c.id, layer, &mut neighbors);
            self.visit(g, &mut neighbors, ef);
            self.neighbors = neighbors;
            self.explore_skipped(g, layer, ef);
        }
        let mut found: Vec<Candidate<Id>> = self.nearest.drain().collect();
        found.sort_unstable();
        found
    }

    /// Scores the elements of `ids` not seen before (prefetching them all first), and
    /// defers those without a distance to `skipped`.
    #[inline]
    fn visit<G: GraphAccess<Id = Id>>(&mut self, g: &mut G, ids: &mut Vec<Id>, ef: usize) {
        ids.retain(|&id| self.visited.insert(id));
        g.prefetch(ids);
        self.scored += ids.len();
        for &id in ids.iter() {
            match g.distance_to_query(id) {
                Some(distance) => self.offer(Candidate { distance, id }, ef),
                None => self.skipped.push(id),
            }
        }
    }

    /// Treats skipped elements as transparent: their neighbours are visited as if they
    /// were neighbours of the element that reached them.
    fn explore_skipped<G: GraphAccess<Id = Id>>(&mut self, g: &mut G, layer: usize, ef: usize) {
        let mut buffer = Vec::new();
        while let Some(id) = self.skipped.pop() {
            buffer.clear();
            g.neighbors(id, layer, &mut buffer);
            self.visit(g, &mut buffer, ef);
        }
    }

    /// Keeps `c` if it is among the `ef` nearest so far, and queues it for expansion.
    /// An iterative search keeps what it turns away for later batches.
    #[inline]
    fn offer(&mut self, c: Candidate<Id>, ef: usize) {
        if self.nearest.len() >= ef {
            let nearer = self.nearest.peek().is_some_and(|f| cmp_distance(c.distance, f.distance).is_lt());
            let away = if nearer { self.nearest.pop().expect("ef >= 1 kept") } else { c };
            if let Some(iteration) = self.iteration.as_mut() {
                iteration.discarded.push(Reverse(away));
            }
            if !nearer {
                return;
            }
        }
        self.candidates.push(Reverse(c));
        self.nearest.push(c);
    }
}

/// The entry id to explore without a score when scoring it failed (no candidates yet).
fn unscored<Id: Copy>(ep: &[Candidate<Id>], entry: Id) -> Option<Id> {
    ep.is_empty().then_some(entry)
}

/// A neighbour with the heuristic's verdict on it within its list: `kept` if it is
/// nearer the list's owner than every kept neighbour before it (a "diverse" edge),
/// otherwise it only fills a slot the diverse ones left free.
#[derive(Clone, Copy, Debug)]
pub struct Neighbor<Id> {
    pub candidate: Candidate<Id>,
    pub kept: bool,
}

/// Whether `c` is nearer the base than to every one of `kept` (ties go against `c`, as
/// in pgvector: an equidistant kept neighbour already covers it).
fn diverse<Id: Copy>(
    c: Candidate<Id>,
    kept: impl IntoIterator<Item = Id>,
    distance_between: &mut impl FnMut(Id, Id) -> f32,
) -> bool {
    kept.into_iter()
        .all(|k| cmp_distance(distance_between(c.id, k), c.distance).is_gt())
}

fn kept_ids<Id: Copy>(list: &[Neighbor<Id>]) -> impl Iterator<Item = Id> + '_ {
    list.iter().filter(|n| n.kept).map(|n| n.candidate.id)
}

/// HNSW Algorithm 4 (SELECT-NEIGHBORS-HEURISTIC) as pgvector applies it: walk
/// `candidates` (ascending by distance to the base) keeping each one that is closer to
/// the base than to every neighbour kept so far, stopping at `m`; then fill the free
/// slots with the nearest pruned ones (keepPrunedConnections: pgvector does this too,
/// and it buys more recall per query than it costs; see `insert_neighbor` for how the
/// build keeps it cheap). At most `m` candidates come back as they are. The result is
/// ascending.
pub fn select_neighbors<Id: Copy>(
    candidates: &[Candidate<Id>],
    m: usize,
    distance_between: impl FnMut(Id, Id) -> f32,
) -> Vec<Candidate<Id>> {
    if candidates.len() <= m {
        return candidates.to_vec();
    }
    select_neighbors_marked(candidates, m, distance_between)
        .into_iter()
        .map(|n| n.candidate)
        .collect()
}

/// [`select_neighbors`] that also returns each neighbour's verdict, for
/// [`insert_neighbor`] (and runs the heuristic even on `m` or fewer candidates).
pub fn select_neighbors_marked<Id: Copy>(
    candidates: &[Candidate<Id>],
    m: usize,
    mut distance_between: impl FnMut(Id, Id) -> f32,
) -> Vec<Neighbor<Id>> {
    let mut walked: Vec<Neighbor<Id>> = Vec::with_capacity(candidates.len().min(2 * m));
    let mut kept = 0;
    for &candidate in candidates {
        if kept == m {
            break;
        }
        let is_kept = diverse(candidate, kept_ids(&walked), &mut distance_between);
        kept += usize::from(is_kept);
        walked.push(Neighbor {
            candidate,
            kept: is_kept,
        });
    }
    let mut free = m - kept;
    walked.retain(|n| {
        let fill = !n.kept && free > 0;
        free -= usize::from(fill);
        n.kept || fill
    });
    walked
}

/// Adds `new` to `list` (ascending, verdicts as [`select_neighbors_marked`] gives them)
/// so that it equals `select_neighbors_marked(list ∪ {new}, m)`: when the list
/// overflows, the furthest pruned neighbour goes (or the furthest, if none is pruned)
/// and is returned. This is pgvector's update-connections step, but instead of
/// re-running the heuristic over all m + 1 (O(m²) distances, the dominant cost of a
/// build) it re-judges only what `new` can change: `new` itself, kept neighbours after
/// it (against what became kept), and pruned ones after a kept neighbour lost its place.
pub fn insert_neighbor<Id: Copy + Ord>(
    list: &mut Vec<Neighbor<Id>>,
    new: Candidate<Id>,
    m: usize,
    mut distance_between: impl FnMut(Id, Id) -> f32,
) -> Option<Neighbor<Id>> {
    let at = list.partition_point(|n| n.candidate < new);
    let new_kept = diverse(new, kept_ids(&list[..at]), &mut distance_between);
    list.insert(
        at,
        Neighbor {
            candidate: new,
            kept: new_kept,
        },
    );
    if new_kept {
        let mut became_kept = vec![new.id];
        let mut lost_kept = false;
        for i in at + 1..list.len() {
            let n = list[i];
            let kept = if n.kept {
                // Still diverse against the old kept set minus losses; check the gains.
                diverse(
                    n.candidate,
                    became_kept.iter().copied(),
                    &mut distance_between,
                )
            } else {
                // Its pruner is still kept unless some kept neighbour lost its place.
                lost_kept && diverse(n.candidate, kept_ids(&list[..i]), &mut distance_between)
            };
            lost_kept |= n.kept && !kept;
            if kept && !n.kept {
                became_kept.push(n.candidate.id);
            }
            list[i].kept = kept;
        }
    }
    (list.len() > m).then(|| {
        let drop = list.iter().rposition(|n| !n.kept).unwrap_or(list.len() - 1);
        list.remove(drop)
    })
}

/// A graph whose layer-0 lists can be rewired so that the entry point reaches every
/// live element again ([`reconnect_unreachable`]): the in-memory build graph and the
/// stored one (after VACUUM). Live elements have positions `0..count()`.
pub trait Rewire {
    type Id: Copy + Eq;
    type Error;
    fn count(&self) -> usize;
    fn id(&self, position: usize) -> Self::Id;
    /// None for anything that is not a live element.
    fn position(&self, id: Self::Id) -> Option<usize>;
    fn entry(&self) -> Option<Self::Id>;
    /// Layer-0 list capacity.
    fn capacity(&self) -> usize;
    fn neighbors(&mut self, id: Self::Id, out: &mut Vec<Self::Id>) -> Result<(), Self::Error>;
    /// Layer-0 neighbour candidates for `id`'s vector, nearest first, found by an
    /// insertion search from the entry point (so each one is reachable).
    fn nearest(&mut self, id: Self::Id) -> Result<Vec<Candidate<Self::Id>>, Self::Error>;
    /// Adds `to` (with its distance from `from`) to `from`'s list, in place of the
    /// neighbour at `slot` (as `neighbors` listed them) or appended when None.
    fn link(&mut self, from: Self::Id, slot: Option<usize>, to: Candidate<Self::Id>) -> Result<(), Self::Error>;
    /// Called once per element walked or reconnected: where cancellation is checked.
    fn poll(&mut self) -> Result<(), Self::Error>;
    fn out_of_memory(&self) -> Self::Error;
}

/// Layer-0 reachability from the entry point, as a spanning tree: which live elements
/// are reached, the edge that first reached each (its parent), and how many edges from
/// reached elements point at each. Dropping any edge but a tree edge keeps every
/// reached element reached.
struct Reach {
    reached: Vec<bool>,
    parent: Vec<usize>,
    incoming: Vec<u32>,
}

const NO_PARENT: usize = usize::MAX;

/// A vector of `count` copies of `value`, or None when the memory is not there.
fn filled<T: Clone>(count: usize, value: T) -> Option<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(count).ok()?;
    v.resize(count, value);
    Some(v)
}

impl Reach {
    fn new(count: usize) -> Option<Self> {
        Some(Self { reached: filled(count, false)?, parent: filled(count, NO_PARENT)?, incoming: filled(count, 0)? })
    }

    /// Reaches `start` (at position `i`) and walks on from it through what was not
    /// reached yet, counting the edges of every element it newly reaches.
    fn walk_from<G: Rewire>(&mut self, g: &mut G, start: G::Id, i: usize, neighbors: &mut Vec<G::Id>) -> Result<(), G::Error> {
        self.reached[i] = true;
        let mut stack = vec![(start, i)];
        while let Some((id, at)) = stack.pop() {
            g.poll()?;
            neighbors.clear();
            g.neighbors(id, neighbors)?;
            for &next in neighbors.iter() {
                let Some(j) = g.position(next) else { continue };
                self.incoming[j] = self.incoming[j].saturating_add(1);
                if !std::mem::replace(&mut self.reached[j], true) {
                    self.parent[j] = at;
                    stack.try_reserve(1).map_err(|_| g.out_of_memory())?;
                    stack.push((next, j));
                }
            }
        }
        Ok(())
    }
}

/// Gives every live element that layer 0 does not reach from the entry point an edge
/// from the nearest reachable element that can take one: into a free slot, or in place
/// of an edge the spanning tree of reached elements does not use (so nothing reached
/// before is cut off), the one to the neighbour most other edges reach. Returns how
/// many elements stay unreachable (only when no candidate has such a slot).
///
/// Plain HNSW leaves some elements with no incoming edge from a reachable one (our
/// build at m = 2 left 3% of 5,000; VACUUM at m = 2 with half the rows deleted left
/// 99 of 101), and no search ever returns their rows.
pub fn reconnect_unreachable<G: Rewire>(g: &mut G) -> Result<usize, G::Error> {
    let count = g.count();
    let Some((entry, at)) = g.entry().and_then(|entry| Some((entry, g.position(entry)?))) else { return Ok(count) };
    let mut reach = Reach::new(count).ok_or_else(|| g.out_of_memory())?;
    let mut neighbors = Vec::new();
    reach.walk_from(g, entry, at, &mut neighbors)?;
    let unreachable: Vec<usize> = (0..count).filter(|&i| !reach.reached[i]).collect();
    for i in unreachable {
        g.poll()?;
        if reach.reached[i] {
            continue; // reached through an element reconnected before it
        }
        let id = g.id(i);
        for candidate in g.nearest(id)? {
            let Some(from) = g.position(candidate.id).filter(|&p| p != i && reach.reached[p]) else { continue };
            neighbors.clear();
            g.neighbors(candidate.id, &mut neighbors)?;
            let slot = if neighbors.len() < g.capacity() {
                None
            } else {
                // What is not a live element is no loss at all.
                let spare: Vec<Option<u32>> = neighbors
                    .iter()
                    .map(|&n| match g.position(n) {
                        None => Some(u32::MAX),
                        Some(j) if reach.parent[j] == from => None,
                        Some(j) => Some(reach.incoming[j]),
                    })
                    .collect();
                let Some(slot) = slot_for_reconnection(&spare) else { continue };
                if let Some(j) = g.position(neighbors[slot]) {
                    reach.incoming[j] -= 1;
                }
                Some(slot)
            };
            g.link(candidate.id, slot, Candidate { distance: candidate.distance, id })?;
            reach.incoming[i] += 1;
            reach.parent[i] = from;
            reach.walk_from(g, id, i, &mut neighbors)?;
            break;
        }
    }
    Ok(reach.reached.iter().filter(|&&r| !r).count())
}

/// Which slot of a full neighbour list to give to an edge that reconnects an
/// unreachable element, from what each neighbour's edge is worth: None for a tree edge
/// (the neighbour is reached through it), otherwise the edges reaching the neighbour.
/// The most-reached neighbour goes (ties: the furthest, last in the list); None when
/// every edge is a tree edge.
pub fn slot_for_reconnection(spare: &[Option<u32>]) -> Option<usize> {
    spare
        .iter()
        .enumerate()
        .filter_map(|(slot, edges)| edges.map(|edges| (slot, edges)))
        .max_by_key(|&(_, edges)| edges)
        .map(|(slot, _)| slot)
}

/// Highest layer an element may get. P(level >= 16) is m^-16, so this never binds in
/// practice; it bounds per-element storage against a pathological random draw.
pub const MAX_LEVEL: usize = 16;

/// Level for a new element: floor(-ln(u) * mL) with mL = 1/ln(m), u uniform in (0, 1],
/// capped at [`MAX_LEVEL`].
pub fn random_level(u: f64, m: usize) -> usize {
    let ml = 1.0 / (m.max(2) as f64).ln();
    let level = (-u.ln() * ml).floor();
    // u = 0 gives infinity (capped); u outside (0, 1] or NaN gives 0 or NaN (level 0).
    if level >= 0.0 {
        (level as usize).min(MAX_LEVEL)
    } else {
        0
    }
}

/// Neighbour list capacity: 2m on layer 0, m above (as pgvector).
pub fn max_neighbors(m: usize, layer: usize) -> usize {
    if layer == 0 {
        2 * m
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    // The tests' ids are plain integers; a HashSet is the simplest visited set for them.
    use std::collections::HashSet;

    impl<Id: Hash + Eq, S: std::hash::BuildHasher> Visited<Id> for HashSet<Id, S> {
        fn clear(&mut self) {
            HashSet::clear(self);
        }
        fn insert(&mut self, id: Id) -> bool {
            HashSet::insert(self, id)
        }
    }

    impl<Id: Copy + Ord + Hash> Default for Searcher<Id, HashSet<Id>> {
        fn default() -> Self {
            Self::new(HashSet::new())
        }
    }

    /// [`Searcher::search_layer`] with throwaway state.
    fn search_layer<G: GraphAccess>(
        g: &mut G,
        entry: &[Candidate<G::Id>],
        ef: usize,
        layer: usize,
    ) -> Vec<Candidate<G::Id>> {
        Searcher::default().search_layer(g, entry, ef, layer)
    }

    /// [`Searcher::search`] with throwaway state.
    fn search<G: GraphAccess>(
        g: &mut G,
        entry: G::Id,
        entry_level: usize,
        ef: usize,
    ) -> Vec<Candidate<G::Id>> {
        Searcher::default().search(g, entry, entry_level, ef)
    }

    /// [`Searcher::search_for_insert`] with throwaway state.
    fn search_for_insert<G: GraphAccess>(
        g: &mut G,
        entry: G::Id,
        entry_level: usize,
        level: usize,
        ef_construction: usize,
    ) -> Vec<Vec<Candidate<G::Id>>> {
        Searcher::default().search_for_insert(g, entry, entry_level, level, ef_construction)
    }

    fn l2(points: &[[f32; 2]]) -> impl FnMut(usize, usize) -> f32 + '_ {
        |a, b| Metric::L2.distance(&points[a], &points[b])
    }

    /// Candidates `points[1..]` around base `points[0]`, ascending.
    fn candidates(points: &[[f32; 2]]) -> Vec<Candidate<usize>> {
        let mut c: Vec<_> = (1..points.len())
            .map(|id| Candidate {
                distance: Metric::L2.distance(&points[0], &points[id]),
                id,
            })
            .collect();
        c.sort();
        c
    }

    fn ids<Id: Copy>(c: &[Candidate<Id>]) -> Vec<Id> {
        c.iter().map(|c| c.id).collect()
    }

    #[test]
    fn metric_distances() {
        let (a, b) = ([1.0f32, 0.0], [0.0f32, 2.0]);
        assert_eq!(Metric::L2.distance(&a, &b), 5.0);
        assert_eq!(Metric::InnerProduct.distance(&a, &[3.0, 1.0]), -3.0);
        assert_eq!(Metric::Cosine.distance(&a, &b), 1.0);
        assert_eq!(Metric::L1.distance(&a, &b), 3.0);
        assert!(Metric::Cosine.distance(&a, &[0.0, 0.0]).is_nan());
    }

    #[test]
    fn candidates_order_by_distance_then_id_with_nan_last() {
        let c = |distance, id| Candidate { distance, id };
        let mut v = vec![
            c(f32::NAN, 0),
            c(2.0, 1),
            c(1.0, 5),
            c(1.0, 2),
            c(f32::INFINITY, 3),
        ];
        v.sort();
        assert_eq!(ids(&v), [2, 5, 1, 3, 0]);
    }

    #[test]
    fn heuristic_keeps_diverse_neighbours_then_fills_with_pruned() {
        // Base at the origin. B sits just behind A (nearer A than the base), so it is
        // pruned; C, D and E lie in other directions.
        let points = [
            [0.0, 0.0],
            [1.0, 0.0],
            [1.1, 0.1],
            [0.0, 1.5],
            [-2.0, 0.0],
            [0.0, -2.5],
        ];
        let (a, b, c, d, e) = (1, 2, 3, 4, 5);
        let cands = candidates(&points);
        assert_eq!(ids(&cands), [a, b, c, d, e]);
        // Stops once m are kept, never looking at E.
        assert_eq!(ids(&select_neighbors(&cands, 3, l2(&points))), [a, c, d]);
        assert_eq!(ids(&select_neighbors(&cands, 4, l2(&points))), [a, c, d, e]);
        // A free slot goes to the pruned B; the result stays ascending.
        assert_eq!(
            ids(&select_neighbors(&cands, 5, l2(&points))),
            [a, b, c, d, e]
        );
        let marked = select_neighbors_marked(&cands, 5, l2(&points));
        let verdicts: Vec<bool> = marked.iter().map(|n| n.kept).collect();
        assert_eq!(verdicts, [true, false, true, true, true]);
        // m or fewer candidates come back untouched.
        assert_eq!(ids(&select_neighbors(&cands[..2], 2, l2(&points))), [a, b]);
    }

    #[test]
    fn heuristic_prunes_on_ties() {
        // Q is exactly as far from P as from the base: P covers it.
        let points = [[0.0, 0.0], [2.0, 0.0], [1.0, 2.0]];
        let cands = candidates(&points);
        let marked = select_neighbors_marked(&cands, 1, l2(&points));
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0].candidate.id, 1);
        let verdicts: Vec<bool> = select_neighbors_marked(&cands, 2, l2(&points))
            .iter()
            .map(|n| n.kept)
            .collect();
        assert_eq!(verdicts, [true, false]);
    }

    #[test]
    fn insert_neighbor_matches_full_reselection() {
        let mut rng = Rng::new(11);
        for round in 0..3000 {
            let dim = 1 + round % 4;
            let n = 2 + rng.below(30) as usize;
            let m = 1 + rng.below(12) as usize;
            let points: Vec<Vec<f32>> = (0..n).map(|_| rng.vector(dim, 1.0)).collect();
            // Coarse coordinates make distance ties common.
            let points: Vec<Vec<f32>> = if round % 3 == 0 {
                points
                    .iter()
                    .map(|p| p.iter().map(|x| (x * 2.0).round()).collect())
                    .collect()
            } else {
                points
            };
            let dist = |a: usize, b: usize| Metric::L2.distance(&points[a], &points[b]);
            let mut all: Vec<Candidate<usize>> = (1..n)
                .map(|id| Candidate {
                    distance: dist(0, id),
                    id,
                })
                .collect();
            all.sort();
            // The last candidate arrives after the list was selected from the others.
            let new = all.remove(rng.below(all.len() as u64) as usize);
            let mut list = select_neighbors_marked(&all, m, dist);
            let mut union: Vec<Candidate<usize>> = list.iter().map(|n| n.candidate).collect();
            union.push(new);
            union.sort();
            let want = select_neighbors_marked(&union, m, dist);
            let dropped = insert_neighbor(&mut list, new, m, dist).map(|n| n.candidate.id);
            let mut kept_ids: Vec<usize> = list.iter().map(|n| n.candidate.id).collect();
            kept_ids.extend(dropped);
            kept_ids.sort();
            let mut union_ids = ids(&union);
            union_ids.sort();
            assert_eq!(
                kept_ids, union_ids,
                "round {round}: dropped exactly the missing one"
            );
            let got: Vec<(usize, bool)> = list.iter().map(|n| (n.candidate.id, n.kept)).collect();
            let want: Vec<(usize, bool)> = want.iter().map(|n| (n.candidate.id, n.kept)).collect();
            assert_eq!(got, want, "round {round}");
        }
    }

    #[test]
    fn reconnection_takes_the_most_reached_neighbour_off_the_tree() {
        assert_eq!(slot_for_reconnection(&[Some(1), Some(3), Some(2), Some(3)]), Some(3));
        assert_eq!(slot_for_reconnection(&[Some(2), None, Some(1)]), Some(0));
        assert_eq!(slot_for_reconnection(&[None, Some(1)]), Some(1));
        assert_eq!(slot_for_reconnection(&[None, None]), None);
        assert_eq!(slot_for_reconnection(&[]), None);
    }

    /// Points on a line with hand-set layer-0 lists; every element is live.
    struct Lines {
        points: Vec<f32>,
        lists: Vec<Vec<usize>>,
        capacity: usize,
    }

    impl Rewire for Lines {
        type Id = usize;
        type Error = &'static str;
        fn count(&self) -> usize {
            self.points.len()
        }
        fn id(&self, position: usize) -> usize {
            position
        }
        fn position(&self, id: usize) -> Option<usize> {
            (id < self.points.len()).then_some(id)
        }
        fn entry(&self) -> Option<usize> {
            Some(0)
        }
        fn capacity(&self) -> usize {
            self.capacity
        }
        fn neighbors(&mut self, id: usize, out: &mut Vec<usize>) -> Result<(), Self::Error> {
            out.extend(&self.lists[id]);
            Ok(())
        }
        /// Every element by distance: the reconnection must skip those not reached.
        fn nearest(&mut self, id: usize) -> Result<Vec<Candidate<usize>>, Self::Error> {
            let mut all: Vec<Candidate<usize>> =
                (0..self.points.len()).map(|j| Candidate { distance: (self.points[j] - self.points[id]).abs(), id: j }).collect();
            all.sort();
            Ok(all)
        }
        fn link(&mut self, from: usize, slot: Option<usize>, to: Candidate<usize>) -> Result<(), Self::Error> {
            match slot {
                Some(slot) => self.lists[from][slot] = to.id,
                None => self.lists[from].push(to.id),
            }
            Ok(())
        }
        fn poll(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
        fn out_of_memory(&self) -> Self::Error {
            "out of memory"
        }
    }

    fn unreachable_from_0(lists: &[Vec<usize>]) -> Vec<usize> {
        let mut seen = vec![false; lists.len()];
        seen[0] = true;
        let mut stack = vec![0];
        while let Some(id) = stack.pop() {
            for &n in &lists[id] {
                if !std::mem::replace(&mut seen[n], true) {
                    stack.push(n);
                }
            }
        }
        (0..lists.len()).filter(|&i| !seen[i]).collect()
    }

    #[test]
    fn reconnection_reaches_every_element_without_overfilling_lists() {
        let mut rng = Rng::new(11);
        for round in 0..200 {
            let n = 2 + rng.below(60) as usize;
            let capacity = 1 + rng.below(4) as usize;
            let points: Vec<f32> = (0..n).map(|_| rng.signed_unit() as f32).collect();
            // Random lists, often pointing into a few popular elements: many stranded.
            let lists: Vec<Vec<usize>> = (0..n)
                .map(|i| {
                    let popular = (2 + n / 4).min(n);
                    let len = (rng.below(capacity as u64 + 1) as usize).min(popular - 1);
                    let mut list: Vec<usize> = Vec::new();
                    while list.len() < len {
                        let j = rng.below(popular as u64) as usize;
                        if j != i && !list.contains(&j) {
                            list.push(j);
                        }
                    }
                    list
                })
                .collect();
            let mut g = Lines { points, lists, capacity };
            let before = unreachable_from_0(&g.lists).len();
            let left = reconnect_unreachable(&mut g).unwrap();
            let after = unreachable_from_0(&g.lists);
            assert_eq!(left, after.len(), "round {round}: the count returned is the count left");
            assert!(after.len() <= before, "round {round}: {before} unreachable before, {after:?} after (capacity {capacity}, n {n})");
            // Each list has a slot off the spanning tree once reached elements hold
            // more edges than the tree has.
            if capacity >= 2 {
                assert!(after.is_empty(), "round {round}: {after:?} unreachable (capacity {capacity}, n {n})");
            }
            for (i, list) in g.lists.iter().enumerate() {
                assert!(list.len() <= capacity, "round {round}: list of {i} overfull");
                assert!(!list.contains(&i), "round {round}: self-loop at {i}");
                let unique: std::collections::HashSet<_> = list.iter().collect();
                assert_eq!(unique.len(), list.len(), "round {round}: duplicate in list of {i}");
            }
        }
    }

    #[test]
    fn random_level_is_geometric_and_capped() {
        let m = 16;
        let mut rng = Rng::new(5);
        let samples = 400_000;
        let mut at_least = [0usize; 4];
        let mut sum = 0;
        for _ in 0..samples {
            // Uniform in (0, 1].
            let u = 1.0 - (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let level = random_level(u, m);
            sum += level;
            for (k, count) in at_least.iter_mut().enumerate() {
                *count += usize::from(level > k);
            }
        }
        let mean = sum as f64 / samples as f64;
        let expected_mean = 1.0 / (m as f64 - 1.0);
        assert!(
            (mean - expected_mean).abs() < 0.05 * expected_mean,
            "mean {mean}"
        );
        // P(level >= k) = m^-k, within 4 standard deviations.
        for (k, &count) in at_least.iter().enumerate() {
            let p = (m as f64).powi(-(k as i32 + 1));
            let want = p * samples as f64;
            let sd = (want * (1.0 - p)).sqrt();
            assert!(
                (count as f64 - want).abs() <= 4.0 * sd + 1.0,
                "level >= {}: {count} vs {want}",
                k + 1
            );
        }
        assert_eq!(random_level(1.0, m), 0);
        assert_eq!(random_level(0.0, m), MAX_LEVEL);
        assert_eq!(random_level(1e-300, 2), MAX_LEVEL);
        assert_eq!(random_level(f64::NAN, m), 0);
        assert_eq!(max_neighbors(m, 0), 32);
        assert_eq!(max_neighbors(m, 3), 16);
    }

    /// Points on a line with hand-written adjacency; `deleted` ones have no distance.
    struct Line {
        x: Vec<f32>,
        adjacency: Vec<Vec<Vec<usize>>>,
        deleted: Vec<usize>,
        query: f32,
        scored: usize,
    }

    impl GraphAccess for Line {
        type Id = usize;
        fn distance_to_query(&mut self, id: usize) -> Option<f32> {
            self.scored += 1;
            (!self.deleted.contains(&id)).then(|| (self.x[id] - self.query).abs())
        }
        fn neighbors(&mut self, id: usize, layer: usize, out: &mut Vec<usize>) {
            out.extend(self.adjacency[id].get(layer).into_iter().flatten());
        }
    }

    /// 0 - 1 - 2 - 3 - 4 - 5 on layer 0 (x = id), 0 - 4 on layer 1.
    fn line(deleted: Vec<usize>, query: f32) -> Line {
        let chain = |i: usize| {
            (0..6usize)
                .filter(|&j| j.abs_diff(i) == 1)
                .collect::<Vec<_>>()
        };
        let mut adjacency: Vec<Vec<Vec<usize>>> = (0..6).map(|i| vec![chain(i)]).collect();
        adjacency[0].push(vec![4]);
        adjacency[4].push(vec![0]);
        Line {
            x: (0..6).map(|i| i as f32).collect(),
            adjacency,
            deleted,
            query,
            scored: 0,
        }
    }

    #[test]
    fn search_layer_skips_deleted_but_walks_through_them() {
        let mut g = line(vec![3], 5.0);
        let entry = [Candidate {
            distance: 5.0,
            id: 0,
        }];
        let found = search_layer(&mut g, &entry, 10, 0);
        assert_eq!(ids(&found), [5, 4, 2, 1, 0]);
        let distances: Vec<f32> = found.iter().map(|c| c.distance).collect();
        assert_eq!(distances, [0.0, 1.0, 3.0, 4.0, 5.0]);
        // ef bounds the result; the beam still gets past the deleted element.
        assert_eq!(ids(&search_layer(&mut g, &entry, 2, 0)), [5, 4]);
        // Every element is scored at most once per layer search.
        let mut g = line(vec![], 2.0);
        search_layer(
            &mut g,
            &[Candidate {
                distance: 2.0,
                id: 0,
            }],
            10,
            0,
        );
        assert_eq!(g.scored, 5);
    }

    #[test]
    fn search_descends_layers_and_survives_a_deleted_entry_point() {
        // Layer 1 takes the search straight from 0 to 4, near the query.
        let mut g = line(vec![], 4.4);
        assert_eq!(ids(&search(&mut g, 0, 1, 2)), [4, 5]);
        let mut g = line(vec![0, 3], 2.0);
        assert_eq!(ids(&search(&mut g, 0, 1, 3)), [2, 1, 4]);
        let per_layer = search_for_insert(&mut line(vec![], 4.4), 0, 1, 0, 2);
        assert_eq!(per_layer.len(), 1);
        assert_eq!(ids(&per_layer[0]), [4, 5]);
        let per_layer = search_for_insert(&mut line(vec![], 4.4), 0, 1, 3, 2);
        assert_eq!(per_layer.len(), 2);
        assert_eq!(ids(&per_layer[1]), [4, 0]);
        assert_eq!(ids(&per_layer[0]), [4, 5]);
    }

    #[test]
    fn iterative_search_returns_every_live_element_once() {
        let mut g = line(vec![3], 0.2);
        let mut searcher = Searcher::default();
        let first = searcher.search_iteratively(&mut g, 0, 1, 2);
        assert_eq!(ids(&first), ids(&search(&mut line(vec![3], 0.2), 0, 1, 2)));
        let mut all = ids(&first);
        loop {
            let batch = searcher.resume(&mut g, 2);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 2);
            all.extend(ids(&batch));
        }
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 4, 5]);
        // Nothing is scored twice across batches (the descent scores on layer 1 too).
        assert!(searcher.scored <= 6 + 2, "scored {}", searcher.scored);
    }

    #[test]
    fn iterative_batches_come_out_nearly_in_order() {
        // A 20 x 20 grid with 4-neighbour links: batches of ef = 10 from a corner.
        let side = 20usize;
        let points: Vec<[f32; 2]> = (0..side * side).map(|i| [(i % side) as f32, (i / side) as f32]).collect();
        struct Grid<'a> {
            points: &'a [[f32; 2]],
            side: usize,
        }
        impl GraphAccess for Grid<'_> {
            type Id = usize;
            fn distance_to_query(&mut self, id: usize) -> Option<f32> {
                let [x, y] = self.points[id];
                Some(x * x + y * y)
            }
            fn neighbors(&mut self, id: usize, _layer: usize, out: &mut Vec<usize>) {
                let (x, y, s) = (id % self.side, id / self.side, self.side);
                out.extend([(x > 0).then(|| id - 1), (x + 1 < s).then(|| id + 1), (y > 0).then(|| id - s), (y + 1 < s).then(|| id + s)].into_iter().flatten());
            }
        }
        let mut g = Grid { points: &points, side };
        let mut searcher = Searcher::default();
        let mut batches = vec![searcher.search_iteratively(&mut g, side * side - 1, 0, 10)];
        loop {
            let batch = searcher.resume(&mut g, 10);
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| ids(b)).collect();
        assert_eq!(seen.len(), side * side);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), side * side, "an element came back twice");
        // The first batch is the exact 10 nearest; later batches move outwards.
        assert_eq!(batches[0].last().map(|c| c.distance), Some(9.0));
        let furthest: Vec<f32> = batches.iter().map(|b| b.last().expect("non-empty").distance).collect();
        assert!(furthest.windows(2).filter(|w| w[1] < w[0]).count() <= furthest.len() / 10, "{furthest:?}");
        assert_eq!(searcher.scored, side * side);
    }

    #[test]
    fn visited_list_forgets_on_clear_and_grows() {
        let mut v = VisitedList::new(4);
        assert!(v.insert(3));
        assert!(!v.insert(3));
        assert!(v.insert(10));
        for _ in 0..70_000 {
            v.clear();
        }
        assert!(v.insert(3));
        assert!(!v.insert(3));
        assert!(v.insert(10));
    }
}

//! Planner cost estimate: the index is only worth using for `ORDER BY distance LIMIT n`,
//! and then it reads a small part of the graph before returning its first row.

use super::options::{self, EF_SEARCH};
use pgrx::prelude::*;

#[pg_guard]
pub unsafe extern "C-unwind" fn amcostestimate(
    root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    loop_count: f64,
    startup_cost: *mut pg_sys::Cost,
    total_cost: *mut pg_sys::Cost,
    selectivity: *mut pg_sys::Selectivity,
    correlation: *mut f64,
    pages: *mut f64,
) {
    // SAFETY: the planner passes valid pointers; the index is locked by the planner.
    unsafe {
        // Without an ORDER BY on a distance operator the index cannot answer the query.
        if (*path).indexorderbys.is_null() {
            *startup_cost = f64::INFINITY;
            *total_cost = f64::INFINITY;
            *selectivity = 0.0;
            *correlation = 0.0;
            *pages = 0.0;
            return;
        }
        let mut costs = pg_sys::GenericCosts::default();
        pg_sys::genericcostestimate(root, path, loop_count, &mut costs);

        let info = (*path).indexinfo;
        let index = pg_sys::index_open((*info).indexoid, pg_sys::NoLock as i32);
        let m = options::index_options(index).map(|(m, _)| m).unwrap_or(options::DEFAULT_M as usize) as f64;
        pg_sys::index_close(index, pg_sys::NoLock as i32);

        // Elements a search visits: a greedy walk of about m per upper layer, then on
        // layer 0 a beam of ef_search expanding up to 2m neighbours each, most of them
        // already seen (the 0.5 reflects how quickly a beam's neighbourhoods overlap).
        let tuples = (*info).tuples.max(1.0);
        let levels = (tuples.ln() / m.ln()).max(0.0);
        let ef = f64::from(EF_SEARCH.get());
        let visited = (levels * m + ef * 2.0 * m * 0.5).min(tuples);
        let ratio = visited / tuples;

        // The search happens before the first row. The total stays that of reading the
        // whole index, so only a LIMIT (which pays startup plus a fraction) makes the
        // index cheaper than a sequential scan and sort.
        *startup_cost = costs.indexTotalCost * ratio;
        *total_cost = costs.indexTotalCost;
        *selectivity = costs.indexSelectivity;
        *correlation = 0.0;
        *pages = (costs.numIndexPages * ratio).max(1.0);
    }
}

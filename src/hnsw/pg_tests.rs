//! In-server tests of the index against exact search (recall), as pgvector's TAP tests
//! do: after the build, after inserts into a built index, and after deleting half the
//! rows, for every operator class.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const DIMENSIONS: usize = 16;
    const ROWS: i32 = 10_000;
    const QUERIES: i32 = 100;

    /// Fills `items` with `rows` deterministic pseudo-random vectors starting at `first_id`.
    fn insert_rows(type_name: &str, first_id: i32, rows: i32) {
        Spi::run(&format!(
            "INSERT INTO items SELECT i, ARRAY(SELECT (sin(i * 12.9898 + d * 78.233) * 43758.5453 - floor(sin(i * 12.9898 + d * 78.233) * 43758.5453) - 0.5) \
             FROM generate_series(1, {DIMENSIONS}) d)::{type_name}({DIMENSIONS}) \
             FROM generate_series({first_id}, {}) i",
            first_id + rows - 1
        ))
        .expect("insert rows");
    }

    /// recall@10 of the index over `QUERIES` query vectors, against a sequential scan.
    fn recall(type_name: &str, operator: &str) -> f64 {
        let top10 = |index: bool| -> Vec<Vec<i32>> {
            Spi::run(if index { "SET enable_seqscan = off; SET enable_indexscan = on" } else { "SET enable_indexscan = off; SET enable_seqscan = on" })
                .expect("planner settings");
            (0..QUERIES)
                .map(|q| {
                    Spi::get_one::<Vec<i32>>(&format!(
                        "SELECT array_agg(id) FROM (SELECT id FROM items ORDER BY v {operator} \
                         ARRAY(SELECT cos({q} * 3.1 + d * 1.7) FROM generate_series(1, {DIMENSIONS}) d)::{type_name}({DIMENSIONS}) \
                         LIMIT 10) s"
                    ))
                    .expect("query runs")
                    .expect("rows")
                })
                .collect()
        };
        let exact = top10(false);
        let approximate = top10(true);
        Spi::run("RESET enable_seqscan; RESET enable_indexscan").expect("reset");
        let hits: usize =
            exact.iter().zip(&approximate).map(|(e, a)| a.iter().filter(|id| e.contains(id)).count()).sum();
        hits as f64 / (10 * exact.len()) as f64
    }

    fn check_recall(type_name: &str, opclass: &str, operator: &str) {
        Spi::run(&format!("CREATE TABLE items (id int PRIMARY KEY, v {type_name}({DIMENSIONS}))")).expect("create");
        insert_rows(type_name, 1, ROWS);
        Spi::run(&format!("CREATE INDEX ON items USING hnsw (v {opclass})")).expect("build");
        Spi::run("SET hnsw.ef_search = 100").expect("ef_search");
        let explain = Spi::get_one::<String>(&format!(
            "EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v {operator} '[{}]' LIMIT 10",
            vec!["0"; DIMENSIONS].join(",")
        ))
        .expect("explain")
        .unwrap_or_default();
        assert!(explain.contains("Limit"), "plan: {explain}");

        let after_build = recall(type_name, operator);
        assert!(after_build >= 0.99, "{opclass}: recall@10 after build {after_build}");

        insert_rows(type_name, ROWS + 1, ROWS / 2);
        let after_inserts = recall(type_name, operator);
        assert!(after_inserts >= 0.99, "{opclass}: recall@10 after inserts {after_inserts}");

        // Dead rows stay in the index until VACUUM (which cannot run inside this test's
        // transaction: tests/pg_regress/sql/hnsw_vacuum.sql covers it); scans must skip
        // them and still fill the LIMIT.
        Spi::run("DELETE FROM items WHERE id % 2 = 0").expect("delete");
        let after_deletes = recall(type_name, operator);
        assert!(after_deletes >= 0.99, "{opclass}: recall@10 after deletes {after_deletes}");
    }

    #[pg_test]
    fn recall_vector_l2() {
        check_recall("vector", "vector_l2_ops", "<->");
    }

    #[pg_test]
    fn recall_vector_ip() {
        check_recall("vector", "vector_ip_ops", "<#>");
    }

    #[pg_test]
    fn recall_vector_cosine() {
        check_recall("vector", "vector_cosine_ops", "<=>");
    }

    #[pg_test]
    fn recall_vector_l1() {
        check_recall("vector", "vector_l1_ops", "<+>");
    }

    #[pg_test]
    fn recall_halfvec_l2() {
        check_recall("halfvec", "halfvec_l2_ops", "<->");
    }

    #[pg_test]
    fn recall_halfvec_ip() {
        check_recall("halfvec", "halfvec_ip_ops", "<#>");
    }

    #[pg_test]
    fn recall_halfvec_cosine() {
        check_recall("halfvec", "halfvec_cosine_ops", "<=>");
    }

    #[pg_test]
    fn recall_halfvec_l1() {
        check_recall("halfvec", "halfvec_l1_ops", "<+>");
    }
}

//! In-server tests: SQL operators and casts checked against independent Rust references
//! (f64 arithmetic, the `half` crate's IEEE rounding, Postgres's own float4 output).

#[pgrx::pg_schema]
mod tests {
    use half::f16;
    use pgrx::prelude::*;

    use ragtune_core::rng::Rng;

    fn text_of(values: &[f32]) -> String {
        format!("[{}]", values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(","))
    }

    /// [l2, inner product, cosine distance, l1] in f64.
    fn reference(a: &[f32], b: &[f32]) -> [f64; 4] {
        let (mut l2, mut dot, mut na, mut nb, mut l1) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x), f64::from(y));
            l2 += (x - y) * (x - y);
            dot += x * y;
            na += x * x;
            nb += y * y;
            l1 += (x - y).abs();
        }
        [l2.sqrt(), dot, 1.0 - dot / (na * nb).sqrt(), l1]
    }

    fn sql_distances(type_name: &str, a: &[f32], b: &[f32]) -> Vec<f64> {
        let query = format!(
            "SELECT ARRAY[a <-> b, inner_product(a, b), a <=> b, a <+> b] \
             FROM (SELECT $1::{type_name} AS a, $2::{type_name} AS b) s"
        );
        Spi::get_one_with_args::<Vec<f64>>(&query, &[text_of(a).into(), text_of(b).into()])
            .expect("query runs")
            .expect("not null")
    }

    fn assert_close(got: f64, want: f64, scale: f64, what: &str) {
        // f32 accumulation of n terms: error bound grows with n; scale carries n * magnitude.
        let tolerance = 1e-5 * scale.max(1.0);
        assert!((got - want).abs() <= tolerance, "{what}: got {got}, want {want} (tolerance {tolerance})");
    }

    #[pg_test]
    fn operators_match_f64_reference() {
        let mut rng = Rng::new(42);
        for &dim in &[1usize, 2, 3, 7, 16, 50, 384, 768, 1536, 2000, 4001] {
            for &scale in &[1.0f32, 1e-3, 1e3] {
                let a = rng.vector(dim, scale);
                let b = rng.vector(dim, scale);
                let want = reference(&a, &b);
                let got = sql_distances("vector", &a, &b);
                let magnitude = f64::from(scale) * f64::from(scale) * dim as f64;
                assert_close(got[0], want[0], f64::from(scale) * (dim as f64).sqrt(), &format!("l2 dim {dim}"));
                assert_close(got[1], want[1], magnitude, &format!("inner product dim {dim}"));
                assert_close(got[2], want[2], 1.0, &format!("cosine dim {dim}"));
                assert_close(got[3], want[3], f64::from(scale) * dim as f64, &format!("l1 dim {dim}"));
            }
        }
    }

    #[pg_test]
    fn halfvec_operators_match_f64_reference_on_rounded_inputs() {
        let mut rng = Rng::new(7);
        for &dim in &[1usize, 5, 50, 384, 1536, 3000] {
            let round = |v: Vec<f32>| v.into_iter().map(|x| f16::from_f32(x).to_f32()).collect::<Vec<_>>();
            let a = round(rng.vector(dim, 10.0));
            let b = round(rng.vector(dim, 10.0));
            let want = reference(&a, &b);
            let got = sql_distances("halfvec", &a, &b);
            assert_close(got[0], want[0], 10.0 * (dim as f64).sqrt(), "halfvec l2");
            assert_close(got[1], want[1], 100.0 * dim as f64, "halfvec inner product");
            assert_close(got[2], want[2], 1.0, "halfvec cosine");
            assert_close(got[3], want[3], 10.0 * dim as f64, "halfvec l1");
        }
    }

    #[pg_test]
    fn text_output_matches_float4out_and_reads_back_bit_for_bit() {
        let mut rng = Rng::new(1);
        // 200,000 random finite bit patterns cover every exponent and many Ryu corner cases.
        for _ in 0..20 {
            let values: Vec<f32> =
                std::iter::repeat_with(|| f32::from_bits(rng.next_u64() as u32)).filter(|v| v.is_finite()).take(10_000).collect();
            let (text, floats) = Spi::get_two_with_args::<String, String>(
                "SELECT v::text, v::real[]::text FROM (SELECT $1::vector AS v) s",
                &[text_of(&values).into()],
            )
            .expect("query runs");
            let text = text.expect("not null");
            // Postgres's own float4 output of the same values, with the braces swapped.
            let float4out = floats.expect("not null").replace('{', "[").replace('}', "]");
            assert_eq!(text, float4out);
            let read_back: Vec<f32> =
                text.trim_matches(['[', ']']).split(',').map(|s| s.parse().expect("a float")).collect();
            for (got, want) in read_back.iter().zip(&values) {
                assert_eq!(got.to_bits(), want.to_bits());
            }
        }
    }

    #[pg_test]
    fn vector_to_halfvec_rounds_like_ieee_binary16() {
        let mut rng = Rng::new(3);
        let values: Vec<f32> = (0..1000).map(|_| rng.signed_unit() as f32 * 1000.0).collect();
        let got = Spi::get_one_with_args::<Vec<f32>>("SELECT $1::vector::halfvec::real[]", &[text_of(&values).into()])
            .expect("query runs")
            .expect("not null");
        let want: Vec<f32> = values.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        assert_eq!(got, want);
    }

    #[pg_test]
    fn binary_send_is_big_endian_pgvector_layout() {
        let bytes = Spi::get_one::<Vec<u8>>("SELECT vector_send('[1,-2]')").expect("query runs").expect("not null");
        let mut want = vec![0, 2, 0, 0];
        want.extend_from_slice(&1f32.to_be_bytes());
        want.extend_from_slice(&(-2f32).to_be_bytes());
        assert_eq!(bytes, want);
    }

    #[pg_test]
    fn exact_search_orders_by_reference_distance() {
        let mut rng = Rng::new(11);
        let rows: Vec<Vec<f32>> = (0..300).map(|_| rng.vector(24, 1.0)).collect();
        let query = rng.vector(24, 1.0);
        Spi::run("CREATE TABLE exact_items (id int, v vector(24))").expect("create");
        for (id, row) in rows.iter().enumerate() {
            Spi::run_with_args("INSERT INTO exact_items VALUES ($1, $2::vector)", &[(id as i32).into(), text_of(row).into()])
                .expect("insert");
        }
        for (op, metric) in [("<->", 0), ("<=>", 2), ("<+>", 3)] {
            let got = Spi::get_one_with_args::<Vec<i32>>(
                &format!("SELECT array_agg(id) FROM (SELECT id FROM exact_items ORDER BY v {op} $1::vector LIMIT 10) s"),
                &[text_of(&query).into()],
            )
            .expect("query runs")
            .expect("not null");
            let mut want: Vec<(f64, i32)> =
                rows.iter().enumerate().map(|(id, row)| (reference(row, &query)[metric], id as i32)).collect();
            want.sort_by(|x, y| x.0.total_cmp(&y.0));
            let want: Vec<i32> = want.iter().take(10).map(|&(_, id)| id).collect();
            assert_eq!(got, want, "operator {op}");
        }
    }

    #[pg_test(error = "expected 3 dimensions, not 2")]
    fn typmod_is_enforced_on_insert() {
        Spi::run("CREATE TABLE typed (v vector(3)); INSERT INTO typed VALUES ('[1,2]')").unwrap();
    }
}

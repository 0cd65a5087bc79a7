-- ragtune: evaluate_strategies() answers "RAG, fine-tuning or both?" on the caller's own
-- question/answer rows.

CREATE FUNCTION ragtune_evaluate_strategies(questions regclass, source text, question_column text, answer_column text,
	passage_column text, adapter text, train_adapter text, retrieval_adapter text, held_out_fraction double precision,
	max_questions integer, seed bigint, k integer, max_tokens integer, model text, mode text, epochs integer,
	rank integer, strategies text[], replace boolean)
	RETURNS TABLE (strategy text, questions_scored integer, accuracy double precision, accuracy_ci double precision[],
		f1 double precision, f1_ci double precision[], citation_precision double precision,
		citation_precision_ci double precision[], retrieval_recall double precision,
		retrieval_recall_ci double precision[], no_passage integer, p50_ms double precision, p95_ms double precision,
		retrieve_p50_ms double precision, prompt_p50_ms double precision, generate_p50_ms double precision,
		prompt_tokens double precision, generated_tokens double precision, training_seconds double precision,
		adapter_bytes bigint, differences jsonb, answers jsonb)
	AS 'MODULE_PATHNAME', 'ragtune_evaluate_strategies_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;

-- Ways of answering measured side by side on the same held-out questions of `questions`
-- (read with the caller's rights: rows it cannot read are not used), one row per strategy:
--   closed_book            the generator alone;
--   rag                    rag_answer() over source;
--   finetuned              the generator with a generator adapter;
--   rag_finetuned          rag_answer() with that adapter;
--   rag_retrieval_adapter  rag_answer() with retrieval_adapter (only when one is named).
-- A question is held out when a hash of its text and seed falls below held_out_fraction;
-- the first max_questions of those (in hash order) are scored. Unless `adapter` names one
-- to evaluate, the adapter is trained here on the other rows (question as prompt, first
-- answer as completion) and, with train_adapter, stored under that name; it never reads a
-- held-out question. answer_column is text or text[] (any reference counts);
-- passage_column (optional) holds the id(s) of the source rows that hold the answer.
-- Figures: accuracy (a reference contained, SQuAD-normalized), token F1, citation
-- precision (of the passages an answer cites, the share holding the answer: by
-- passage_column, else by containing a reference), retrieval recall (the answer's
-- passages include one of passage_column), with 95% bootstrap intervals (seeded);
-- no_passage counts "I don't know" answers (no passage reached min_score); latency p50/p95
-- and its split; mean tokens; training seconds and adapter bytes; differences: paired
-- differences (this minus the other) with intervals; answers: the per-question rows every
-- figure is computed from. Answers are greedy: the same seed gives the same table.
CREATE FUNCTION evaluate_strategies(questions regclass, source text DEFAULT NULL,
	question_column name DEFAULT 'question', answer_column name DEFAULT 'answer', passage_column name DEFAULT NULL,
	adapter text DEFAULT NULL, train_adapter text DEFAULT NULL, retrieval_adapter text DEFAULT NULL,
	held_out_fraction double precision DEFAULT 0.3, max_questions integer DEFAULT 100, seed bigint DEFAULT 0,
	k integer DEFAULT 2, max_tokens integer DEFAULT 128, model text DEFAULT NULL, mode text DEFAULT NULL,
	epochs integer DEFAULT 3, rank integer DEFAULT 8, strategies text[] DEFAULT NULL, replace boolean DEFAULT false)
	RETURNS TABLE (strategy text, questions_scored integer, accuracy double precision, accuracy_ci double precision[],
		f1 double precision, f1_ci double precision[], citation_precision double precision,
		citation_precision_ci double precision[], retrieval_recall double precision,
		retrieval_recall_ci double precision[], no_passage integer, p50_ms double precision, p95_ms double precision,
		retrieve_p50_ms double precision, prompt_p50_ms double precision, generate_p50_ms double precision,
		prompt_tokens double precision, generated_tokens double precision, training_seconds double precision,
		adapter_bytes bigint, differences jsonb, answers jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	stored_owner regrole;
BEGIN
	IF train_adapter IS NOT NULL THEN
		-- Storing the adapter: checked before answering, to fail early; storing checks again.
		PERFORM ragtune_require_primary('evaluate_strategies with train_adapter');
		PERFORM ragtune_check_name('adapter', train_adapter);
		SELECT a.owner INTO stored_owner FROM ragtune_adapters a WHERE a.name = train_adapter;
		IF FOUND THEN
			PERFORM ragtune_require_owner(current_user::regrole, stored_owner, format('replace adapter "%s"', train_adapter));
			IF NOT replace THEN
				RAISE EXCEPTION 'adapter "%" already exists', train_adapter USING ERRCODE = 'duplicate_object',
					HINT = 'Pass replace => true to replace it.';
			END IF;
		END IF;
	END IF;
	RETURN QUERY SELECT * FROM ragtune_evaluate_strategies(questions, source, question_column, answer_column,
		passage_column, adapter, train_adapter, retrieval_adapter, held_out_fraction, max_questions, seed, k, max_tokens,
		model, mode, epochs, rank, strategies, replace);
END $$;
COMMENT ON FUNCTION evaluate_strategies(regclass, text, name, name, name, text, text, text, double precision, integer,
	bigint, integer, integer, text, text, integer, integer, text[], boolean) IS
	'Closed-book, RAG, fine-tuned and both, measured on the same held-out questions: accuracy, F1, citations, recall, latency, cost';

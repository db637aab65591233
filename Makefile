# Two promises to a newcomer on a fresh machine with Python 3.11+ (no JVM needed):
#   make demo   sets up, fetches the public seed data, runs the pipeline on the embedded engine
#   make test   sets up and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BQ     := $(VENV)/bin/boostqa
DEMO   := --profile demo

.PHONY: setup assets spark-assets demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "boostqa needs Python 3.11+, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[embedded,dev,notebooks]'
	@touch $@

assets: setup
	$(BQ) assets fetch

# Apache Spark 4 + Delta jars for the JVM parity test (tests/test_spark_jvm.py fetches them too)
spark-assets: setup
	$(PY) -m boostqa.jvm fetch

demo: assets
	$(BQ) run $(DEMO)
	$(BQ) tables $(DEMO)
	$(BQ) sql $(DEMO) "select source, count(*) as seeds from bronze.seeds group by source order by source"
	$(BQ) sql $(DEMO) "select reason, detail from quarantine.seeds order by source, source_row"
	$(BQ) audit $(DEMO)
	$(BQ) sql $(DEMO) "select discipline, sum(case when difficulty <= 2 then 1 else 0 end) as h1_h2, sum(case when difficulty = 3 then 1 else 0 end) as h3, sum(case when difficulty >= 4 then 1 else 0 end) as h4_h5, first(llm_simulated) as simulated from silver.seeds_annotated group by discipline order by discipline"
	$(BQ) sql $(DEMO) "select discipline, difficulty, probes, correct, round(accuracy, 2) as accuracy, round(weight, 2) as weight, round(share, 3) as share from gold.sampling_weights order by share desc limit 10"
	$(BQ) report $(DEMO)
	$(BQ) sql $(DEMO) "select mode, grade_role, difficulty, n_tokens, substr(question, 1, 70) as question, llm_simulated from gold.boostqa order by qa_id limit 5"
	$(BQ) sql $(DEMO) "select kp_source, count(distinct seed_uid) as seeds, count(*) as seed_kps, count(distinct kp_id) as kps from silver.seed_kps group by kp_source order by kp_source"
	$(BQ) sql $(DEMO) "select strategy, paths, round(coverage, 3) as coverage, round(gini, 3) as gini, round(kp_links_per_item, 2) as kp_links, graph_kps as kps, linked_kps as linked from gold.kp_walk_coverage where paths = (select max(paths) from gold.kp_walk_coverage) order by strategy desc"
	$(BQ) sql $(DEMO) "select m.discipline, m.difficulty, round(m.target, 3) as target, round(m.achieved, 3) as paths, round(coalesce(i.n, 0) / t.total, 3) as accepted_items, round(m.tvd, 3) as paths_tvd from gold.kp_walk_mix m left join (select discipline, difficulty, count(*) as n from gold.boostqa where mode = 'linkqa' group by discipline, difficulty) i on m.discipline = i.discipline and m.difficulty = i.difficulty cross join (select count(*) as total from gold.boostqa where mode = 'linkqa') t where m.paths = (select max(paths) from gold.kp_walk_mix) order by m.target desc, m.discipline, m.difficulty limit 8"
	$(BQ) sql $(DEMO) "select target_difficulty, count(*) as linkqa_items, sum(case when difficulty = target_difficulty then 1 else 0 end) as at_target, round(avg(size(seed_ids)), 2) as seeds_per_item, first(llm_simulated) as simulated from gold.boostqa where mode = 'linkqa' group by target_difficulty order by target_difficulty"
	$(BQ) sql $(DEMO) "select component, count(*) as rows, count(distinct doc_id) as documents, sum(n_tokens) as tokens, max(epoch) + 1 as passes, first(llm_simulated) as simulated from gold.mix group by component order by component"
	$(BQ) sql $(DEMO) "select mix_version, path, shards, rows, tokens, substr(manifest_sha256, 1, 12) as manifest, llm_simulated from ops.exports order by mix_version"
	ls -l exports/mix-v*/
	$(BQ) tokens $(DEMO)
	$(BQ) runs $(DEMO) --limit 3

test: assets
	$(PY) -m pytest -q

clean:
	rm -rf lake runs exports .pytest_cache

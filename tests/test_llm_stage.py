"""The LLM-stage template: the worked example of docs/reference.md (a new stage in about 30 lines) runs end to
end against the simulator over HTTP, with the call log, reuse, quarantine and metrics it gets for free."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, create_model
from pyspark.sql import functions as F
from pyspark.sql import types as T

from boostqa.config import conf_dir
from boostqa.runner import Runner
from boostqa.stages import llm
from boostqa.stages.llm import LLMTask, llm_stage

# ----------------------------------------------------------------- the docs/reference.md example, verbatim


class Hint(LLMTask):
    """A one-line hint for a seed, from the annotator endpoint."""

    sections = ("annotate",)  # the settings it reads
    columns = ("question", "answer")  # the row columns the prompt needs
    outputs = (("hint", T.StringType()),)  # what a response becomes

    def endpoint_of(self, settings):
        return settings.annotate.endpoint

    def prompts_of(self, settings):
        return "hint"  # conf/prompts/hint.yaml

    def response_model(self) -> type[BaseModel]:
        return create_model("Hint", hint=(str, Field(..., min_length=1, max_length=300)))

    def format_input(self, row):
        return {"question": row.question, "answer": row.answer or "(none)"}

    def format_output(self, parsed, raw, row):
        return {"hint": parsed["hint"].strip()}


STAGE = llm_stage(
    name="hint",
    inputs={"seeds": "silver.seeds_annotated"},
    output="silver.seed_hints",
    rejects="quarantine.hints",
    key=("seed_uid",),
    tasks=(Hint,),
    columns=lambda ctx, out: ["seed_uid", "hint", "request_key", F.col("_simulated").alias("llm_simulated")],
    reject_columns=("seed_uid", "_raw"),
    description="a one-line hint per seed",
)
# -----------------------------------------------------------------------------------------------

HINT_PROMPT = """name: hint
version: 1
system: |
  You write one-line hints for exam questions. Answer with a JSON object {{"hint": "..."}}.
user: |
  Question: {question}
  Answer: {answer}
"""


@pytest.fixture
def conf_with_hint(tmp_path, monkeypatch) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "prompts" / "hint.yaml").write_text(HINT_PROMPT)
    monkeypatch.setenv("BOOSTQA_CONF_DIR", str(conf))
    llm.stop_simulator()
    yield conf
    llm.stop_simulator()


def test_a_new_llm_stage_in_thirty_lines(spark, make_settings, conf_with_hint):
    runner = Runner(make_settings(), spark=spark)
    seeds = spark.createDataFrame([(f"s{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(12)],
                                  "seed_uid string, question string, answer string")
    runner.lake.overwrite(seeds, "silver.seeds_annotated")

    first = runner.run_stage(STAGE, "r1")
    assert (first.pending, first.kept, first.rejected, first.deferred) == (12, 12, 0, 0)
    hints = {r.seed_uid: r for r in runner.lake.read("silver.seed_hints").collect()}
    assert set(hints) == {f"s{i}" for i in range(12)}
    assert all(r.hint and r.llm_simulated and len(r.request_key) == 32 for r in hints.values())
    # the template logged every call, with the stage, prompt version and model
    calls = runner.lake.read("ops.llm_calls").where("stage = 'hint'").collect()
    assert len(calls) == 12 and {(c.prompt_id, c.model, c.status) for c in calls} == {("hint@v1", "deepseek-chat",
                                                                                      "ok")}
    assert {c.request_key for c in calls} == {r.request_key for r in hints.values()}
    assert (first.stats["llm.calls"], first.stats["llm.reused"], first.stats["llm_simulated"]) == (12, 0, 1)

    # new rows only are asked; an identical request is answered from the log, not paid again
    more = spark.createDataFrame([("s12", "What is 12 + 12?", "24"), ("copy", "What is 3 + 3?", "6")],
                                 "seed_uid string, question string, answer string")
    runner.lake.append(more, "silver.seeds_annotated")
    second = runner.run_stage(STAGE, "r2")
    assert (second.pending, second.kept, second.stats["llm.calls"], second.stats["llm.reused"]) == (2, 2, 1, 1)
    assert runner.lake.read("silver.seed_hints").count() == 14
    assert runner.run_stage(STAGE, "r3").pending == 0


def test_the_documented_example_is_this_code():
    """docs/reference.md shows the Hint stage above character for character."""
    src = Path(__file__).read_text(encoding="utf-8")
    code = src[src.index("class Hint(LLMTask):"):src.index("# ------", src.index("class Hint(LLMTask):"))].strip()
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text(encoding="utf-8")
    assert code in doc


class _Secrets:
    """Stands in for Databricks' ``dbutils.secrets`` (the one part of a workspace this machine lacks)."""

    def __init__(self, values: dict[str, str]):
        self.values = values

    def get(self, scope: str, key: str) -> str:
        return self.values[f"{scope}/{key}"]


def test_a_key_read_from_a_secret_scope_stays_in_the_driver(spark, make_settings, conf_with_hint, monkeypatch,
                                                           tmp_path):
    """Serverless jobs get no secret-backed variables: a job reads ``api_key_secret`` on the driver
    and, since only the driver has the key then, sends the calls from there. Against an endpoint
    that refuses requests without the key, driver calls give the same rows, request keys and call
    log as executor calls; a rerun pays nothing; the key is in no error message."""
    from types import SimpleNamespace

    from boostqa.llm.keys import SecretError, keys_from_secrets
    from boostqa.llm.sim import SimConfig, SimulatorServer

    key = "sk-test-" + "0123456789abcdef"
    sim = SimulatorServer(SimConfig(api_key=key)).start()
    try:
        def settings(root: str, **llm_over):
            return make_settings(lake={"root": str(tmp_path / root)}, llm={**llm_over, "endpoints": {"annotator": {
                "base_url": sim.base_url.removesuffix("/v1") + "/deepseek/v1", "api_key_env": "HINT_TEST_KEY",
                "api_key_secret": "{{secrets/boostqa/hint_test_key}}"}}})

        driver = settings("lake_driver")
        dbutils = SimpleNamespace(secrets=_Secrets({"boostqa/hint_test_key": key}))
        monkeypatch.delenv("HINT_TEST_KEY", raising=False)
        with pytest.raises(SecretError, match="calls_from: driver") as refused:  # executors would lack the key
            keys_from_secrets(driver.llm.endpoints, "executors", dbutils=dbutils)
        with pytest.raises(SecretError, match="cannot read secret boostqa/hint_test_key") as unreadable:
            keys_from_secrets(driver.llm.endpoints, "auto", dbutils=SimpleNamespace(secrets=_Secrets({})))
        assert key not in str(refused.value) + str(unreadable.value)
        # outside a workspace (no DATABRICKS_RUNTIME_VERSION) nothing is read: preflight names the unset variable
        assert keys_from_secrets(driver.llm.endpoints, "executors", environ={}) == []
        env: dict[str, str] = {}
        assert keys_from_secrets(driver.llm.endpoints, "auto", environ=env, dbutils=dbutils) == ["HINT_TEST_KEY"]
        assert env == {"HINT_TEST_KEY": key}
        assert keys_from_secrets(driver.llm.endpoints, "executors", environ=env, dbutils=dbutils) == []  # already set
        assert "hint_test_key" not in str(driver.redacted())  # the reference is masked in logged settings too
        monkeypatch.setenv("HINT_TEST_KEY", key)

        seeds = spark.createDataFrame([(f"s{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(12)],
                                      "seed_uid string, question string, answer string")
        results = {}
        for mode, s in (("driver", settings("lake_driver", calls_from="driver")),
                        ("executors", settings("lake_exec", calls_from="executors"))):
            runner = Runner(s, spark=spark)
            runner.lake.overwrite(seeds, "silver.seeds_annotated")
            r = runner.run_stage(STAGE, f"r-{mode}")
            assert (r.kept, r.rejected, r.deferred, r.stats["llm.calls"]) == (12, 0, 0, 12), mode
            assert runner.run_stage(STAGE, f"r2-{mode}").pending == 0
            hints = sorted((x.seed_uid, x.hint, x.request_key) for x in runner.lake.read("silver.seed_hints").collect())
            calls = sorted((c.request_key, c.status, c.raw) for c in runner.lake.read("ops.llm_calls").collect())
            results[mode] = (hints, calls)
        assert results["driver"] == results["executors"]
    finally:
        sim.stop()

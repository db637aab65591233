from boostqa.llm.sim.server import _cli

_cli()

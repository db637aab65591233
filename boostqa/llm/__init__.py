"""Spark-free LLM layer: OpenAI-compatible client, prompts, simulator."""
